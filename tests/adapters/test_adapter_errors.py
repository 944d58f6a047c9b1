"""What all protocols share: every error class has a code every protocol defines; exact JSON; tracing."""

from __future__ import annotations

import re
import urllib.parse
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import orjson
import pytest

from adapters.base import Adapter
from adapters.evolution import EvolutionAdapter
from adapters.exact_json import DuplicateKey, loads_exact, money
from adapters.flow import code_for
from adapters.hub88 import Hub88Adapter
from adapters.native import NativeAdapter
from adapters.pragmatic import DESCRIPTIONS, PragmaticAdapter
from adapters.pragmatic import sign as pragmatic_sign
from adapters.sim import Call
from core import errors as e
from core.commands import INT64_MAX, Kind, Result, Status
from core.http import unique_keys
from core.records import PlayerSession
from gateway.wallet import Wallet
from tests.adapters.adapter_harness import FakeWallet, Provider
from tests.adapters.real_backend import Backend
from tests.support import PRAGMATIC_SECRET

ADAPTERS: list[type[Adapter]] = [Hub88Adapter, PragmaticAdapter, EvolutionAdapter]

PROTOCOL_CODES: dict[str, set[Any]] = {
    "hub88": {
        "RS_OK", "RS_ERROR_UNKNOWN", "RS_ERROR_INVALID_PARTNER", "RS_ERROR_INVALID_TOKEN",
        "RS_ERROR_TOKEN_EXPIRED", "RS_ERROR_INVALID_GAME", "RS_ERROR_WRONG_CURRENCY",
        "RS_ERROR_NOT_ENOUGH_MONEY", "RS_ERROR_USER_DISABLED", "RS_ERROR_INVALID_SIGNATURE",
        "RS_ERROR_WRONG_SYNTAX", "RS_ERROR_WRONG_TYPES", "RS_ERROR_DUPLICATE_TRANSACTION",
        "RS_ERROR_TRANSACTION_DOES_NOT_EXIST", "RS_ERROR_TRANSACTION_ROLLED_BACK", "RS_ERROR_LIMIT_REACHED",
    },
    "pragmatic": set(DESCRIPTIONS),
    "evolution": {
        "OK", "TEMPORARY_ERROR", "UNKNOWN_ERROR", "INVALID_TOKEN_ID", "INVALID_SID", "ACCOUNT_LOCKED",
        "FATAL_ERROR_CLOSE_USER_SESSION", "INVALID_PARAMETER", "INSUFFICIENT_FUNDS", "BET_DOES_NOT_EXIST",
        "BET_ALREADY_EXIST", "BET_ALREADY_SETTLED", "FINAL_ERROR_ACTION_FAILED", "SESSION_ALREADY_CLOSED",
        "SESSION_DOES_NOT_EXIST", "CASINO_LIMIT_EXCEEDED_TURNOVER", "CASINO_LIMIT_EXCEEDED_SESSION_TIME",
        "CASINO_LIMIT_EXCEEDED_STAKE", "CASINO_LIMIT_EXCEEDED_LOSS",
    },
}

by_protocol = pytest.mark.parametrize("adapter", ADAPTERS, ids=lambda a: a.protocol)


@by_protocol
def test_every_error_class_is_mapped(adapter: type[Adapter]) -> None:
    tree = e.concrete_errors()
    assert len(tree) > 30
    for cls in tree:
        assert adapter.error_code(cls) in PROTOCOL_CODES[adapter.protocol]
    unmapped = [c.__name__ for c in tree if c.__module__ == "core.errors" and c not in adapter.ERRORS]
    assert unmapped == [], f"{adapter.protocol} has no explicit code for {unmapped}"
    assert set(adapter.ERRORS) <= set(tree)
    assert set(adapter.ERRORS.values()) <= PROTOCOL_CODES[adapter.protocol]


@by_protocol
def test_every_ledger_status_has_an_answer(adapter: type[Adapter]) -> None:
    for status in Status:
        err = e.error_for(Result("c", status, 0, "EUR"))
        if status is Status.OK:
            assert err is None
        else:
            assert err is not None and adapter.error_code(err) in PROTOCOL_CODES[adapter.protocol]
    dup = e.error_for(Result("c", Status.OK, 0, "EUR", duplicate=True))
    assert dup is not None and adapter.error_code(dup) in PROTOCOL_CODES[adapter.protocol]


@pytest.mark.parametrize(("adapter", "success"), [(Hub88Adapter, "RS_OK"), (PragmaticAdapter, 0)],
                         ids=["hub88", "pragmatic"])
def test_tombstones_and_retries_answer_success(adapter: type[Adapter], success: Any) -> None:
    for cls in (e.RollbackOfUnknown, e.AlreadyRolledBack, e.Duplicate):
        assert adapter.error_code(cls) == success
    assert adapter.error_code(e.IdempotencyConflict) != success


def test_retryable_codes() -> None:
    for cls in (e.RateLimited, e.Overloaded, e.LedgerTimeout, e.BetsPaused):
        assert Hub88Adapter.error_code(cls) == "RS_ERROR_UNKNOWN"
        assert PragmaticAdapter.error_code(cls) == 100
        assert EvolutionAdapter.error_code(cls) == "TEMPORARY_ERROR"


def test_overrides_name_exact_classes() -> None:
    adapter = EvolutionAdapter.__new__(EvolutionAdapter)
    assert code_for(adapter, e.Duplicate(), EvolutionAdapter.DEBIT_OVERRIDES) == "BET_ALREADY_EXIST"
    assert code_for(adapter, e.Duplicate()) == "BET_ALREADY_SETTLED"
    # an override of a base does not shadow the explicit code of a subclass
    assert code_for(adapter, e.InsufficientFunds(), {e.Refused: "X"}) == "INSUFFICIENT_FUNDS"
    # a conflict is no retry: an override of the retries' answer never reaches it
    assert code_for(adapter, e.IdempotencyConflict(), {e.Duplicate: "X"}) == "BET_ALREADY_EXIST"


@pytest.mark.parametrize("adapter", [*ADAPTERS, NativeAdapter], ids=lambda a: a.protocol)
def test_a_conflict_is_refused_never_a_retry(adapter: type[Adapter]) -> None:
    """``IdempotencyConflict`` (409) is not a ``Duplicate`` (200): no table may answer it as a retry by
    inheritance, and every protocol answers the two differently."""
    assert not issubclass(e.IdempotencyConflict, e.Duplicate)
    assert issubclass(e.IdempotencyConflict, e.Refused)
    assert e.IdempotencyConflict in adapter.ERRORS
    assert adapter.error_code(e.IdempotencyConflict) != adapter.error_code(e.Duplicate)


def test_an_invalid_command_is_bad_input_on_every_wallet() -> None:
    """The real wallet and the adapter tests' in-memory one turn an ``InvalidCommand`` into the same error
    (one translation, ``gateway.wallet.new_command``), so the adapter suites see what production answers."""
    session = PlayerSession(token="t", provider_id="p", tenant_id="t1", brand_id="b", license="MGA",
                            player_id="p1", currency="EUR")
    real = Wallet(*[cast(Any, None)] * 5, max_amounts={"EUR": 10**9})
    answers = []
    for wallet in (real, FakeWallet()):
        with pytest.raises(e.BadInput) as caught:
            wallet.command(session, Kind.BET, tx_id="x" * 201, round_id="r", amount=1)
        answers.append((type(caught.value), caught.value.detail))
    assert answers[0] == answers[1] == (e.BadInput, "tx_id too long")


def test_exact_json_round_trip() -> None:
    body = orjson.dumps({"a": money(10011, "EUR"), "b": {"c": orjson.Fragment("0.10"), "d": None}, "e": "x\"y"})
    assert body == b'{"a":100.11,"b":{"c":0.10,"d":null},"e":"x\\"y"}'
    assert loads_exact(body) == {"a": Decimal("100.11"), "b": {"c": Decimal("0.10"), "d": None}, "e": 'x"y'}
    assert str(loads_exact(b'{"a": 0.30000000000000004}')["a"]) == "0.30000000000000004"
    for bad in (b"NaN", b'{"a": -Infinity}', b"[" * 100_000, b"\xff"):
        with pytest.raises(ValueError):
            loads_exact(bad)


TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def test_traceparent_reaches_the_command(hub88: Provider, pragmatic: Provider, evolution: Provider,
                                               wallet: Backend) -> None:
    for p in (hub88, pragmatic, evolution):
        s = await wallet.add_player(p.config.id)
        first = p.sim.round(s.player_id, s.token, currency="EUR", bet=1_00, win=0)[0]
        call = first._replace(headers={**first.headers, "traceparent": TRACE})
        reply = await p.send(call)
        assert reply.status == 200
        assert wallet.executed[-1].traceparent == TRACE


@by_protocol
def test_docs_error_table_matches(adapter: type[Adapter]) -> None:
    """``docs/<protocol>.md`` documents exactly the codes the adapter answers."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / f"{adapter.protocol}.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| (?:`\w+`)? *\| `([^`]+)` \|$", doc, re.MULTILINE)
    documented = {name: code for name, code in rows}
    expected = {cls.__name__: str(code) for cls, code in adapter.ERRORS.items()}
    assert documented == expected
    statuses = re.findall(r"^\| `(\w+)` \| `(\w+)` \|", doc, re.MULTILINE)
    for name, status in statuses:
        assert e.STATUS_ERRORS[Status(status)].__name__ == name


async def test_oversized_bodies_get_protocol_answers(hub88: Provider, pragmatic: Provider,
                                                     evolution: Provider) -> None:
    big = b"x" * (1024 * 1024 + 1)  # over aiohttp's default client_max_size
    h = await hub88.post("/transaction/bet", big)
    assert (h.status, h.json["status"]) == (200, "RS_ERROR_WRONG_SYNTAX")
    p = await pragmatic.post("/bet.html", big)
    assert (p.status, p.json["error"]) == (200, 7)
    v = await evolution.post(f"/debit?authToken={evolution.sim.auth_token}", big)
    assert (v.status, v.json["status"]) == (200, "INVALID_PARAMETER")


# --- hostile input, the same rule in every protocol ---------------------------------------------------------
def _form(call: Call) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(call.body.decode(), keep_blank_values=True))


def _resign(call: Call, **changes: str) -> Call:
    params = {k: v for k, v in _form(call).items() if k != "hash"} | changes
    params["hash"] = pragmatic_sign(params, PRAGMATIC_SECRET)
    return Call(call.path, call.headers, urllib.parse.urlencode(params).encode())


def _answer(protocol: str, reply: Any) -> Any:
    assert reply.status == 200, reply.body  # every protocol here answers its errors with HTTP 200
    data = reply.json
    return data["error"] if protocol == "pragmatic" else data["status"]


INVALID_AMOUNT = {"hub88": "RS_ERROR_WRONG_TYPES", "pragmatic": 7, "evolution": "INVALID_PARAMETER"}
MALFORMED = {"hub88": "RS_ERROR_WRONG_SYNTAX", "pragmatic": 7, "evolution": "INVALID_PARAMETER"}
BAD_TEXT = {"hub88": "RS_ERROR_WRONG_TYPES", "pragmatic": 7, "evolution": "INVALID_PARAMETER"}


@pytest.fixture
def providers(hub88: Provider, pragmatic: Provider, evolution: Provider) -> dict[str, Provider]:
    return {"hub88": hub88, "pragmatic": pragmatic, "evolution": evolution}


_TEXT_FIELDS = [
    ("hub88", "transaction_uuid"), ("hub88", "round"), ("hub88", "token"), ("hub88", "user"),
    ("hub88", "request_uuid"), ("hub88", "game_code"),
    ("pragmatic", "reference"), ("pragmatic", "userId"), ("pragmatic", "token"), ("pragmatic", "gameId"),
    ("evolution", "refId"), ("evolution", "transaction.id"), ("evolution", "sid"), ("evolution", "uuid"),
    ("evolution", "userId"), ("evolution", "game.id"),
]
_BAD_TEXT = ["\u0000", "\u001f", "\u0085", "\ud800"]


@pytest.mark.parametrize(("protocol", "name", "bad"), [
    (protocol, name, bad) for protocol, name in _TEXT_FIELDS for bad in _BAD_TEXT
    if protocol != "pragmatic" or bad < "\ud800"  # a decoded form value cannot hold a lone surrogate
])
async def test_control_characters_and_lone_surrogates_in_ids(providers: dict[str, Provider], wallet: Backend,
                                                             protocol: str, name: str, bad: str) -> None:
    """A NUL, another control character or a lone surrogate (as a JSON escape; Pragmatic's form decoding
    cannot produce one, so it gets the control characters only) in any id or echoed field: the protocol's
    bad-parameter answer, no command built, no money moved, and no bad text echoed back."""
    p = providers[protocol]
    s = await wallet.add_player(p.config.id, balance=100_00)
    escaped = orjson.dumps(bad).decode()[1:-1] if bad < "\ud800" else f"\\u{ord(bad):04x}"
    if protocol == "pragmatic":
        call = p.sim.bet(s.player_id, token=s.token, round_id="1001", amount=1_00, currency="EUR")
        value = _form(call)[name]
        call = _resign(call, **{name: value[:-1] + bad})  # same length: the reference is at its 32 maximum
    else:
        call = p.sim.bet(s.player_id, s.token, amount=1_00, currency="EUR", round="r1") if protocol == "hub88" \
            else p.sim.debit(s.player_id, s.token, currency="EUR", amount=1_00)
        key = name.split(".")[-1]
        data = orjson.loads(call.body)
        holder = data["transaction"] if name in ("refId", "transaction.id") else \
            data["game"] if name == "game.id" else data
        text = orjson.dumps(holder[key])
        body = call.body.replace(b'"' + key.encode() + b'":' + text,
                                 b'"' + key.encode() + b'":' + text[:-1] + b"x" + escaped.encode() + b'"', 1)
        assert body != call.body
        call = p.sim.signed(call.path[len(p.base):], body) if protocol == "hub88" else \
            Call(call.path, call.headers, body)
    reply = await p.send(call)
    # orjson refuses a lone surrogate while parsing: to Hub88's adapter that body is not JSON at all
    expected = MALFORMED if protocol == "hub88" and bad >= "\ud800" else BAD_TEXT
    assert _answer(protocol, reply) == expected[protocol], reply.body
    assert bad.encode("utf-8", "surrogatepass") not in reply.body and b"\\u" not in reply.body
    assert wallet.executed == []
    assert await wallet.balance(s) == 100_00


@pytest.mark.parametrize("endpoint", ["debit", "credit", "cancel", "promo_payout"])
@pytest.mark.parametrize("name", ["uuid", "sid", "refId"])
async def test_evolution_lone_surrogate_moves_no_money(evolution: Provider, wallet: Backend, endpoint: str,
                                                       name: str) -> None:
    """The tester's case: ``"\\ud800"`` in uuid, sid or refId of a money call used to move the money and then
    answer HTTP 500 (the answer could not echo it). Now INVALID_PARAMETER before any command."""
    s = await wallet.add_player(evolution.config.id, balance=100_00)
    sim = evolution.sim
    placed = sim.debit(s.player_id, s.token, currency="EUR", amount=1_00, ref_id="ref1", round_id="g1")
    assert orjson.loads((await evolution.send(placed)).body)["status"] == "OK"
    call = {
        "debit": lambda: sim.debit(s.player_id, s.token, currency="EUR", amount=1_00, ref_id="ref2"),
        "credit": lambda: sim.credit(s.player_id, s.token, currency="EUR", amount=5_00, ref_id="ref1",
                                     round_id="g1"),
        "cancel": lambda: sim.cancel(s.player_id, s.token, currency="EUR", amount=1_00, ref_id="ref1",
                                     round_id="g1"),
        "promo_payout": lambda: sim.promo_payout(s.player_id, s.token, currency="EUR", amount=5_00),
    }[endpoint]()
    data = orjson.loads(call.body)
    if name == "refId" and endpoint == "promo_payout":
        name = "id"  # the promo's own id is its key
    holder = data if name in ("uuid", "sid") else data.get("transaction") or data["promoTransaction"]
    old = b'"%s":%s' % (name.encode(), orjson.dumps(holder[name]))
    body = call.body.replace(old, b'"%s":"\\ud800"' % name.encode(), 1)
    assert body != call.body
    executed = len(wallet.executed)
    reply = await evolution.send(Call(call.path, call.headers, body))
    assert reply.status == 200, reply.body
    answer = reply.json
    assert answer["status"] == "INVALID_PARAMETER"
    assert answer["uuid"] == ("" if name == "uuid" else data["uuid"])
    assert len(wallet.executed) == executed
    assert await wallet.balance(s) == 99_00


@pytest.mark.parametrize("protocol", ["hub88", "pragmatic", "evolution"])
async def test_duplicate_keys_refused(providers: dict[str, Provider], wallet: Backend, protocol: str) -> None:
    """``amount`` given twice (the second a larger one) is refused, whichever value a parser would keep;
    so is a key repeated in a nested object."""
    p = providers[protocol]
    s = await wallet.add_player(p.config.id, balance=100_00)
    if protocol == "hub88":
        call = p.sim.bet(s.player_id, s.token, amount=1_00, currency="EUR", round="r1")
        bodies = [call.body[:-1] + b',"amount":5000000}',
                  call.body.replace(b'"meta":null', b'"meta":{"a":1,"a":2}')]
        calls = [p.sim.signed("/transaction/bet", b) for b in bodies]
    elif protocol == "pragmatic":
        call = p.sim.bet(s.player_id, token=s.token, round_id="1001", amount=1_00, currency="EUR")
        calls = [Call(call.path, call.headers, call.body + b"&amount=50.00")]
    else:
        call = p.sim.debit(s.player_id, s.token, currency="EUR", amount=1_00)
        calls = [Call(call.path, call.headers, call.body.replace(b'"amount":1.00', b'"amount":1.00,"amount":50.00')),
                 Call(call.path, call.headers, call.body[:-1] + b',"sid":"' + s.token.encode() + b'"}')]
    for bad in calls:
        assert bad.body != call.body
        assert _answer(protocol, await p.send(bad)) == MALFORMED[protocol]
    assert wallet.executed == []
    assert await wallet.balance(s) == 100_00


@pytest.mark.parametrize("protocol", ["hub88", "pragmatic", "evolution"])
@pytest.mark.parametrize("amount", ["1e1", "0.1e2", "1E+3", "1e999999"])
async def test_exponent_amounts_refused_in_every_protocol(providers: dict[str, Provider], wallet: Backend,
                                                          protocol: str, amount: str) -> None:
    p = providers[protocol]
    s = await wallet.add_player(p.config.id, balance=100_00)
    if protocol == "hub88":
        call = p.sim.bet(s.player_id, s.token, amount=1_00, currency="EUR", round="r1")
        call = p.sim.signed("/transaction/bet", call.body.replace(b'"amount":100000', b'"amount":' + amount.encode()))
    elif protocol == "pragmatic":
        call = _resign(p.sim.bet(s.player_id, token=s.token, round_id="1001", amount=1_00, currency="EUR"),
                       amount=amount)
    else:
        call = p.sim.debit(s.player_id, s.token, currency="EUR", amount=1_00)
        call = Call(call.path, call.headers, call.body.replace(b'"amount":1.00', b'"amount":' + amount.encode()))
    answer = _answer(protocol, await p.send(call))
    expected = INVALID_AMOUNT[protocol]
    if protocol == "hub88" and amount == "1e999999":
        expected = MALFORMED[protocol]  # not even a JSON number orjson can hold: the body is not JSON to it
    assert answer == expected
    assert wallet.executed == []
    assert await wallet.balance(s) == 100_00


NEAR_INT64 = 92233720368547758_07  # minor units of EUR: int64 max, less 0.00-0.07


@pytest.mark.parametrize("wallet", ["real"], indirect=True)
@pytest.mark.parametrize("minor", [1_000_000_000_01, NEAR_INT64])
@pytest.mark.parametrize("protocol", ["hub88", "pragmatic", "evolution"])
async def test_amounts_above_the_maximum_refused(providers: dict[str, Provider], wallet: Backend, protocol: str,
                                                 minor: int) -> None:
    """A win, a free-round win and a bet above the maximum of one command (GATEWAY_MAX_AMOUNT_MAJOR,
    1,000,000,000 EUR by default) get the protocol's invalid-amount answer: a single credit near int64
    would overflow the brand's shared house account. Just below the maximum is accepted."""
    p = providers[protocol]
    s = await wallet.add_player(p.config.id, balance=100_00)
    sim = p.sim
    if protocol == "hub88":
        minor = min(minor, INT64_MAX // 1000)  # Hub88 money is minor x 1000 for EUR, an int64 on the wire
        calls = [sim.win(s.player_id, s.token, amount=minor, currency="EUR", reference="b1", round="r1"),
                 sim.win(s.player_id, s.token, amount=minor, currency="EUR", reference="b2", round="r2",
                         is_free=True),
                 sim.bet(s.player_id, s.token, amount=minor, currency="EUR", round="r3")]
    elif protocol == "pragmatic":
        calls = [sim.bet(s.player_id, token=s.token, round_id="1001", amount=1_00, currency="EUR"),
                 sim.result(s.player_id, token=s.token, round_id="1001", amount=minor, currency="EUR"),
                 sim.bonus_win(s.player_id, amount=minor, currency="EUR", bonus_code="fr1"),
                 sim.bet(s.player_id, token=s.token, round_id="1002", amount=minor, currency="EUR")]
    else:
        calls = [sim.debit(s.player_id, s.token, currency="EUR", amount=1_00, ref_id="ref1", round_id="g1"),
                 sim.credit(s.player_id, s.token, currency="EUR", amount=minor, ref_id="ref1", round_id="g1"),
                 sim.promo_payout(s.player_id, s.token, currency="EUR", amount=minor,
                                  promo_type="FreeRoundPlayableSpent"),
                 sim.debit(s.player_id, s.token, currency="EUR", amount=minor, ref_id="ref2")]
    placed = 0
    if len(calls) == 4:  # Pragmatic and Evolution: the bet the credit settles
        assert _answer(protocol, await p.send(calls.pop(0))) == (0 if protocol == "pragmatic" else "OK")
        placed = 1_00
    for call in calls:
        assert _answer(protocol, await p.send(call)) == INVALID_AMOUNT[protocol], call.path
    assert await wallet.balance(s) == 100_00 - placed


@pytest.mark.parametrize("body", [b'{"a":1,"a":1}', b'{"a":{"b":1,"b":2}}', b'{"a":[{"c":1},{"c":1,"c":2}]}',
                                  b'{"x:y":1,"a":"b:c","a":2}'])
def test_duplicate_keys_in_the_exact_parser(body: bytes) -> None:
    with pytest.raises(DuplicateKey):
        loads_exact(body)
    with pytest.raises(e.MalformedBody):
        unique_keys(body, orjson.loads(body))


@pytest.mark.parametrize("body", [b'{"a":1,"b":{"a":1}}', b'{"t":"10:00:00","u":"http://x"}', b'[{"a":1},{"a":2}]',
                                  b'{"k:":1,":k":2}', b"{}", b"1"])
def test_same_key_in_different_objects_is_fine(body: bytes) -> None:
    loads_exact(body)
    unique_keys(body, orjson.loads(body))  # colons in strings take the careful path, and pass
