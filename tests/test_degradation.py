"""Limits, shedding and managed degradation, against real servers and real writers."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from core.records import ProviderConfig
from core.settings import Settings
from gateway import embedded
from gateway.quota import RedisQuota
from ledger.migrate import migrate_all
from ledger.writer import run_writers
from tests.support import ADMIN_KEY, Api


async def test_burst_above_player_limit_gets_429_with_exact_retry_after(make_gateway: Any, http: Any) -> None:
    async with make_gateway(rl_player_per_s=2, rl_player_burst=3) as gw:
        api = Api(http, gw.base_url)
        _, token = await api.funded("10.00")
        for i in range(3):
            status, _ = await api.bet(token, f"b{i}", f"r{i}", "0.10")
            assert status == 200
        call = api.native.bet(token, api.ns + "b3", api.ns + "r3", "0.10", "EUR")
        async with http.post(api.base + call.path, data=call.body, headers=call.headers) as resp:
            body = await resp.json()
            assert resp.status == 429 and body["code"] == "rate_limited" and body["retryable"] is True
            assert 0 < body["retry_after_s"] <= 0.5  # one emission interval of 2/s at most
            assert resp.headers["Retry-After"] == "1"
        # wins are limited per provider and brand only, not per player
        status, _ = await api.win(token, "w0", "r0", "0.20", bet_transaction_id="b0")
        assert status == 200


async def test_redis_cluster_quota_limits_across_replicas(make_gateway: Any, http: Any) -> None:
    quota = {"redis_quota_enabled": True, "redis_quota_per_s": 1, "redis_quota_burst": 4}
    async with make_gateway(**quota) as one, make_gateway(**quota) as two:
        apis = [Api(http, one.base_url), Api(http, two.base_url)]
        _, token = await apis[0].funded("10.00")
        statuses = []
        for i in range(6):  # alternate replicas: they share one budget of 4 in Redis
            status, body = await apis[i % 2].bet(token, f"b{i}", f"r{i}", "0.01")
            statuses.append((status, body.get("code")))
        assert [s for s, _ in statuses].count(200) <= 4
        assert (429, "rate_limited") in statuses
        assert one.state.wallet.quota is not None and two.state.wallet.quota is not None
        assert one.state.wallet.quota.limited + two.state.wallet.quota.limited >= 1


async def test_redis_quota_fails_open_when_redis_is_down() -> None:
    import redis.asyncio as redis

    client = redis.Redis(host="127.0.0.1", port=embedded.free_port(), socket_connect_timeout=0.5)
    quota = RedisQuota(client, "x:", 1, 1)
    await quota.check("p", "b")  # no exception: play goes on
    await quota.check("p", "b")
    assert quota.fail_open == 2 and quota.limited == 0
    await client.aclose()


async def test_no_new_sessions_refuses_launches_not_play(make_gateway: Any, http: Any) -> None:
    async with make_gateway() as gw:
        api = Api(http, gw.base_url)
        player, token = await api.funded("10.00")
        status, body = await api.operator("PUT", "/v1/admin/degradation",
                                          {"scope": "provider:demo", "mode": "no_new_sessions", "reason": "test"},
                                          key=ADMIN_KEY)
        assert status == 200 and body["changed"] is True
        status, body = await api.operator("POST", "/v1/sessions", {**player, "provider_id": "demo"})
        assert status == 503 and body["error"]["code"] == "no_new_sessions"
        status, _ = await api.operator("POST", "/v1/sessions", {**player, "provider_id": "evolution"})
        assert status == 201  # another provider is unaffected
        status, _ = await api.bet(token, "b1", "r1", "1.00")
        assert status == 200  # the open session keeps playing

        await api.operator("PUT", "/v1/admin/degradation", {"scope": "global", "mode": "bets_paused"}, key=ADMIN_KEY)
        status, body = await api.bet(token, "b2", "r2", "1.00")
        assert status == 503 and body["code"] == "bets_paused"
        status, body = await api.win(token, "w1", "r1", "3.00", bet_transaction_id="b1")
        assert status == 200 and body["balance"] == "12.00"  # settlements still flow
        async with http.get(gw.base_url + "/readyz") as resp:
            ready = await resp.json()
            assert ready["degradation"]["global"] == "bets_paused"
        async with http.get(gw.base_url + "/metrics") as resp:
            assert 'gateway_degradation_mode{mode="bets_paused",scope="global"} 1.0' in await resp.text()
        for scope in ("global", "provider:demo"):
            await api.operator("PUT", "/v1/admin/degradation", {"scope": scope, "mode": "normal"}, key=ADMIN_KEY)
        status, _ = await api.operator("POST", "/v1/sessions", {**player, "provider_id": "demo"})
        assert status == 201


async def test_failing_provider_health_check_flips_its_mode_and_back(make_gateway: Any, http: Any) -> None:
    healthy = {"ok": True}

    async def health(request: web.Request) -> web.Response:
        return web.Response(status=200 if healthy["ok"] else 503)

    app = web.Application()
    app.router.add_get("/health", health)
    server = TestServer(app, host="127.0.0.1", port=embedded.free_port())
    await server.start_server()
    provider = ProviderConfig(id="flaky", protocol="native", secret="flaky-secret-123",
                              health_url=f"http://127.0.0.1:{server.port}/health")
    try:
        async with make_gateway([provider], health_poll_ms=100, health_fail_threshold=2,
                                health_ok_threshold=2) as gw:
            api = Api(http, gw.base_url)
            player = api.player()

            async def launch_status() -> int:
                status, _ = await api.operator("POST", "/v1/sessions", {**player, "provider_id": "flaky"})
                return status

            async def wait_for(expected: int) -> None:
                deadline = time.monotonic() + 10
                while (got := await launch_status()) != expected:
                    assert time.monotonic() < deadline, f"launch still answers {got}"
                    await asyncio.sleep(0.05)

            await wait_for(201)
            healthy["ok"] = False
            await wait_for(503)
            assert gw.state.degradation.mode_of("provider:flaky") == "no_new_sessions"
            assert await launch_status() == 503
            healthy["ok"] = True
            await wait_for(201)
            assert gw.state.degradation.mode_of("provider:flaky") == "normal"
    finally:
        await server.close()


@pytest.fixture
async def stalled_db(pg_server_dsn: str, settings: Settings) -> Any:
    suffix = uuid.uuid4().hex[:6]
    dsn = await embedded.create_database(pg_server_dsn, f"stall_{suffix}", exist_ok=False)
    own = settings.replace(pg_dsns=dsn, namespace=f"{settings.namespace}s{suffix}", shards=1)
    await migrate_all(own.shard_dsns())
    try:
        yield own
    finally:
        await embedded.drop_database(pg_server_dsn, f"stall_{suffix}")


@pytest.mark.slow
async def test_stalled_writer_sheds_bets_but_queues_wins(stalled_db: Settings, make_gateway: Any,
                                                         http: Any) -> None:
    s = stalled_db
    stop = asyncio.Event()
    writer = asyncio.create_task(run_writers(s, range(1), stop))
    async with make_gateway(pg_dsns=s.pg_dsns, namespace=s.namespace, shards=1, ledger_timeout_ms=300,
                            queue_target_ms=2, queue_interval_ms=40, degrade_persist_s=1, batch_max_commands=4,
                            instance_id=f"stall-{uuid.uuid4().hex[:6]}") as gw:
        api = Api(http, gw.base_url)
        player, token = await api.funded("100.00")
        stop.set()  # the writer stalls: nothing answers any more
        await writer

        codes: list[str] = []
        deadline = time.monotonic() + 8

        async def player_loop(n: int) -> None:
            i = 0
            while time.monotonic() < deadline and "overloaded" not in codes:
                _, body = await api.bet(token, f"b{n}-{i}", f"r{n}-{i}", "0.01")
                codes.append(body.get("code", "ok"))
                i += 1

        # steady traffic from more players than the in-flight window holds: a standing queue forms
        await asyncio.gather(*(player_loop(n) for n in range(40)))
        assert "overloaded" in codes, codes
        assert set(codes) <= {"overloaded", "ledger_timeout"}

        status, body = await api.win(token, "free-win", "free-round", "5.00", free_round=True, type="bonus")
        assert status == 503 and body["code"] == "ledger_timeout"  # accepted and queued, not shed

        async with http.get(gw.base_url + "/readyz") as resp:
            ready = await resp.json()
        assert any(q["dropped"] > 0 for q in ready["queues"])

        stop2 = asyncio.Event()
        writer = asyncio.create_task(run_writers(s, range(1), stop2))
        try:
            deadline = time.monotonic() + 20
            while True:  # the queued win lands without anyone sending it again
                status, body = await api.operator("GET", "/v1/wallet/balance", params={
                    "brand_id": "b1", "player_id": player["player_id"], "currency": "EUR"})
                pool = gw.state.pools[0]
                wins = await pool.fetchval("SELECT count(*) FROM transactions WHERE tx_id = $1", api.ns + "free-win")
                if wins == 1:
                    break
                assert time.monotonic() < deadline, body
                await asyncio.sleep(0.1)
            bets = await pool.fetchval("SELECT coalesce(sum(amount), 0) FROM transactions WHERE kind = 'bet' "
                                       "AND status = 'ok' AND player_id = $1", player["player_id"])
            assert body["balance"] == f"{(10_000 - bets + 500) / 100:.2f}"
            status, body = await api.win(token, "free-win", "free-round", "5.00", free_round=True, type="bonus")
            assert status == 200 and body["duplicate"] is True
        finally:
            stop2.set()
            await writer


async def test_a_providers_own_rate_limit(make_gateway: Any, http: Any) -> None:
    slow = ProviderConfig(id="slowstudio", protocol="native", secret="slow-studio-secret", rate_per_s=1, burst=2)
    async with make_gateway([slow]) as gw:
        api = Api(http, gw.base_url, provider="slowstudio", secret="slow-studio-secret")
        _, token = await api.funded("10.00")
        results = [await api.bet(token, f"b{i}", f"r{i}", "0.10") for i in range(3)]
        # the session's own calls (authenticate) count too: at most 2 in the burst, then 429
        assert results[-1][0] == 429 and results[-1][1]["code"] == "rate_limited"
        other = Api(http, gw.base_url)  # the demo provider keeps the global per-provider limit
        _, token2 = await other.funded("10.00")
        assert (await other.bet(token2, "b0", "r0", "0.10"))[0] == 200


async def test_ledger_lag_over_budget_stops_new_sessions_until_calm(make_gateway: Any, http: Any) -> None:
    from gateway.monitor import Monitor

    async with make_gateway(degrade_lag_budget_ms=50, degrade_persist_s=1) as gw:
        monitor = Monitor(gw.state)
        gw.state.ledger.lag_ewma_s = 0.2  # as after a run of 200 ms round trips
        monitor.check_pressure(100.0)
        assert gw.state.degradation.mode_of("global") == "normal"  # not yet persisted
        monitor.check_pressure(101.5)
        assert gw.state.degradation.mode_of("global") == "no_new_sessions"
        api = Api(http, gw.base_url)
        status, body = await api.operator("POST", "/v1/sessions", {**api.player(), "provider_id": "demo"})
        assert status == 503 and body["error"]["code"] == "no_new_sessions"
        gw.state.ledger.lag_ewma_s = 0.001
        monitor.check_pressure(102.0)
        monitor.check_pressure(103.5)
        assert gw.state.degradation.mode_of("global") == "normal"
