"""``gateway/openapi.json``: a valid OpenAPI 3.1 document that documents every registered route.

Checks, without starting the app: the document is valid OpenAPI 3.1 (``openapi-spec-validator`` when
installed, and always a structural check with jsonschema Draft 2020-12: every schema compiles, every
``$ref`` resolves, every embedded example matches its schema); every (method, path) the app registers,
provider sub-apps included, is documented and nothing else is; the error-code enums follow
``core/errors.py``; and request bodies written here are accepted or refused by the documented schemas.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

DOC_PATH = Path(__file__).resolve().parents[1] / "gateway" / "openapi.json"
BASE = "urn:game-gateway:openapi"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
PROVIDER_PREFIX = "/v1/providers/{provider_id}"


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DOC_PATH.read_text(encoding="utf-8"))
    return doc


@pytest.fixture(scope="module")
def registry(doc: dict[str, Any]) -> Registry[Any]:
    registry: Registry[Any] = Registry().with_resource(
        BASE, Resource.from_contents(doc, default_specification=DRAFT202012))
    return registry


def _validator(registry: Registry, pointer: str) -> Draft202012Validator:
    return Draft202012Validator({"$ref": f"{BASE}#{pointer}"}, registry=registry)


def _schema_validator(registry: Registry, name: str) -> Draft202012Validator:
    return _validator(registry, f"/components/schemas/{name}")


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"only local references are used: {ref}"
    node: Any = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"unresolved $ref {ref}"
        node = node[part]
    return node


def _deref(doc: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        node = _resolve(doc, node["$ref"])
    return node


def _walk(node: Any, pointer: str = "") -> Iterator[tuple[str, Any]]:
    yield pointer, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{pointer}/{str(key).replace('~', '~0').replace('/', '~1')}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{pointer}/{i}")


def _operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


def _media_schemas(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(pointer, media type object) for every request and response body in the document."""
    for pointer, node in _walk(doc):
        if re.search(r"/content/[^/]+$", pointer) and isinstance(node, dict) and "schema" in node:
            yield pointer, node


# --- (1) a valid OpenAPI 3.1 document ------------------------------------------------------------------


def test_valid_openapi_31_by_spec_validator(doc: dict[str, Any]) -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(doc)


def test_served_file_is_the_package_resource_and_pretty_printed() -> None:
    text = resources.files("gateway").joinpath("openapi.json").read_text(encoding="utf-8")
    assert text == DOC_PATH.read_text(encoding="utf-8")
    assert text.startswith('{\n  "openapi": "3.1.0"')
    json.loads(text)


def test_document_structure(doc: dict[str, Any]) -> None:
    assert doc["openapi"] == "3.1.0"
    assert doc["info"]["title"] and doc["info"]["version"]
    assert set(doc) <= {"openapi", "info", "jsonSchemaDialect", "servers", "paths", "webhooks", "components",
                        "security", "tags", "externalDocs"}
    op_ids = [op["operationId"] for _, _, op in _operations(doc)]
    assert len(op_ids) == len(set(op_ids)), "operationId must be unique"
    schemes = doc["components"]["securitySchemes"]
    for path, method, op in _operations(doc):
        assert op.get("responses"), f"{method} {path} has no responses"
        for status in op["responses"]:
            assert re.fullmatch(r"[1-5][0-9][0-9]", status), f"{method} {path}: bad status {status}"
        for requirement in op.get("security", doc.get("security", [])):
            assert set(requirement) <= set(schemes), f"{method} {path}: unknown security scheme"
        declared = {p["name"] for p in (_deref(doc, p) for p in
                                         [*doc["paths"][path].get("parameters", []), *op.get("parameters", [])])
                    if p["in"] == "path"}
        assert declared == set(re.findall(r"{([^}]+)}", path)), f"{method} {path}: path parameters"


def test_every_ref_resolves(doc: dict[str, Any]) -> None:
    refs = [node["$ref"] for _, node in _walk(doc) if isinstance(node, dict) and isinstance(node.get("$ref"), str)]
    assert refs
    for ref in refs:
        _resolve(doc, ref)


def test_every_schema_compiles_as_draft_2020_12(doc: dict[str, Any], registry: Registry) -> None:
    schemas = dict(doc["components"]["schemas"])
    for pointer, media in _media_schemas(doc):
        schemas[pointer] = media["schema"]
    for pointer, node in _walk(doc):
        if pointer.endswith("/schema") and "/content/" not in pointer and isinstance(node, dict):
            schemas[pointer] = node  # parameter and header schemas
    assert len(schemas) > len(doc["components"]["schemas"])
    for schema in schemas.values():
        Draft202012Validator.check_schema(schema)
    resolver = registry.resolver(BASE)  # and jsonschema's own resolver finds every reference
    for _, node in _walk(doc):
        if isinstance(node, dict) and isinstance(node.get("$ref"), str):
            resolver.lookup(BASE + node["$ref"])


def test_embedded_examples_match_their_schemas(doc: dict[str, Any], registry: Registry) -> None:
    checked = 0
    for pointer, media in _media_schemas(doc):
        if "example" in media:
            errors = list(_validator(registry, f"{pointer}/schema").iter_errors(media["example"]))
            assert not errors, f"{pointer}: {errors[0].message}"
            checked += 1
    for name, schema in doc["components"]["schemas"].items():
        for example in schema.get("examples", []):
            assert _schema_validator(registry, name).is_valid(example), f"{name}: {example!r}"
            checked += 1
    assert checked >= 20


def test_security_schemes(doc: dict[str, Any]) -> None:
    schemes = doc["components"]["securitySchemes"]
    bearer = [s for s in schemes.values() if s["type"] == "http" and s["scheme"] == "bearer"]
    assert bearer, "operator routes use a bearer API key"
    signature = [s for s in schemes.values() if s["type"] == "apiKey" and s["name"] == "X-Signature"]
    assert signature and signature[0]["in"] == "header" and "HMAC-SHA256" in signature[0]["description"]
    signature_name = next(k for k, s in schemes.items() if s.get("name") == "X-Signature")
    bearer_name = next(k for k, s in schemes.items() if s.get("scheme") == "bearer")
    for path, method, op in _operations(doc):
        names = {n for req in op.get("security", doc.get("security", [])) for n in req}
        if path.startswith(PROVIDER_PREFIX):
            assert names == {signature_name}, f"{method} {path}"
        elif path == "/v1/ws":
            assert names == {"playerSessionToken"}, "the player socket authenticates with the session token"
        elif path.startswith("/v1/"):
            assert bearer_name in names and signature_name not in names, f"{method} {path}"
        else:
            assert op.get("security") == [], f"{method} {path} is open (health, metrics, this document)"


def test_retry_after_on_every_429_and_503_error(doc: dict[str, Any]) -> None:
    seen = 0
    for path, method, op in _operations(doc):
        for status in ("429", "503"):
            if status not in op["responses"] or path == "/readyz":
                continue
            response = _deref(doc, op["responses"][status])
            assert "Retry-After" in response.get("headers", {}), f"{method} {path} {status}"
            seen += 1
    assert seen >= 8


def test_traceparent_on_money_calls(doc: dict[str, Any]) -> None:
    money = {("post", f"{PROVIDER_PREFIX}/{a}") for a in ("bet", "win", "rollback", "end-round")} | {
        ("post", "/v1/wallet/deposit"), ("post", "/v1/wallet/withdraw"), ("put", "/v1/players/limits"),
        ("post", "/v1/players/self-exclusion")}
    for method, path in money:
        op = doc["paths"][path][method]
        names = {(p["in"], p["name"]) for p in (_deref(doc, p) for p in op.get("parameters", []))}
        assert ("header", "traceparent") in names, f"{method} {path}"


def test_money_rules_are_described(doc: dict[str, Any]) -> None:
    text = json.dumps(doc)
    for phrase in ("minor units", "exact", "idempotency_key", "transaction_id", "\\\"duplicate\\\": true",
                   "original", "tombstone", "expired", "Retry-After", "never a JSON number"):
        assert phrase in text, phrase


# --- (2) every registered route is documented ----------------------------------------------------------


def _registered_routes() -> set[tuple[str, str]]:
    from core.records import ProviderConfig
    from core.settings import Settings
    from gateway.app import create_app, mount_providers

    app = create_app(Settings(), [])
    mount_providers(app, [ProviderConfig(id="demo", protocol="native", secret="x" * 16)])

    found: set[tuple[str, str]] = set()

    def add(method: str, path: str) -> None:
        if method == "HEAD":  # aiohttp adds HEAD to every GET; documented by the GET
            method = "GET"
        path = re.sub(r"^/v1/providers/demo(?=/|$)", PROVIDER_PREFIX, path)
        found.add((method.lower(), path))

    for route in app.router.routes():
        resource = route.resource
        if resource is not None and type(resource).__name__ != "PrefixedSubAppResource":
            add(route.method, resource.canonical)
    for resource in app.router.resources():
        if type(resource).__name__ == "PrefixedSubAppResource":
            prefix = resource.canonical
            for route in resource._app.router.routes():  # type: ignore[attr-defined]
                sub = route.resource.canonical if route.resource is not None else ""
                add(route.method, sub if sub.startswith(prefix + "/") else prefix + sub)
    return found


def test_every_registered_route_is_documented(doc: dict[str, Any]) -> None:
    registered = _registered_routes()
    documented = {(method, path) for path, method, _ in _operations(doc)}
    assert {("post", f"{PROVIDER_PREFIX}/bet"), ("get", "/healthz"), ("put", "/v1/admin/degradation")} <= registered
    assert registered - documented == set(), "registered but not documented"
    assert documented - registered == set(), "documented but not registered"


# --- error codes follow core/errors.py ----------------------------------------------------------------


def _codes_of(doc: dict[str, Any], response: dict[str, Any]) -> set[str]:
    """The code enum a per-status error response narrows its schema to."""
    schema = response["content"]["application/json"]["schema"]
    branches = schema.get("oneOf", [schema])
    props = branches[0]["properties"]
    code = props["code"] if "code" in props else props["error"]["properties"]["code"]
    return set(code["enum"])


def test_error_codes_follow_errors_module(doc: dict[str, Any]) -> None:
    from adapters.native import OK, NativeAdapter
    from core import errors as E

    schemas, responses = doc["components"]["schemas"], doc["components"]["responses"]
    answered_ok = {cls.code for cls, code in NativeAdapter.ERRORS.items() if code == OK}
    all_codes = {cls.code for cls in E.concrete_errors()}
    assert set(schemas["ProviderErrorCode"]["enum"]) == all_codes - answered_ok
    assert set(schemas["ErrorCode"]["enum"]) == (all_codes - answered_ok) | {"method_not_allowed"}
    by_status: dict[int, set[str]] = {}
    for cls in E.concrete_errors():
        if cls.code not in answered_ok:
            by_status.setdefault(cls.http_status, set()).add(cls.code)
    for status, codes in by_status.items():
        for prefix in ("Provider", "Operator"):
            response = responses[f"{prefix}{status}"]
            assert _codes_of(doc, response) == codes, f"{prefix}{status}"
            assert ("Retry-After" in response.get("headers", {})) == (status in (408, 429, 503)), f"{prefix}{status}"
    for cls in E.concrete_errors():  # every status an error can carry is answered somewhere
        if cls.code not in answered_ok:
            assert any(str(cls.http_status) in op["responses"] for _, _, op in _operations(doc)), cls.__name__


def test_currencies_match_money_module(doc: dict[str, Any], registry: Registry) -> None:
    from core.money import CURRENCY_EXPONENTS

    currency = _schema_validator(registry, "Currency")
    description = doc["info"]["description"]
    for code in CURRENCY_EXPONENTS:
        assert currency.is_valid(code) and code in description, code
    assert not currency.is_valid("eur") and not currency.is_valid("EURO")


@pytest.mark.parametrize("value", ["0", "1", "1.5", "1.50", "000.10", "92233720368547758.07"])
def test_documented_amounts_are_accepted_exactly(registry: Registry, value: str) -> None:
    from core.money import to_decimal, to_minor

    assert _schema_validator(registry, "Amount").is_valid(value)
    assert to_decimal(to_minor(value, "EUR"), "EUR") == Decimal(value)


# --- (3) request bodies against the documented schemas ---------------------------------------------------

PLAYER = {"tenant_id": "t1", "brand_id": "b1", "license": "MGA", "player_id": "p1", "currency": "EUR"}
BET = {"session_token": "tok-1", "transaction_id": "bet-1", "round_id": "r-1", "amount": "1.50", "currency": "EUR"}
WIN = {"session_token": "tok-1", "transaction_id": "win-1", "round_id": "r-1", "amount": "3.00", "currency": "EUR"}
CASH = {**PLAYER, "amount": "10.00", "idempotency_key": "dep-1"}


def _without(body: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in names}


GOOD = [
    ("AuthenticateRequest", {"launch_token": "launch-1"}),
    ("BalanceRequest", {"session_token": "tok-1"}),
    ("BetRequest", BET),
    ("BetRequest", {**BET, "amount": "0", "free_round": True, "round_closed": True, "game_id": "g1"}),
    ("BetRequest", {**BET, "currency": "JPY", "amount": "1250"}),
    ("WinRequest", WIN),
    ("WinRequest", {**_without(WIN, "session_token"), "player_id": "p1", "type": "jackpot",
                    "bet_transaction_id": "bet-1"}),
    ("RollbackRequest", {"session_token": "tok-1", "transaction_id": "rb-1", "bet_transaction_id": "bet-1"}),
    ("RollbackRequest", {"player_id": "p1", "transaction_id": "rb-1", "bet_transaction_id": "never-seen"}),
    ("EndRoundRequest", {"player_id": "p1", "round_id": "r-1"}),
    ("LaunchRequest", {"provider_id": "demo", **PLAYER, "country": "MT"}),
    ("CashRequest", CASH),
    ("SetLimitsRequest", {**PLAYER, "idempotency_key": "rg-1",
                          "limits": {"loss_day": "50.00", "max_stake": None, "session_minutes": 120}}),
    ("SetLimitsRequest", {**_without(PLAYER, "currency"), "idempotency_key": "rg-1",
                          "limits": {"session_minutes": 30}}),
    ("SelfExclusionRequest", {**PLAYER, "idempotency_key": "se-1", "days": 30}),
    ("SelfExclusionRequest", {**_without(PLAYER, "currency"), "idempotency_key": "se-1", "days": 30}),
    ("SetDegradationRequest", {"scope": "provider:demo", "mode": "bets_paused", "reason": "incident"}),
    ("SetDegradationRequest", {"scope": "global", "mode": "normal"}),
]

BAD = [
    ("BetRequest", {**BET, "amount": 1.5}, "number amount"),
    ("BetRequest", {**BET, "amount": "1,50"}, "comma decimal"),
    ("BetRequest", {**BET, "amount": "-1.00"}, "negative stake"),
    ("BetRequest", {**BET, "currency": "eur"}, "lower-case currency"),
    ("BetRequest", _without(BET, "transaction_id"), "missing transaction_id"),
    ("BetRequest", _without(BET, "session_token"), "bet without a session"),
    ("WinRequest", _without(WIN, "transaction_id"), "missing transaction_id"),
    ("WinRequest", {**WIN, "amount": 3}, "number amount"),
    ("WinRequest", _without(WIN, "session_token"), "neither session_token nor player_id"),
    ("WinRequest", {**WIN, "type": "refund"}, "unknown credit type"),
    ("RollbackRequest", {"session_token": "tok-1", "transaction_id": "rb-1"}, "missing bet_transaction_id"),
    ("EndRoundRequest", {"player_id": "p1"}, "missing round_id"),
    ("AuthenticateRequest", {"launch_token": ""}, "empty launch token"),
    ("CashRequest", {**CASH, "amount": 10}, "number amount"),
    ("CashRequest", _without(CASH, "idempotency_key"), "missing idempotency_key"),
    ("LaunchRequest", {"provider_id": "demo", **PLAYER, "country": "MLT"}, "3-letter country"),
    ("SetLimitsRequest", {**PLAYER, "idempotency_key": "rg-1", "limits": {"loss_day": 50}}, "number limit"),
    ("SetLimitsRequest", {**PLAYER, "idempotency_key": "rg-1", "limits": {}}, "no limits"),
    ("SetLimitsRequest", {**PLAYER, "idempotency_key": "rg-1", "limits": {"deposit_day": "1"}}, "unknown limit"),
    ("SetLimitsRequest", {**PLAYER, "idempotency_key": "rg-1", "limits": {"session_minutes": 0}}, "0 minutes"),
    ("SetLimitsRequest", {**_without(PLAYER, "currency"), "idempotency_key": "rg-1",
                          "limits": {"session_minutes": 30, "loss_week": "10.00"}}, "money limit without currency"),
    ("SelfExclusionRequest", {**PLAYER, "idempotency_key": "se-1", "days": 0}, "zero days"),
    ("SetDegradationRequest", {"scope": "everything", "mode": "bets_paused"}, "bad scope"),
    ("SetDegradationRequest", {"scope": "global", "mode": "off"}, "bad mode"),
]


@pytest.mark.parametrize(("schema", "body"), GOOD, ids=[f"{s}-{i}" for i, (s, _) in enumerate(GOOD)])
def test_good_request_bodies_validate(registry: Registry, schema: str, body: dict[str, Any]) -> None:
    errors = list(_schema_validator(registry, schema).iter_errors(body))
    assert not errors, errors[0].message if errors else ""


@pytest.mark.parametrize(("schema", "body", "why"), BAD, ids=[f"{s}-{w}" for s, _, w in BAD])
def test_bad_request_bodies_are_refused(registry: Registry, schema: str, body: dict[str, Any], why: str) -> None:
    assert not _schema_validator(registry, schema).is_valid(body), why


def test_request_bodies_use_the_schemas_tested_here(doc: dict[str, Any]) -> None:
    """The schemas above are the ones the operations actually reference."""
    used = {op["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
            for _, _, op in _operations(doc) if "requestBody" in op}
    assert used == {s for s, _ in GOOD}
