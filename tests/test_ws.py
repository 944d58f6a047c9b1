"""The player session websocket against the real stack: writers + outbox relay + gateways, NATS, Redis."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from core.settings import Settings
from gateway import embedded, ws_hub
from gateway import ws as gws
from gateway.sessions import _dump
from tests.support import DEMO_SECRET, Api

Msg = dict[str, Any]


def ws_url(base: str, token: str, provider: str = "demo") -> str:
    return f"{base.replace('http', 'ws', 1)}/v1/ws?provider={provider}&token={token}"


async def receive_until(sock: aiohttp.ClientWebSocketResponse, done: Callable[[list[Msg]], bool],
                        within_s: float = 15) -> list[Msg]:
    """Messages in arrival order until ``done(seen)`` (bounded by ``within_s``)."""
    seen: list[Msg] = []
    deadline = time.monotonic() + within_s
    while not done(seen):
        left = deadline - time.monotonic()
        assert left > 0, f"gave up waiting; saw {seen}"
        msg = await sock.receive(timeout=left)
        if msg.type is not aiohttp.WSMsgType.TEXT:
            raise AssertionError(f"socket ended ({msg.type}, {msg.data!r}) after {seen}")
        seen.append(orjson.loads(msg.data))
    return seen


def balances(seen: list[Msg], api: Api) -> list[tuple[int, int]]:
    return [(m["balance"], m["change"]) for m in seen if m["type"] == "balance" and m["tx_id"].startswith(api.ns)]


async def wait_for(cond: Callable[[], bool], within_s: float = 15) -> None:
    deadline = time.monotonic() + within_s
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_bet_and_win_push_exact_balances_in_order(api: Api, http: aiohttp.ClientSession) -> None:
    player, token = await api.funded("100.00")
    async with http.ws_connect(ws_url(api.base, token), protocols=(gws.PROTOCOL,)) as sock:
        (hello,) = await receive_until(sock, lambda s: len(s) == 1)
        assert hello["type"] == "hello" and hello["seq"] == 1
        assert hello["balance"] == 10000 and hello["currency"] == "EUR"
        assert hello["session"]["player_id"] == player["player_id"] and hello["mode"] == "normal"
        assert "limits" in hello
        status, _ = await api.bet(token, "b-1", "r-1", "1.50")
        assert status == 200
        status, _ = await api.win(token, "w-1", "r-1", "4.00", bet_transaction_id="b-1", round_closed=True)
        assert status == 200
        seen = await receive_until(sock, lambda s: len(balances(s, api)) == 2
                                   and any(m.get("event") == "round.closed" for m in s))
    assert balances(seen, api) == [(9850, -150), (10250, 400)]
    rounds = [m["event"] for m in seen if m["type"] == "round"]
    assert rounds == ["bet.placed", "bet.settled", "round.closed"]
    seqs = [hello["seq"]] + [m["seq"] for m in seen]
    assert seqs == list(range(1, len(seqs) + 1))  # per-connection, gap-free
    cursors = [m["cursor"] for m in seen]
    assert cursors == sorted(cursors)


async def test_socket_on_one_replica_sees_a_bet_made_through_another(api: Api, http: aiohttp.ClientSession,
                                                                    make_gateway: Any) -> None:
    _, token = await api.funded("20.00")
    async with make_gateway() as other, http.ws_connect(ws_url(other.base_url, token)) as sock:
        await receive_until(sock, lambda s: len(s) == 1)
        status, _ = await api.bet(token, "b-x", "r-x", "2.25")  # through the shared gateway
        assert status == 200
        seen = await receive_until(sock, lambda s: len(balances(s, api)) == 1)
    assert balances(seen, api) == [(1775, -225)]


@pytest.mark.slow
async def test_socket_on_a_separate_serve_process_sees_a_bet_made_through_this_one(
        api: Api, http: aiohttp.ClientSession, writers: Settings, tmp_path: Path) -> None:
    """The fan-out across OS processes: the socket is held by a ``gateway serve`` process of its own (same
    NATS, PostgreSQL, Redis and namespace), the bet goes through the test's in-process gateway; only the
    committed-event stream connects the two, and the exact balance must arrive over it."""
    _, token = await api.funded("30.00")
    port = embedded.free_port()
    providers = tmp_path / "providers.toml"
    providers.write_text(f'[[providers]]\nid = "demo"\nprotocol = "native"\nsecret = "{DEMO_SECRET}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "PROMETHEUS_"))}
    env["TMPDIR"] = str(tmp_path)
    env.update(writers.replace(http_port=port, providers_file=str(providers), log_level="WARNING").env())
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "serve", "--workers", "1",
                                                    env=env, stdout=out, stderr=asyncio.subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:  # the other process is ready (NATS, Redis and ledger reachable)
            assert proc.returncode is None, log.read_text()
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(base + "/readyz") as resp:
                    if resp.status == 200:
                        break
            assert time.monotonic() < deadline, log.read_text()
            await asyncio.sleep(0.2)
        async with http.ws_connect(ws_url(base, token), protocols=(gws.PROTOCOL,)) as sock:
            (hello,) = await receive_until(sock, lambda s: len(s) == 1)
            assert hello["type"] == "hello" and hello["balance"] == 3000
            status, _ = await api.bet(token, "b-p", "r-p", "4.75")  # through the in-process gateway
            assert status == 200
            seen = await receive_until(sock, lambda s: len(balances(s, api)) == 1)
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await asyncio.wait_for(proc.wait(), 10)
    assert balances(seen, api) == [(2525, -475)]
    assert [m["seq"] for m in seen] == list(range(2, 2 + len(seen)))


async def test_reconnect_and_resume_replays_what_was_missed(api: Api, http: aiohttp.ClientSession,
                                                            make_gateway: Any) -> None:
    _, token = await api.funded("50.00")
    async with http.ws_connect(ws_url(api.base, token)) as witness:
        await receive_until(witness, lambda s: len(s) == 1)
        async with http.ws_connect(ws_url(api.base, token)) as sock:
            await receive_until(sock, lambda s: len(s) == 1)
            await api.bet(token, "b-1", "r-1", "5.00")
            seen = await receive_until(sock, lambda s: len(balances(s, api)) == 1)
            cursor = [m for m in seen if m["type"] == "balance"][-1]["cursor"]
        # offline: another bet and a win happen (the witness socket shows they reached the stream)
        await api.bet(token, "b-2", "r-2", "3.00")
        await api.win(token, "w-2", "r-2", "10.00", bet_transaction_id="b-2")
        await receive_until(witness, lambda s: len(balances(s, api)) == 3)
    # a small queue: the replay must pace itself to the socket instead of overflowing it
    async with make_gateway(ws_queue_max=2) as other, http.ws_connect(ws_url(other.base_url, token)) as sock:
        (hello,) = await receive_until(sock, lambda s: len(s) == 1)
        assert hello["balance"] == 5200
        await sock.send_json({"type": "resume", "cursor": cursor})
        seen = await receive_until(sock, lambda s: any(m["type"] == "resumed" for m in s))
        await sock.send_json({"type": "ping"})
        pong = await receive_until(sock, lambda s: any(m["type"] == "pong" for m in s))
    replayed = [m for m in seen if m.get("replay")]
    assert balances(replayed, api) == [(4200, -300), (5200, 1000)]
    assert [m["event"] for m in replayed if m["type"] == "round"] == ["bet.placed", "bet.settled"]
    resumed = seen[-1]
    assert resumed["type"] == "resumed" and resumed["balance"] == 5200 and resumed["complete"] is True
    assert resumed["replayed"] == len(replayed) and resumed["cursor"] > cursor
    assert [m["seq"] for m in seen + pong] == list(range(2, 2 + len(seen) + len(pong)))


async def test_bad_tokens_are_refused_before_the_upgrade(api: Api, http: aiohttp.ClientSession,
                                                         gateway: Any) -> None:
    _, token = await api.funded("1.00")
    upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    sessions = gateway.state.wallet.sessions
    sess = await sessions.get("demo", token)
    expired = dataclasses.replace(sess, token="expired-" + token, expires_ms=1)
    await sessions.r.set(sessions._k("sess", "demo", expired.token), _dump(expired), ex=60)
    cases = {
        "invalid_token": f"/v1/ws?provider=demo&token=not-a-token-{api.ns}",
        "token_expired": f"/v1/ws?provider=demo&token={expired.token}",
    }
    for code, path in cases.items():
        async with http.get(api.base + path, headers=upgrade) as resp:
            assert resp.status == 401, await resp.text()
            assert (await resp.json())["error"]["code"] == code
            assert "Sec-WebSocket-Accept" not in resp.headers
    for path in ("/v1/ws?provider=demo", f"/v1/ws?provider=nope&token={token}"):
        async with http.get(api.base + path, headers=upgrade) as resp:
            assert resp.status == 401 and (await resp.json())["error"]["code"] == "invalid_token"
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await http.ws_connect(ws_url(api.base, "bad-" + token))
    assert info.value.status == 401
    # the token may travel as a subprotocol instead of in the URL
    async with http.ws_connect(f"{api.base.replace('http', 'ws', 1)}/v1/ws?provider=demo",
                               protocols=(gws.PROTOCOL, gws.TOKEN_PROTOCOL_PREFIX + token)) as sock:
        assert sock.protocol == gws.PROTOCOL
        (hello,) = await receive_until(sock, lambda s: len(s) == 1)
        assert hello["balance"] == 100


def _event(player: dict[str, str], i: int, etype: str, balance: int, ns: str) -> dict[str, Any]:
    ltx = 10**15 + i
    return {"id": f"{ltx}:{etype}", "type": etype, "v": 1, "ts_ms": int(time.time() * 1000),
            "tenant_id": player["tenant_id"], "brand_id": player["brand_id"], "license": player["license"],
            "player_id": player["player_id"], "currency": "EUR", "amount": 1, "balance": balance,
            "provider_id": "demo", "tx_id": f"{ns}flood-{i}", "round_id": f"{ns}flood-r{i}", "ref_tx_id": None,
            "credit_type": None, "ledger_tx": ltx, "traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}


async def test_a_client_that_never_reads_is_conflated_then_cut_off(api: Api, make_gateway: Any) -> None:
    player, token = await api.funded("1.00")
    async with make_gateway(ws_queue_max=8, ws_send_buffer_bytes=4096) as gw:
        hub: gws.Hub = gw.state.ws_hub
        host, port = gw.base_url.removeprefix("http://").split(":")
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(raw, (host, int(port)))
        await loop.sock_sendall(raw, (
            f"GET /v1/ws?provider=demo&token={token} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        ).encode())
        key = (player["tenant_id"], player["brand_id"], player["player_id"])
        await wait_for(lambda: key in hub.by_player)
        await asyncio.wait_for(hub.live.wait(), 15)
        conn = hub.by_player[key][0]
        nc = gw.state.nc
        subject = f"{gw.state.settings.namespace}.events.{player['tenant_id']}.{player['brand_id']}."
        base = int.from_bytes(api.ns[:6].encode(), "big") * 10**4
        # balance updates only: the backlog conflates into one queued balance, the socket stays
        for i in range(3000):
            await nc.publish(subject + "wallet.credited",
                             orjson.dumps(_event(player, base + i, "wallet.credited", 100 + i, api.ns)))
        await nc.flush()
        await wait_for(lambda: hub.conflated > 0 and conn.last_cursor > 0)
        assert not conn.closed and len(conn.queue) <= 8
        # round events cannot conflate: the queue fills and the client is cut off
        for i in range(3000, 6000):
            await nc.publish(subject + "bet.placed", orjson.dumps(_event(player, base + i, "bet.placed", 5, api.ns)))
        await nc.flush()
        await wait_for(lambda: key not in hub.by_player)
        assert conn.closed and hub.slow_disconnects >= 1
        assert hub.high_water <= 8 and len(conn.queue) == 0
        raw.close()
        async with aiohttp.ClientSession() as http, http.get(gw.base_url + "/metrics") as resp:
            text = await resp.text()
        assert "gateway_ws_slow_disconnects_total 1.0" in text and "gateway_ws_balances_conflated_total" in text


async def test_shutdown_says_bye_to_every_socket(api: Api, http: aiohttp.ClientSession, make_gateway: Any) -> None:
    _, token = await api.funded("1.00")
    seen: list[Msg] = []
    async with make_gateway(shutdown_drain_s=5, ws_reconnect_jitter_ms=100) as gw:
        sock = await http.ws_connect(ws_url(gw.base_url, token))
        seen += await receive_until(sock, lambda s: len(s) == 1)

        async def read_all() -> None:
            async for msg in sock:
                seen.append(orjson.loads(msg.data))

        reader = asyncio.create_task(read_all())
        await asyncio.sleep(0)
    await asyncio.wait_for(reader, 10)
    assert seen[-1]["type"] == "bye" and seen[-1]["reason"] == "draining"
    assert 0 <= seen[-1]["reconnect_after_ms"] <= 100
    assert sock.closed and sock.close_code == 1001


async def test_rg_limit_and_degradation_reach_the_socket(api: Api, http: aiohttp.ClientSession,
                                                         gateway: Any) -> None:
    player, token = await api.funded("10.00")
    status, _ = await api.operator("PUT", "/v1/players/limits", {**player, "limits": {"max_stake": "1.00"},
                                                                 "idempotency_key": api.ns + "lim"})
    assert status == 200
    async with http.ws_connect(ws_url(api.base, token)) as sock:
        (hello,) = await receive_until(sock, lambda s: len(s) == 1)
        assert hello["limits"]["max_stake"]["value"] == "1.00"
        status, body = await api.bet(token, "b-big", "r-big", "2.00")
        assert status == 403, body
        seen = await receive_until(sock, lambda s: any(m["type"] == "rg" for m in s))
        assert seen[-1]["kind"] == "limit_reached" and seen[-1]["limit"] == "stake_limit"
        assert seen[-1]["amount"] == 200
        degradation = gateway.state.degradation
        scope = f"brand:{player['brand_id']}"
        try:
            degradation.set_mode(scope, "bets_paused", "admin", "test")
            seen = await receive_until(sock, lambda s: any(m["type"] == "degraded" for m in s))
            assert seen[-1]["mode"] == "bets_paused" and seen[-1]["state"] == "entered"
        finally:
            degradation.set_mode(scope, "normal", "admin")
        seen = await receive_until(sock, lambda s: any(m["type"] == "degraded" for m in s))
        assert seen[-1]["mode"] == "normal" and seen[-1]["state"] == "left"


def test_slow_client_queue_conflates_balances_and_stays_bounded() -> None:
    """Pure logic of the per-socket queue (a stand-in hub and socket; nothing is sent)."""

    class FakeHub:
        settings = type("S", (), {"ws_queue_max": 3, "ws_send_timeout_s": 1})()
        conflated = high_water = slow_disconnects = sent = 0

        def slow(self, conn: gws.Conn) -> None:
            self.slow_disconnects += 1
            conn.closed = True

    hub: Any = FakeHub()
    conn = gws.Conn(hub, None, type("Sess", (), {"tenant_id": "t", "brand_id": "b", "player_id": "p"})(), None)  # type: ignore[arg-type]
    conn.resuming = False
    conn.flusher = object()  # type: ignore[assignment]  # pretend a send is in progress: nothing drains
    for i in range(100):
        conn.deliver({"type": "balance", "balance": 100 + i, "currency": "EUR", "change": 1, "cursor": i + 1})
    assert len(conn.queue) == 1 and conn.queue[0]["balance"] == 199 and conn.queue[0]["change"] == 100
    conn.deliver({"type": "round", "event": "bet.placed", "cursor": 101})
    conn.deliver({"type": "balance", "balance": 5, "currency": "EUR", "change": -194, "cursor": 102})
    assert [(m["type"], m.get("balance")) for m in conn.queue] == [("round", None), ("balance", 5)]
    assert conn.queue[1]["change"] == -94 and conn.queue[1]["conflated"] is True
    conn.deliver({"type": "round", "event": "bet.placed", "cursor": 103})
    assert not conn.closed and len(conn.queue) == 3
    conn.deliver({"type": "round", "event": "bet.placed", "cursor": 104})
    assert conn.closed and hub.slow_disconnects == 1
    conn.deliver({"type": "balance", "balance": 1, "currency": "EUR", "change": 1, "cursor": 50})  # stale: ignored
    assert len(conn.queue) == 3


async def test_reality_check_and_session_time_limit(api: Api, http: aiohttp.ClientSession, gateway: Any) -> None:
    player, token = await api.funded("5.00")
    status, _ = await api.operator("PUT", "/v1/players/limits", {**player, "limits": {"session_minutes": 90},
                                                                 "idempotency_key": api.ns + "sess"})
    assert status == 200
    hub: gws.Hub = gateway.state.ws_hub
    key = (player["tenant_id"], player["brand_id"], player["player_id"])
    async with http.ws_connect(ws_url(api.base, token)) as sock:
        (hello,) = await receive_until(sock, lambda s: len(s) == 1)
        conn = hub.by_player[key][0]
        started = hello["session"]["started_ms"]
        assert conn.session_end_ms == started + 90 * 60_000
        assert conn.next_reality_ms < conn.session_end_ms  # a reality check every 60 minutes (default)
        # the process ticker, driven with a later clock instead of waiting
        hub.tick(conn.next_reality_ms)
        (check,) = await receive_until(sock, lambda s: len(s) == 1)
        assert check["type"] == "rg" and check["kind"] == "reality_check"
        hub.tick(conn.session_end_ms)
        (ended,) = await receive_until(sock, lambda s: len(s) == 1)
        assert ended["type"] == "rg" and ended["kind"] == "session_time_ended"
        msg = await sock.receive(timeout=10)
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == gws.CLOSE_SESSION_TIME
    await wait_for(lambda: key not in hub.by_player)


async def test_a_dead_peer_is_dropped_by_the_heartbeat(api: Api, make_gateway: Any) -> None:
    player, token = await api.funded("1.00")
    async with make_gateway(ws_heartbeat_s=1) as gw:
        hub: gws.Hub = gw.state.ws_hub
        host, port = gw.base_url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write((f"GET /v1/ws?provider=demo&token={token} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").encode())
        assert (await reader.readline()).startswith(b"HTTP/1.1 101")
        key = (player["tenant_id"], player["brand_id"], player["player_id"])
        await wait_for(lambda: key in hub.by_player)
        # this peer reads but never answers the server's pings
        await wait_for(lambda: key not in hub.by_player, within_s=10)
        writer.close()


def test_timers_are_a_heap_of_weak_references() -> None:
    """Pure logic of the process ticker: only due timers run; a closed socket's timers hold nothing."""
    import gc
    import weakref

    from core.settings import Settings
    from gateway.degradation import Degradation

    state: Any = type("State", (), {"settings": Settings(ws_reality_check_min=1), "degradation": Degradation()})()
    hub = gws.Hub(state)
    sess: Any = type("Sess", (), {"tenant_id": "t", "brand_id": "b", "player_id": "p", "provider_id": "demo",
                                  "started_ms": 1000})()
    pushed: list[Msg] = []

    class Recording(gws.Conn):
        __slots__ = ()

        def push(self, msg: Msg, *, live: bool = False) -> None:
            pushed.append(msg)

    kept, dropped = Recording(hub, None, sess, None), Recording(hub, None, sess, None)  # type: ignore[arg-type]
    hub.schedule(kept, 61_000, "reality")
    hub.schedule(dropped, 61_000, "reality")
    gone = weakref.ref(dropped)
    del dropped
    gc.collect()
    assert gone() is None  # the timer did not keep the closed socket alive
    hub.tick(60_999)
    assert pushed == []
    hub.tick(61_000)
    assert pushed == [{"type": "rg", "kind": "reality_check", "session_minutes": 1}]
    assert kept.next_reality_ms == 121_000 and len(hub._timers) == 1


async def test_a_process_without_sockets_drops_the_event_feed(api: Api, http: aiohttp.ClientSession,
                                                              make_gateway: Any,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ws_hub, "FEED_IDLE_S", 0.2)
    _, token = await api.funded("10.00")
    async with make_gateway() as gw:
        hub: gws.Hub = gw.state.ws_hub
        await asyncio.sleep(0.3)
        assert not hub.live.is_set()  # provider traffic alone costs this process no event decoding
        for bet in ("b-1", "b-2"):  # the feed comes back with the next socket
            async with http.ws_connect(ws_url(gw.base_url, token)) as sock:
                await receive_until(sock, lambda s: len(s) == 1)
                await asyncio.wait_for(hub.live.wait(), 15)
                assert (await api.bet(token, bet, "r-" + bet, "1.00"))[0] == 200
                seen = await receive_until(sock, lambda s: len(balances(s, api)) == 1)
                assert balances(seen, api) == [(900 if bet == "b-1" else 800, -100)]
            await wait_for(lambda: not hub.live.is_set())
            assert hub.cursor == 0
