"""The ledger writer under faults, the hash chain, append-only tables and the event outbox."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import nats
import orjson
import pytest

from gateway import embedded
from gateway.errors import Retryable
from gateway.ledger_client import LedgerClient
from gateway.settings import Settings
from ledger.commands import Command, Kind, Result
from ledger.migrate import migrate_all
from ledger.reconcile import reconcile
from ledger.sharding import connect
from ledger.writer import BatchApplier
from tests.support import Api


def command(kind: Kind, player: str, tx: str, amount: int = 0, **kw: Any) -> Command:
    base: dict[str, Any] = dict(
        cmd_id=uuid.uuid4().hex, kind=kind, tenant_id="t1", brand_id="b1", license="MGA", player_id=player,
        currency="EUR", provider_id="sim", tx_id=tx, round_id=kw.pop("round_id", f"r-{tx}"),
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", amount=amount)
    base.update(kw)
    return Command(**base)


@contextlib.asynccontextmanager
async def applier_on(s: Settings, shard: int) -> AsyncIterator[BatchApplier]:
    """A batch applier on its own connection to one shard (the writer's core, without JetStream)."""
    conn = await connect(s.shard_dsns()[shard], shard)
    try:
        yield BatchApplier(conn, shard, s)
    finally:
        await conn.close()


@pytest.fixture
async def own_db(pg_server_dsn: str, settings: Settings) -> AsyncIterator[Settings]:
    """A database and NATS namespace of this test's own (its writers must not touch the shared ones)."""
    suffix = uuid.uuid4().hex[:6]
    dsn = await embedded.create_database(pg_server_dsn, f"ledger_{suffix}", exist_ok=False)
    own = settings.replace(pg_dsns=dsn, namespace=f"{settings.namespace}{suffix}", shards=2,
                           writer_ack_wait_s=1, ledger_timeout_ms=1500, instance_id=f"t-{suffix}")
    await migrate_all(own.shard_dsns())
    try:
        yield own
    finally:
        await embedded.drop_database(pg_server_dsn, f"ledger_{suffix}")


def _start_writer(s: Settings) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(s.env())
    env["GATEWAY_LOG_LEVEL"] = "WARNING"
    return subprocess.Popen([sys.executable, "-m", "gateway", "ledger", "--shards", "all"], env=env)


async def _until_result(client: LedgerClient, cmd: Command, deadline: float) -> Result:
    """What a provider does: retry the same transaction (a new attempt id) until it gets an answer."""
    attempt = cmd
    while True:
        try:
            return await client.submit(attempt)
        except Retryable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
            attempt = dataclasses.replace(cmd, cmd_id=uuid.uuid4().hex)


@pytest.mark.slow
async def test_writer_killed_mid_stream_loses_and_doubles_nothing(own_db: Settings) -> None:
    writer = _start_writer(own_db)
    nc = await nats.connect(own_db.nats_url)
    client = LedgerClient(own_db, nc)
    await client.start()
    deadline = time.monotonic() + 90
    players = [f"kill-{i}" for i in range(12)]
    try:
        deposits = [command(Kind.DEPOSIT, p, f"dep-{p}", 100_000, provider_id="operator") for p in players]
        assert all(r.applied for r in await asyncio.gather(*(_until_result(client, c, deadline) for c in deposits)))
        bets = [command(Kind.BET, p, f"bet-{p}-{n}", 100) for n in range(25) for p in players]
        tasks = [asyncio.create_task(_until_result(client, c, deadline)) for c in bets[:150]]
        await asyncio.sleep(0.05)
        writer.send_signal(signal.SIGKILL)  # no drain, no ack: whatever it committed stays unacked
        writer.wait()
        tasks += [asyncio.create_task(_until_result(client, c, deadline)) for c in bets[150:]]
        await asyncio.sleep(0.5)
        writer = _start_writer(own_db)
        results = await asyncio.gather(*tasks)
        assert all(r.status.value == "ok" for r in results)
    finally:
        await client.close()
        await nc.drain()
        writer.send_signal(signal.SIGTERM)
        writer.wait(30)
    dsns = own_db.shard_dsns()
    total = 0
    for shard in range(own_db.shards):
        conn = await connect(dsns[shard], shard)
        try:
            rows = await conn.fetch(
                """SELECT a.player_id, b.balance FROM accounts a JOIN balances b USING (account_id)
                    WHERE a.kind = 'player'""")
            for r in rows:
                assert r["balance"] == 100_000 - 25 * 100, r
            total += await conn.fetchval("SELECT count(*) FROM transactions WHERE kind = 'bet'")
        finally:
            await conn.close()
    assert total == len(bets)
    reports = await reconcile(dsns)
    assert all(r.ok for r in reports), [r.problems for r in reports]


async def test_hash_chain_detects_a_tampered_row(own_db: Settings) -> None:
    dsn = own_db.shard_dsns()[0]
    async with applier_on(own_db, 0) as applier:
        conn = applier.conn
        await applier.apply([command(Kind.DEPOSIT, "alice", "d1", 5000, provider_id="operator")])
        await applier.apply([command(Kind.BET, "alice", "b1", 700), command(Kind.BET, "alice", "b2", 300)])
        await applier.apply([command(Kind.WIN, "alice", "w1", 900, ref_tx_id="b1", round_id="r-b1")])
        assert (await reconcile({0: dsn}))[0].ok
        # even with the append-only trigger switched off, an edit that keeps every sum balanced is caught
        await conn.execute("ALTER TABLE transactions DISABLE TRIGGER transactions_append_only")
        await conn.execute("UPDATE transactions SET player_id = 'mallory' WHERE tx_id = 'b2'")
        await conn.execute("ALTER TABLE transactions ENABLE TRIGGER transactions_append_only")
        report = (await reconcile({0: dsn}))[0]
        assert not report.ok
        assert any("batch 2" in p and "tampered" in p for p in report.problems), report.problems
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(own_db.replace(shards=1).env())
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "reconcile", env=env,
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode == 1 and b"tampered" in out


async def test_reconcile_catches_a_balance_edit(own_db: Settings) -> None:
    dsn = own_db.shard_dsns()[1]
    async with applier_on(own_db, 1) as applier:
        conn = applier.conn
        await applier.apply([command(Kind.DEPOSIT, "bob", "d1", 5000, provider_id="operator")])
        await conn.execute("UPDATE balances SET balance = balance + 100 WHERE is_player")
        report = (await reconcile({1: dsn}))[0]
        assert any("entries sum to" in p for p in report.problems), report.problems


async def test_entries_and_transactions_are_append_only(own_db: Settings) -> None:
    async with applier_on(own_db, 0) as applier:
        conn = applier.conn
        await applier.apply([command(Kind.DEPOSIT, "carol", "d1", 5000, provider_id="operator")])
        for sql in ("UPDATE entries SET amount = 1", "DELETE FROM entries", "TRUNCATE entries",
                    "UPDATE transactions SET amount = 1", "DELETE FROM batches"):
            with pytest.raises(asyncpg.PostgresError, match="append-only"):
                await conn.execute(sql)
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE balances SET balance = -1 WHERE is_player")


async def test_entries_balance_per_transaction_and_house_updated_once_per_batch(own_db: Settings) -> None:
    async with applier_on(own_db, 0) as applier:
        conn = applier.conn
        await applier.apply([command(Kind.DEPOSIT, f"h{i}", f"d{i}", 1000, provider_id="operator")
                             for i in range(10)])
        out = await applier.apply([command(Kind.BET, f"h{i}", f"b{i}", 100) for i in range(10)])
        assert all(r.applied for r in out.results)
        assert await conn.fetchval("SELECT count(*) FROM entries WHERE batch_seq = $1", out.batch_seq) == 20
        house = await conn.fetchval(
            "SELECT b.balance FROM accounts a JOIN balances b USING (account_id) WHERE a.kind = 'house'")
        assert house == 1000
        assert await conn.fetchval(
            "SELECT count(*) FROM (SELECT ledger_tx FROM entries GROUP BY ledger_tx HAVING sum(amount) <> 0) x") == 0


async def test_money_movements_are_streamed_as_events(api: Api, gateway: Any) -> None:
    state = gateway.state
    _, token = await api.funded("10.00", brand="events-brand")
    status, _ = await api.bet(token, "ev-bet", "ev-round", "2.00")
    assert status == 200
    js = state.nc.jetstream()
    subject = f"{state.settings.namespace}.events.t1.events-brand.>"
    sub = await js.pull_subscribe(subject, stream=f"{state.settings.namespace}_EVENTS")
    seen: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not {"bet.placed", "wallet.debited"} <= {e["type"] for e in seen.values()}:
        try:
            msgs = await sub.fetch(50, timeout=1)
        except nats.errors.TimeoutError:
            continue
        for m in msgs:
            event = orjson.loads(m.data)
            seen[event["id"]] = event
            assert m.headers and m.headers.get("Nats-Msg-Id") == event["id"]
            await m.ack()
    bets = [e for e in seen.values() if e["type"] == "bet.placed" and e["tx_id"] == api.ns + "ev-bet"]
    assert len(bets) == 1
    assert bets[0]["amount"] == 200 and bets[0]["balance"] == 800 and bets[0]["v"] == 1
    assert bets[0]["license"] == "MGA" and bets[0]["traceparent"].startswith("00-")


async def test_writer_process_serves_health_and_metrics(own_db: Settings, http: Any) -> None:
    from ledger.writer import run_writers

    s = own_db.replace(writer_http_port=embedded.free_port())
    stop = asyncio.Event()
    task = asyncio.create_task(run_writers(s, range(s.shards), stop))
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                async with http.get(f"http://127.0.0.1:{s.writer_http_port}/readyz") as resp:
                    body = await resp.json()
                    if resp.status == 200:
                        break
            except OSError:
                body = None
            assert time.monotonic() < deadline, body
            await asyncio.sleep(0.1)
        assert body["shards"] == {"0": "active", "1": "active"}
        async with http.get(f"http://127.0.0.1:{s.writer_http_port}/metrics") as resp:
            assert 'ledger_writer_active{shard="1"} 1' in await resp.text()
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_writer_recovers_when_the_chain_head_moved(own_db: Settings) -> None:
    dsn = own_db.shard_dsns()[0]
    a, b = await connect(dsn, 0), await connect(dsn, 0)
    try:
        first, second = BatchApplier(a, 0, own_db), BatchApplier(b, 0, own_db)
        await first.apply([command(Kind.DEPOSIT, "dan", "d1", 100, provider_id="operator")])
        await second.apply([command(Kind.DEPOSIT, "dan", "d2", 100, provider_id="operator")])
        out = await first.apply([command(Kind.DEPOSIT, "dan", "d3", 100, provider_id="operator")])
        assert out.results[0].applied and out.results[0].balance == 300
        assert (await reconcile({0: dsn}))[0].ok
    finally:
        await a.close()
        await b.close()
