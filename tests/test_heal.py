"""The ledger heals by itself: NATS restarted (with or without its store), PostgreSQL restarted, an
unexpected error in a writer, a stalled shard reported by /readyz until it moves again."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import shutil
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest
from nats.aio.client import Client as NATS

from core.commands import Kind, Status
from core.settings import Settings
from gateway import embedded
from gateway.ledger_client import LedgerClient
from ledger import transport
from ledger.migrate import migrate_all
from ledger.puller import Puller
from ledger.sharding import connect
from ledger.tasks import Supervisor
from ledger.writer import BatchApplier, run_writers
from tests.conftest import running_gateway
from tests.pgproxy import PgProxy
from tests.support import Api, until_result
from tests.test_ledger import applier_on, command


@pytest.fixture
async def heal_db(pg_server_dsn: str, settings: Settings) -> AsyncIterator[Settings]:
    """A database, NATS namespace and instance of this test's own, on the session servers."""
    suffix = uuid.uuid4().hex[:6]
    dsn = await embedded.create_database(pg_server_dsn, f"heal_{suffix}", exist_ok=False)
    own = settings.replace(pg_dsns=dsn, namespace=f"{settings.namespace}h{suffix}", shards=2,
                           writer_ack_wait_s=1, ledger_timeout_ms=1000, ready_max_pending_age_s=1,
                           instance_id=f"heal-{suffix}", writer_http_port=embedded.free_port())
    await migrate_all(own.shard_dsns())
    try:
        yield own
    finally:
        await embedded.drop_database(pg_server_dsn, f"heal_{suffix}")


@dataclasses.dataclass
class Writers:
    settings: Settings
    stop: asyncio.Event
    task: asyncio.Task[None]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.writer_http_port}"


async def start_writers(s: Settings) -> Writers:
    stop = asyncio.Event()
    return Writers(s, stop, asyncio.create_task(run_writers(s, range(s.shards), stop)))


async def stop_writers(w: Writers) -> None:
    w.stop.set()
    await asyncio.wait_for(w.task, 30)


@contextlib.asynccontextmanager
async def writers_and_client(s: Settings) -> AsyncIterator[tuple[Writers, NATS, LedgerClient]]:
    """Writers for every shard of ``s`` and a gateway-side ledger client in front of them."""
    writers = await start_writers(s)
    nc = await nats.connect(s.nats_url)
    client = LedgerClient(s, nc)
    await client.start()
    try:
        yield writers, nc, client
    finally:
        await client.close()
        await nc.drain()
        await stop_writers(writers)


async def until(what: str, check: Callable[[], Awaitable[bool]], within_s: float = 20.0) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` after ``within_s``."""
    deadline = time.monotonic() + within_s
    while not await check():
        assert time.monotonic() < deadline, f"not reached within {within_s} s: {what}"
        await asyncio.sleep(0.1)


async def readyz(http: Any, base_url: str) -> tuple[int, dict[str, Any]]:
    try:
        async with http.get(base_url + "/readyz") as resp:
            return resp.status, await resp.json()
    except OSError as exc:
        return 0, {"error": str(exc)}


async def until_ready(http: Any, *urls: str) -> None:
    for url in urls:
        async def ok(url: str = url) -> bool:
            return (await readyz(http, url))[0] == 200
        await until(f"{url}/readyz is 200", ok)


async def settle(call: Callable[[], Awaitable[tuple[int, dict[str, Any]]]], deadline: float) -> dict[str, Any]:
    """What a provider does with a settlement: send the same transaction again until it is answered."""
    while True:
        status, body = await call()
        if status == 200:
            return body
        assert body.get("retryable"), body
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.2)




async def count_rows(s: Settings, tx_ids: list[str]) -> dict[str, int]:
    """How many ledger transactions each provider transaction id produced, over all shards."""
    counts = dict.fromkeys(tx_ids, 0)
    for shard, dsn in s.shard_dsns().items():
        conn = await connect(dsn, shard)
        try:
            for r in await conn.fetch("SELECT tx_id, count(*) AS n FROM transactions WHERE tx_id = ANY($1) "
                                      "GROUP BY tx_id", tx_ids):
                counts[r["tx_id"]] += r["n"]
        finally:
            await conn.close()
    return counts


# --- NATS ------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("lose_store", [False, True], ids=["restart", "lost-store"])
async def test_ledger_heals_after_a_nats_restart(heal_db: Settings, tmp_path: Path, http: Any,
                                                 lose_store: bool) -> None:
    server = embedded.start_nats(tmp_path)
    s = heal_db.replace(nats_url=server.url)
    writers = await start_writers(s)
    try:
        async with running_gateway(s) as gw:
            api = Api(http, gw.base_url)
            players = [await api.funded("100.00") for _ in range(6)]
            for i, (_, token) in enumerate(players):
                status, body = await api.bet(token, f"b{i}", f"r{i}", "1.00")
                assert status == 200, body
            await until_ready(http, gw.base_url, writers.url)

            server.process.send_signal(signal.SIGKILL)  # no goodbye: pull requests die with it
            await asyncio.to_thread(server.process.wait)
            if lose_store:
                shutil.rmtree(tmp_path / "nats" / "jetstream", ignore_errors=True)
            deadline = time.monotonic() + 40
            # settlements arriving while NATS is down: the provider keeps retrying the same transaction
            wins = [asyncio.create_task(settle(functools.partial(api.win, token, f"w{i}", f"r{i}", "2.50"), deadline))
                    for i, (_, token) in enumerate(players)]
            await asyncio.sleep(1.0)
            assert not any(w.done() for w in wins)
            server = await asyncio.to_thread(embedded.start_nats, tmp_path, port=server.port)

            answers = await asyncio.wait_for(asyncio.gather(*wins), 45)
            assert all(a["balance"] == "101.50" for a in answers), answers
            for i, (_, token) in enumerate(players):  # and new rounds play as before
                body = await settle(functools.partial(api.bet, token, f"b2-{i}", f"r2-{i}", "0.50"), deadline)
                assert body["balance"] == "101.00"
            counts = await count_rows(s, [api.ns + f"{k}{i}" for k in ("b", "w", "b2-") for i in range(6)])
            assert set(counts.values()) == {1}, counts  # every settlement applied exactly once
            for player, _ in players:
                assert await api.balance(player) == "101.00"
            await until_ready(http, gw.base_url, writers.url)
    finally:
        await stop_writers(writers)
        server.stop()


async def test_readyz_names_a_stalled_shard_until_it_moves(heal_db: Settings, http: Any) -> None:
    s = heal_db
    writers = await start_writers(s)
    try:
        async with running_gateway(s) as gw:
            api = Api(http, gw.base_url)
            player, token = await api.funded("10.00")
            shard = gw.state.ledger.shard_of(player["player_id"])

            def stuck_win() -> Awaitable[tuple[int, dict[str, Any]]]:
                return api.win(token, "w-stuck", "r-stuck", "1.00", free_round=True, type="bonus")

            await until_ready(http, gw.base_url, writers.url)
            # the shard's database hangs (a lock held): its writer stays connected and active, but stuck
            conn = await connect(s.shard_dsns()[shard], shard)
            lock = conn.transaction()
            await lock.start()
            await conn.execute("LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE")
            try:
                status, body = await stuck_win()
                assert status == 503 and body["retryable"], body

                async def gateway_unready() -> bool:
                    status, body = await readyz(http, gw.base_url)
                    return status == 503 and f"shard {shard}" in body["checks"]["ledger_pending"]

                async def writer_unready() -> bool:
                    status, body = await readyz(http, writers.url)
                    return status == 503 and str(shard) in body.get("stalled", {})

                await until("gateway /readyz names the stalled shard", gateway_unready, 10)
                await until("writer /readyz names the stalled shard", writer_unready, 10)
                status, body = await readyz(http, writers.url)
                assert body["shards"] == {"0": "active", "1": "active"} and body["nats"] is True
            finally:
                await lock.rollback()
                await conn.close()
            await until_ready(http, gw.base_url, writers.url)
            body = await settle(stuck_win, time.monotonic() + 10)
            assert body["balance"] == "11.00"
            assert (await count_rows(s, [api.ns + "w-stuck"])) == {api.ns + "w-stuck": 1}
    finally:
        await stop_writers(writers)


async def test_a_pull_request_whose_end_was_never_heard_is_renewed(heal_db: Settings) -> None:
    s = heal_db
    nc = await nats.connect(s.nats_url)
    js = nc.jetstream()
    await transport.ensure_streams(js, s)
    await transport.ensure_consumer(js, s, 0)
    puller = Puller(nc, transport.stream_name(s, s.stream_name), transport.durable_name(s, 0), 8)
    try:
        await puller.start()
        assert await puller.next(0.05) == []  # a request is outstanding now, expiring in 1 s
        await puller.stop()  # ... and its "408 expired" will reach nobody
        await asyncio.sleep(1.3)
        await puller.start()
        await js.publish(transport.cmd_subject(s, 0), b"[]")
        deadline = time.monotonic() + 6
        msgs: list[Any] = []
        while not msgs:
            assert time.monotonic() < deadline, "the silent request was never replaced"
            msgs = await puller.next(0.5)
        assert msgs[0].data == b"[]" and puller.lost_requests == 1
        await msgs[0].ack()
    finally:
        await puller.stop()
        await nc.drain()


async def test_a_writer_recreates_its_deleted_consumer(heal_db: Settings) -> None:
    s = heal_db
    async with writers_and_client(s) as (_writers, nc, client):
        player = next(f"gone-{i}" for i in range(100) if client.shard_of(f"gone-{i}") == 0)
        deadline = time.monotonic() + 20
        first = await until_result(client, command(Kind.DEPOSIT, player, "dep-1", 100, provider_id="operator"),
                                   deadline)
        assert first.applied
        await nc.jetstream().delete_consumer(transport.stream_name(s, s.stream_name), transport.durable_name(s, 0))
        again = await until_result(client, command(Kind.DEPOSIT, player, "dep-2", 100, provider_id="operator"),
                                   deadline)
        assert again.applied and again.balance == 200


# --- PostgreSQL ------------------------------------------------------------------------------------------


def metric(text: str, name: str, shard: int) -> float:
    prefix = f'{name}{{shard="{shard}"}} '
    return float(next(line[len(prefix):] for line in text.splitlines() if line.startswith(prefix)))


@pytest.mark.slow
async def test_writers_heal_after_a_postgres_restart(tmp_path: Path, settings: Settings, http: Any) -> None:
    pg = await asyncio.to_thread(embedded.start_postgres, tmp_path, fast=True)
    proxy = PgProxy(pg.port)
    await proxy.start()
    suffix = uuid.uuid4().hex[:6]
    s = settings.replace(pg_dsns=f"postgresql://postgres@127.0.0.1:{proxy.port}/postgres", shards=2,
                         namespace=f"{settings.namespace}p{suffix}", instance_id=f"pg-{suffix}",
                         writer_ack_wait_s=1, ledger_timeout_ms=1000, writer_http_port=embedded.free_port())
    await migrate_all(s.shard_dsns())
    try:
        async with writers_and_client(s) as (writers, _nc, client):
            deadline = time.monotonic() + 60
            players = [f"pg-{i}" for i in range(6)]
            deposits = [command(Kind.DEPOSIT, p, f"dep-{p}", 10_000, provider_id="operator") for p in players]
            assert all(r.applied for r in await asyncio.gather(*(until_result(client, c, deadline) for c in deposits)))

            # PostgreSQL dies (immediate shutdown: crash recovery at the next start) and comes back; for a
            # while every new connection hears "the database system is starting up". The test server runs
            # without synchronous commit, so a checkpoint first keeps what was committed
            admin = await asyncpg.connect(pg.url)
            await admin.execute("CHECKPOINT")
            await admin.close()
            proxy.starting_up = True
            pg.process.send_signal(signal.SIGQUIT)
            await asyncio.to_thread(pg.process.wait)
            bets = [command(Kind.BET, p, f"bet-{p}-{n}", 100) for n in range(3) for p in players]
            tasks = [asyncio.create_task(until_result(client, c, deadline)) for c in bets]
            pg = await asyncio.to_thread(embedded.start_postgres, tmp_path, fast=True, port=pg.port)
            refused = proxy.refused
            await until("writers met the start-up phase", lambda: _grew(proxy, refused + 4))
            proxy.starting_up = False

            results = await asyncio.wait_for(asyncio.gather(*tasks), 60)
            assert all(r.status is Status.OK for r in results), results
            async with http.get(f"http://127.0.0.1:{s.writer_http_port}/metrics") as resp:
                text = await resp.text()
            for shard in range(s.shards):  # they failed and carried on: no task died or was restarted
                assert metric(text, "ledger_writer_failures_total", shard) > 0
                assert metric(text, "ledger_writer_restarts_total", shard) == 0
                assert metric(text, "ledger_writer_active", shard) == 1
            assert not writers.task.done()
            counts = await count_rows(s, [c.tx_id for c in bets + deposits])
            assert set(counts.values()) == {1}, counts
    finally:
        await proxy.close()
        pg.stop()


async def _grew(proxy: PgProxy, target: int) -> bool:
    return proxy.refused >= target


# --- unexpected errors, refusals -------------------------------------------------------------------------


async def test_writer_logs_an_unexpected_error_and_carries_on(heal_db: Settings, monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    original = BatchApplier.apply
    failed: list[int] = []

    async def flaky(self: BatchApplier, cmds: Any) -> Any:
        if not failed:
            failed.append(len(cmds))
            raise RuntimeError("injected fault")
        return await original(self, cmds)

    monkeypatch.setattr(BatchApplier, "apply", flaky)
    s = heal_db.replace(ledger_timeout_ms=3000)
    async with writers_and_client(s) as (writers, _nc, client):
        with caplog.at_level(logging.ERROR, logger="ledger.writer"):
            cmd = command(Kind.DEPOSIT, "flaky", "dep-flaky", 700, provider_id="operator")
            result = await until_result(client, cmd, time.monotonic() + 20)
        assert failed and result.applied and result.balance == 700
        logged = [r for r in caplog.records if r.name == "ledger.writer" and r.exc_info]
        assert any(isinstance(r.exc_info[1], RuntimeError) for r in logged if r.exc_info), caplog.text
        assert not writers.task.done()
        assert (await count_rows(s, ["dep-flaky"])) == {"dep-flaky": 1}


async def test_a_gateway_pump_logs_an_unexpected_error_and_carries_on(
        heal_db: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    original = LedgerClient._to_batcher
    failed: list[int] = []

    def flaky(self: LedgerClient, shard: int, *args: Any) -> None:
        if not failed:
            failed.append(shard)
            raise RuntimeError("injected pump fault")
        original(self, shard, *args)

    monkeypatch.setattr(LedgerClient, "_to_batcher", flaky)
    async with writers_and_client(heal_db) as (_writers, _nc, client):
        with caplog.at_level(logging.ERROR, logger="gateway.ledger_client"):
            cmd = command(Kind.DEPOSIT, "pumped", "dep-pumped", 900, provider_id="operator")
            result = await until_result(client, cmd, time.monotonic() + 20)
        assert failed and result.applied and result.balance == 900 and client.pump_failures == 1
        assert any(r.exc_info and isinstance(r.exc_info[1], RuntimeError) for r in caplog.records), caplog.text


async def test_a_supervised_task_that_ends_is_logged_as_a_crash_and_restarted(
        caplog: pytest.LogCaptureFixture) -> None:
    stop = asyncio.Event()
    runs: list[int] = []

    async def loop() -> None:
        runs.append(1)
        if len(runs) == 1:
            raise asyncio.CancelledError  # ended from outside: not a way any loop should end
        await stop.wait()

    supervisor = Supervisor({"writer-0": loop})
    supervisor.start()
    watcher = asyncio.create_task(supervisor.run_until(stop))
    with caplog.at_level(logging.CRITICAL, logger="ledger.tasks"):
        await until("the task was restarted", lambda: _at_least(runs, 2), 5)
    assert supervisor.restarts == {"writer-0": 1} and supervisor.alive() == {"writer-0": True}
    assert any("writer-0 ended unexpectedly" in r.getMessage() for r in caplog.records), caplog.text
    stop.set()
    await asyncio.wait_for(watcher, 5)
    await supervisor.join()


async def _at_least(items: list[int], n: int) -> bool:
    return len(items) >= n


async def test_a_command_the_database_refuses_reports_the_real_balance(heal_db: Settings) -> None:
    async with applier_on(heal_db, 0) as applier:
        conn = applier.conn
        await applier.apply([command(Kind.DEPOSIT, "erin", "d1", 5000, provider_id="operator")])
        # a database-level refusal the rules engine cannot foresee (as a constraint or trigger would)
        await conn.execute("""CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
                              BEGIN IF NEW.tx_id = 'poison' THEN RAISE EXCEPTION 'poisoned'; END IF;
                              RETURN NEW; END $$""")
        await conn.execute("CREATE TRIGGER refuse_poison BEFORE INSERT ON transactions "
                           "FOR EACH ROW EXECUTE FUNCTION refuse_poison()")
        out = await applier.apply([command(Kind.BET, "erin", "ok", 200), command(Kind.BET, "erin", "poison", 300)])
        fine, poisoned = out.results
        assert poisoned.status is Status.BAD_COMMAND and poisoned.detail == "refused by the ledger database"
        assert poisoned.balance == 4800 and poisoned.currency == "EUR"  # the real balance, after the other bet
        assert fine.applied and fine.balance == 4800
