"""Bad input of any kind gets a clear error in the protocol's format and moves no money."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from adapters.native import SIGNATURE_HEADER, sign
from core.settings import Settings
from gateway import embedded
from tests.support import (
    DEMO_SECRET,
    EVOLUTION_TOKEN,
    OPERATOR_KEY,
    Api,
    closed_by_server,
    http_bytes,
    open_raw,
    raw_http,
)


def signed(body: bytes) -> dict[str, str]:
    return {SIGNATURE_HEADER: sign(DEMO_SECRET, body), "Content-Type": "application/json"}


async def _metric(api: Api, name: str) -> float:
    async with api.http.get(api.base + "/metrics") as resp:
        text = await resp.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


async def _until(check: Any, attempts: int = 200) -> None:
    """Wait (bounded: ``attempts`` times 50 ms) until ``await check()`` is true."""
    for _ in range(attempts):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


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
    body: dict[str, object] = {"session_token": token, "transaction_id": api.ns + "t", "round_id": api.ns + "r",
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


# --- hostile input: never a 5xx, never money moved ------------------------------------------------------
NOT_MONEY = ["1e1", "0.1e2", "1E+1", "10.0e0", "1e999999", "+1.00", " 1.00", "1.00 ", "1_000.00", "0x10",
             "1" * 41, "0." + "0" * 38 + "1", "\u0661.00", "1.", ".5", "", "1,00", "Infinity"]


@pytest.mark.parametrize("amount", NOT_MONEY)
async def test_only_plain_decimals_are_money_native_and_operator(api: Api, amount: str) -> None:
    """Exponents (even one meaning 10.00), signs, spaces, non-ASCII digits and over-long text are refused
    as invalid_amount by the native protocol and by the operator API's deposit and withdraw."""
    player, token = await api.funded("10.00")
    body = {"session_token": token, "transaction_id": api.ns + "t", "round_id": api.ns + "r", "amount": amount,
            "currency": "EUR"}
    raw = orjson.dumps(body)
    status, answer = await api.raw("/v1/providers/demo/bet", raw, signed(raw))
    assert (status, answer["code"]) == (400, "invalid_amount"), answer
    for path in ("/v1/wallet/deposit", "/v1/wallet/withdraw"):
        status, answer = await api.operator("POST", path, {**player, "amount": amount,
                                                           "idempotency_key": api.ns + path})
        assert (status, answer["error"]["code"]) == (400, "invalid_amount"), answer
    assert await api.balance(player) == "10.00"


@pytest.mark.parametrize("bad", ["\u0000", "\x1f", "\x7f", "\u0085", "\n"])
@pytest.mark.parametrize("name", ["transaction_id", "round_id", "game_id", "session_token"])
async def test_control_characters_in_ids_are_refused(api: Api, name: str, bad: str) -> None:
    """A NUL or other control character in any id is malformed_body at the edge (it used to reach the
    ledger writer, where PostgreSQL refused it and failed the whole batch)."""
    player, token = await api.funded("10.00")
    published = await _metric(api, "gateway_ledger_batches_published_total")
    body = {"session_token": token, "transaction_id": api.ns + "t", "round_id": api.ns + "r", "amount": "1.00",
            "currency": "EUR", "game_id": "g1"}
    body[name] = f"{body[name]}{bad}x"
    raw = orjson.dumps(body)
    status, answer = await api.raw("/v1/providers/demo/bet", raw, signed(raw))
    assert (status, answer["code"]) == (400, "malformed_body"), answer
    status, answer = await api.operator("POST", "/v1/wallet/deposit", {
        **player, "player_id": player["player_id"] + bad, "amount": "1.00", "idempotency_key": api.ns + "d"})
    assert (status, answer["error"]["code"]) == (400, "malformed_body"), answer
    # refused at the edge: nothing went to the ledger (where PostgreSQL refused NUL and failed the batch)
    assert await _metric(api, "gateway_ledger_batches_published_total") == published
    assert await api.balance(player) == "10.00"


@pytest.mark.parametrize("path", ["/v1/wallet/balance", "/v1/players/limits"])
@pytest.mark.parametrize("name", ["brand_id", "player_id", "currency"])
async def test_nul_in_query_values(api: Api, path: str, name: str) -> None:
    params = {"brand_id": "b1", "player_id": "p1", "currency": "EUR"}
    params[name] += "\x00"
    status, answer = await api.operator("GET", path, params=params)
    assert (status, answer["error"]["code"]) == (400, "malformed_body"), answer


@pytest.mark.parametrize("value", [b"\xff\xfe", b"Bearer \xc3\x28", "Bearer tést-operator-key".encode(),
                                   b"Bearer " + OPERATOR_KEY.encode() + b"\xa0"])
@pytest.mark.parametrize("header", [b"Authorization", b"X-Api-Key"])
async def test_non_ascii_api_keys(api: Api, header: bytes, value: bytes) -> None:
    """Non-ASCII bytes in a credential header are no credential (401), not a crash encoding them."""
    status, answer = await raw_http(api.base, http_bytes(
        "GET", "/v1/wallet/balance?brand_id=b1&player_id=p1&currency=EUR", [(header, value)]))
    assert (status, answer["error"]["code"]) == (401, "unauthorized"), answer


@pytest.mark.parametrize("value", [b"\xff", b"\xc3\xa9" * 32, b"0" * 63 + b"\x80"])
async def test_non_ascii_signatures(api: Api, value: bytes) -> None:
    """Native ``X-Signature`` and Hub88 ``X-Hub88-Signature`` with non-ASCII bytes: each protocol's own
    invalid-signature answer, nothing executed."""
    player, token = await api.funded("10.00")
    body = orjson.dumps({"session_token": token, "transaction_id": api.ns + "t", "round_id": api.ns + "r",
                         "amount": "1.00", "currency": "EUR"})
    status, answer = await raw_http(api.base, http_bytes("POST", "/v1/providers/demo/bet",
                                                         [(b"X-Signature", value)], body))
    assert (status, answer["code"]) == (401, "invalid_signature"), answer
    hub = orjson.dumps({"user": player["player_id"], "request_uuid": "r1", "token": "t"})
    status, answer = await raw_http(api.base, http_bytes("POST", "/v1/providers/hub88/user/balance",
                                                         [(b"X-Hub88-Signature", value)], hub))
    assert (status, answer["status"], answer["request_uuid"]) == (200, "RS_ERROR_INVALID_SIGNATURE", ""), answer
    assert await api.balance(player) == "10.00"


async def test_duplicate_keys_native(api: Api) -> None:
    """``{"amount":"1.00",...,"amount":"5.00"}`` is refused, whichever value a parser would keep."""
    player, token = await api.funded("10.00")
    head = b'{"session_token":"%s","transaction_id":"%st","round_id":"%sr","currency":"EUR",' % (
        token.encode(), api.ns.encode(), api.ns.encode())
    for tail in (b'"amount":"1.00","amount":"5.00"}', b'"amount":"1.00","game_id":"a:b","game_id":"c"}',
                 b'"amount":"1.00","x":{"k":1,"k":2}}'):
        raw = head + tail
        status, answer = await api.raw("/v1/providers/demo/bet", raw, signed(raw))
        assert (status, answer["code"]) == (400, "malformed_body"), answer
    assert await api.balance(player) == "10.00"
    # colons inside strings take the careful path and are not mistaken for keys
    raw = head + b'"amount":"1.00","game_id":"g:1:2","extra":[{"a":"x:y"},{"a":":"}]}'
    status, answer = await api.raw("/v1/providers/demo/bet", raw, signed(raw))
    assert status == 200, answer
    assert await api.balance(player) == "9.00"


@pytest.mark.parametrize("path", ["/v1/wallet/deposit", "/v1/wallet/withdraw"])
async def test_duplicate_keys_operator(api: Api, path: str) -> None:
    player, _ = await api.funded("10.00")
    raw = orjson.dumps({**player, "idempotency_key": api.ns + path, "amount": "1.00"})[:-1] + b',"amount":"9.00"}'
    async with api.http.post(api.base + path, data=raw, headers={"Authorization": f"Bearer {OPERATOR_KEY}"}) as r:
        status, answer = r.status, await r.json()
    assert (status, answer["error"]["code"]) == (400, "malformed_body"), answer
    assert await api.balance(player) == "10.00"


async def test_amounts_above_the_maximum_native_and_operator(api: Api) -> None:
    """One command moves at most GATEWAY_MAX_AMOUNT_MAJOR (1,000,000,000 by default) of a currency: a
    deposit or win near int64 would overflow the brand's shared cash or house account."""
    player, token = await api.funded("10.00")
    near_int64 = "92233720368547758.07"
    for amount in (near_int64, "1000000000.01"):
        status, answer = await api.operator("POST", "/v1/wallet/deposit",
                                            {**player, "amount": amount, "idempotency_key": api.ns + amount})
        assert (status, answer["error"]["code"]) == (400, "invalid_amount"), answer
        status, answer = await api.win(token, "w" + amount, "r1", amount)
        assert (status, answer["code"]) == (400, "invalid_amount"), answer
    assert await api.balance(player) == "10.00"
    status, answer = await api.deposit(player, "1000000000.00")
    assert status == 200 and answer["balance"] == "1000000010.00", answer


async def test_maximum_amount_per_currency(make_gateway: Any, http: Any) -> None:
    async with make_gateway(max_amount_major=100, max_amount_overrides="JPY=5000,KWD=7") as gw:
        api = Api(http, gw.base_url)
        for currency, refused, accepted in (("EUR", "100.01", "100.00"), ("JPY", "5001", "5000"),
                                            ("KWD", "7.001", "7.000")):
            player = api.player(currency=currency)
            status, answer = await api.deposit(player, refused)
            assert (status, answer["error"]["code"]) == (400, "invalid_amount"), answer
            status, answer = await api.deposit(player, accepted)
            assert status == 200 and answer["balance"] == accepted, answer


# --- clients that hang up or dawdle --------------------------------------------------------------------
@pytest.mark.parametrize(("path", "header"), [
    ("/v1/providers/demo/bet", (b"X-Signature", b"00")),
    ("/v1/providers/hub88/transaction/bet", (b"X-Hub88-Signature", b"AA==")),
    ("/v1/providers/evolution/debit?authToken=x", (b"Content-Type", b"application/json")),
    ("/v1/providers/pragmatic/bet.html", (b"Content-Type", b"application/x-www-form-urlencoded")),
    ("/v1/wallet/deposit", (b"Authorization", b"Bearer " + OPERATOR_KEY.encode())),
])
async def test_client_gone_mid_body_is_no_server_error(api: Api, caplog: pytest.LogCaptureFixture, path: str,
                                                       header: tuple[bytes, bytes]) -> None:
    """A client that hangs up halfway through its body is counted in gateway_client_disconnects_total,
    not as a 5xx, and leaves no error log."""
    route = path.split("?")[0].replace("/bet.html", "/{method}.html")  # the route's pattern
    label = f'gateway_client_disconnects_total{{route="{route}"}}'
    before = await _metric(api, label)
    errors_before = await _metric(api, 'gateway_requests_total{route="' + route + '",status="5')
    _, writer = await open_raw(api.base)
    request = http_bytes("POST", path, [header], b'{"amount":"1.00"}' + b" " * 983)
    writer.write(request[: request.index(b"\r\n\r\n") + 4 + 17])  # headers and 17 of 1000 body bytes
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.close()

    async def counted() -> bool:
        return await _metric(api, label) == before + 1

    await _until(counted)
    assert await _metric(api, 'gateway_requests_total{route="' + route + '",status="5') == errors_before
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_slowloris_headers_are_cut(make_gateway: Any, http: Any) -> None:
    """Headers trickling a byte at a time are cut after GATEWAY_HTTP_HEADER_TIMEOUT_S from their first
    byte, although bytes keep arriving and the idle timeout is far away."""
    async with make_gateway(http_header_timeout_s=1, http_idle_timeout_s=300) as gw:
        api = Api(http, gw.base_url)
        before = await _metric(api, 'gateway_http_timeouts_total{phase="header"}')
        reader, writer = await open_raw(gw.base_url)
        request = b"POST /v1/wallet/deposit HTTP/1.1\r\nHost: gateway\r\nX-Slow: " + b"a" * 200
        closed = False
        try:
            for i in range(len(request)):  # one byte every 50 ms: 10 s in all, unless the server cuts it
                writer.write(request[i:i + 1])
                await writer.drain()
                if await closed_by_server(reader, within_s=0.05):
                    closed = True
                    break
        except ConnectionError:
            closed = True
        finally:
            writer.close()
        assert closed, "the server kept a trickling request open"
        assert await _metric(api, 'gateway_http_timeouts_total{phase="header"}') == before + 1


async def test_idle_connections_are_closed(make_gateway: Any, http: Any) -> None:
    """Connections that never send a byte, and a keep-alive connection after its request, are closed after
    GATEWAY_HTTP_IDLE_TIMEOUT_S."""
    async with make_gateway(http_idle_timeout_s=1) as gw:
        idle = [await open_raw(gw.base_url) for _ in range(50)]
        reader, writer = await open_raw(gw.base_url)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")  # keep-alive: HTTP/1.1 default
        await writer.drain()
        try:
            assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).startswith(b"HTTP/1.1 200")
            closed = await asyncio.gather(*(closed_by_server(r, within_s=10) for r, _ in [*idle, (reader, writer)]))
            assert all(closed), f"{closed.count(False)} of {len(closed)} idle connections stayed open"
        finally:
            for _, w in [*idle, (reader, writer)]:
                w.close()


@pytest.mark.parametrize(("protocol", "path", "expected"), [
    ("native", "/v1/providers/demo/bet", (408, "body_timeout")),
    ("hub88", "/v1/providers/hub88/transaction/bet", (200, "RS_ERROR_UNKNOWN")),
    ("evolution", f"/v1/providers/evolution/debit?authToken={EVOLUTION_TOKEN}", (200, "TEMPORARY_ERROR")),
    ("pragmatic", "/v1/providers/pragmatic/bet.html", (200, 100)),
    ("operator", "/v1/wallet/deposit", (408, "body_timeout")),
])
async def test_slow_body_gets_the_protocols_retryable_answer(make_gateway: Any, http: Any, protocol: str,
                                                             path: str, expected: tuple[int, Any]) -> None:
    """A body not complete GATEWAY_HTTP_BODY_TIMEOUT_S after its headers is answered with the protocol's
    retryable error (nothing was done, a retry is safe) instead of holding the connection."""
    async with make_gateway(http_body_timeout_s=1) as gw:
        reader, writer = await open_raw(gw.base_url)
        auth = [(b"Authorization", b"Bearer " + OPERATOR_KEY.encode())] if protocol == "operator" else []
        request = http_bytes("POST", path, auth, b"{" + b" " * 999)
        writer.write(request[:-500])  # headers and half the body; the rest never comes
        await writer.drain()
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            body = orjson.loads(await asyncio.wait_for(reader.readexactly(length), 10))
            # and the connection is not kept waiting for the rest of that body
            assert await closed_by_server(reader, within_s=5)
        finally:
            writer.close()
        status = int(head.split(b" ")[1])
        code = {"native": lambda: body["code"], "operator": lambda: body["error"]["code"],
                "pragmatic": lambda: body["error"]}.get(protocol, lambda: body["status"])()
        assert (status, code) == expected, body


@pytest.mark.slow
async def test_gateway_serve_applies_the_deadlines_in_every_worker(writers: Settings, tmp_path: Path) -> None:
    """``gateway serve --workers 2`` serves through the same runner: idle connections and trickling headers
    are cut in every worker process (connections spread over both through SO_REUSEPORT)."""
    port = embedded.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env |= writers.replace(http_port=port, http_idle_timeout_s=1, http_header_timeout_s=1, workers=2,
                           log_level="WARNING").env()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "serve", env=env, stdout=out,
                                                    stderr=subprocess.STDOUT)
        try:
            async with aiohttp.ClientSession() as http:
                for _ in range(300):  # up to 60 s for both workers to start
                    assert proc.returncode is None, log.read_text()
                    try:
                        async with http.get(base + "/healthz") as resp:
                            if resp.status == 200:
                                break
                    except aiohttp.ClientConnectionError:
                        pass
                    await asyncio.sleep(0.2)
                else:
                    raise AssertionError(log.read_text())
                await asyncio.sleep(2)  # the second worker too
                conns = [await open_raw(base) for _ in range(16)]
                for _, w in conns[8:]:  # these start a request and trickle it
                    w.write(b"GET /healthz HTTP/1.1\r\nHost: g\r\nX-Slow: ")
                closed = await asyncio.gather(*(closed_by_server(r, within_s=15) for r, _ in conns))
                for _, w in conns:
                    w.close()
                assert all(closed), f"{closed.count(False)} of {len(closed)} connections stayed open"
        finally:
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), 60)
    assert code == 0, log.read_text()


@pytest.mark.parametrize("trace", [b"00-" + b"\xff" * 32 + b"-" + b"a" * 16 + b"-01",
                                   b"00-" + b"A" * 32 + b"-" + b"b" * 16 + b"-01", b"00-zz"])
async def test_junk_traceparent_starts_a_new_trace(api: Api, trace: bytes) -> None:
    """A malformed ``traceparent`` (55 bytes with non-ASCII or control bytes) is replaced, never copied into
    the command, where it used to fail the call."""
    _, token = await api.funded("10.00")
    body = orjson.dumps({"session_token": token, "transaction_id": api.ns + "t", "round_id": api.ns + "r",
                         "amount": "1.00", "currency": "EUR"})
    status, answer = await raw_http(api.base, http_bytes("POST", "/v1/providers/demo/bet", [
        (b"X-Signature", sign(DEMO_SECRET, body).encode()), (b"traceparent", trace)], body))
    assert (status, answer["status"], answer["balance"]) == (200, "OK", "9.00"), answer


@pytest.mark.parametrize("request_bytes", [
    b"POST /v1/providers/demo/bet HTTP/1.1\r\nHost: g\r\ntraceparent: 00-\x01\r\nContent-Length: 0\r\n\r\n",
    b"POST /v1/wallet/deposit HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer \x00key\r\n\r\n",
    b"GET /v1/wallet/balance?a=\x00 HTTP/1.1\r\nHost: g\r\n\r\n",
])
async def test_malformed_http_is_a_quiet_400(api: Api, caplog: pytest.LogCaptureFixture,
                                             request_bytes: bytes) -> None:
    """Control bytes where HTTP allows none: the HTTP layer's 400, counted, and no traceback in the error
    log per hostile request."""
    before = await _metric(api, "gateway_http_malformed_total")
    reader, writer = await open_raw(api.base)
    try:
        writer.write(request_bytes)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)
    finally:
        writer.close()
    assert head.split(b" ")[1] == b"400", head
    assert await _metric(api, "gateway_http_malformed_total") == before + 1
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.parametrize(("path", "headers"), [
    ("/v1/providers/demo/bet", [(b"X-Signature", b"00")]),
    ("/v1/providers/hub88/transaction/bet", [(b"X-Hub88-Signature", b"AA==")]),
    ("/v1/wallet/deposit", [(b"Authorization", b"Bearer " + OPERATOR_KEY.encode())]),
])
async def test_undecodable_body_is_bad_input(api: Api, caplog: pytest.LogCaptureFixture, path: str,
                                             headers: list[tuple[bytes, bytes]]) -> None:
    """A body that cannot be decoded (``Content-Encoding: gzip`` over junk): the protocol's bad-syntax answer,
    never a 5xx and no error log."""
    body = b"\x1f\x8b" + b"not gzip at all" * 4
    status, answer = await raw_http(api.base, http_bytes("POST", path, [(b"Content-Encoding", b"gzip"), *headers],
                                                         body))
    assert (status, answer.get("code") or answer.get("status") or answer["error"]["code"]) in (
        (400, "malformed_body"), (200, "RS_ERROR_WRONG_SYNTAX")), answer
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_deeply_nested_body_is_no_server_error(api: Api) -> None:
    """Nesting close to the parser's limit, with a colon in a string so the duplicate-key check walks it:
    an answer in the protocol's format, never a 5xx."""
    _, token = await api.funded("10.00")
    deep = b"[" * 990 + b'"a:b"' + b"]" * 990
    raw = orjson.dumps({"session_token": token, "transaction_id": api.ns + "t", "round_id": api.ns + "r",
                        "amount": "1.00", "currency": "EUR"})[:-1] + b',"x":' + deep + b"}"
    status, answer = await api.raw("/v1/providers/demo/bet", raw, signed(raw))
    assert status < 500, answer
