"""Bad input of any kind gets a clear error in the protocol's format and moves no money."""

from __future__ import annotations

import orjson
import pytest

from adapters.native import SIGNATURE_HEADER, sign
from tests.support import DEMO_SECRET, Api


def signed(body: bytes) -> dict[str, str]:
    return {SIGNATURE_HEADER: sign(DEMO_SECRET, body), "Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("patch", "code"),
    [
        ({"amount": "-1.00"}, "invalid_amount"),
        ({"amount": "1.001"}, "invalid_amount"),
        ({"amount": 1.5}, "invalid_amount"),
        ({"amount": "1e400"}, "invalid_amount"),
        ({"amount": "NaN"}, "invalid_amount"),
        ({"amount": "abc"}, "invalid_amount"),
        ({"currency": "XXX"}, "unknown_currency"),
        ({"currency": "USD"}, "wrong_currency"),
        ({"transaction_id": None}, "malformed_body"),
        ({"transaction_id": 12}, "malformed_body"),
        ({"round_id": ""}, "malformed_body"),
        ({"round_closed": "yes"}, "malformed_body"),
        ({"session_token": "not-a-session"}, "invalid_token"),
    ],
)
async def test_bad_bet_fields_are_refused_without_moving_money(api: Api, patch: dict[str, object],
                                                                code: str) -> None:
    player, token = await api.funded("10.00")
    body = {"session_token": token, "transaction_id": api.ns + "t", "round_id": api.ns + "r",
            "amount": "1.00", "currency": "EUR"}
    body.update(patch)
    raw = orjson.dumps({k: v for k, v in body.items() if v is not None})
    status, answer = await api.raw("/v1/providers/demo/bet", raw, signed(raw))
    assert 400 <= status < 500
    assert answer["status"] == "ERROR" and answer["code"] == code, answer
    assert await api.balance(player) == "10.00"


async def test_not_json_and_not_an_object(api: Api) -> None:
    for raw in (b"{not json", b"[1, 2]", b""):
        status, answer = await api.raw("/v1/providers/demo/bet", raw, signed(raw))
        assert status == 400 and answer["code"] == "malformed_body"


async def test_bad_or_missing_signature(api: Api) -> None:
    player, token = await api.funded("10.00")
    raw = orjson.dumps({"session_token": token, "transaction_id": "x", "round_id": "r", "amount": "1.00",
                        "currency": "EUR"})
    status, answer = await api.raw("/v1/providers/demo/bet", raw, {SIGNATURE_HEADER: sign("wrong", raw)})
    assert status == 401 and answer["code"] == "invalid_signature"
    status, answer = await api.raw("/v1/providers/demo/bet", raw, {})
    assert status == 401 and answer["code"] == "invalid_signature"
    tampered = raw.replace(b'"1.00"', b'"0.01"')
    status, answer = await api.raw("/v1/providers/demo/bet", tampered, signed(raw))
    assert status == 401
    assert await api.balance(player) == "10.00"


async def test_oversized_body(api: Api) -> None:
    raw = b'{"pad": "' + b"x" * (70 * 1024) + b'"}'
    status, answer = await api.raw("/v1/providers/demo/bet", raw, signed(raw))
    assert status == 413 and answer["code"] == "payload_too_large"
    status, answer = await api.operator("POST", "/v1/wallet/deposit", {"pad": "x" * 70 * 1024})
    assert status == 413 and answer["error"]["code"] == "payload_too_large"


async def test_launch_token_is_one_time(api: Api) -> None:
    player = api.player()
    status, launch = await api.operator("POST", "/v1/sessions", {**player, "provider_id": "demo"})
    assert status == 201
    status, _ = await api.send(api.native.authenticate(launch["launch_token"]))
    assert status == 200
    status, again = await api.send(api.native.authenticate(launch["launch_token"]))
    assert status == 401 and again["code"] == "invalid_token"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"amount": "1.00"}, 400, "malformed_body"),
        ({"tenant_id": "t", "brand_id": "b", "license": "L", "player_id": "p", "currency": "EUR",
          "amount": "0.00", "idempotency_key": "k0"}, 400, "invalid_amount"),
        ({"tenant_id": "t", "brand_id": "b", "license": "L", "player_id": "p", "currency": "EURO",
          "amount": "1.00", "idempotency_key": "k1"}, 400, "malformed_body"),
        ({"tenant_id": "t", "brand_id": "b", "license": "L", "player_id": "p", "currency": "ZZZ",
          "amount": "1.00", "idempotency_key": "k2"}, 400, "unknown_currency"),
        ({"tenant_id": "t", "brand_id": "b", "license": "L", "player_id": "p", "currency": "JPY",
          "amount": "1.5", "idempotency_key": "k3"}, 400, "invalid_amount"),
        ({"tenant_id": "t", "brand_id": "b", "license": "L", "player_id": "p", "currency": "EUR",
          "amount": 10, "idempotency_key": "k4"}, 400, "invalid_amount"),
    ],
)
async def test_operator_deposit_validation(api: Api, body: dict[str, object], status: int, code: str) -> None:
    got, answer = await api.operator("POST", "/v1/wallet/deposit", body)
    assert got == status and answer["error"]["code"] == code, answer


async def test_unknown_provider_and_route(api: Api) -> None:
    status, answer = await api.operator("POST", "/v1/sessions", {**api.player(), "provider_id": "nope"})
    assert status == 404 and answer["error"]["code"] == "not_found"
    async with api.http.post(api.base + "/v1/providers/nope/bet", data=b"{}") as resp:
        assert resp.status == 404
