"""The ledger writer under faults, the hash chain, append-only tables and the event outbox."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
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

from core.commands import Command, Kind
from core.settings import Settings
from gateway import embedded
from gateway.ledger_client import LedgerClient
from ledger.migrate import migrate_all
from ledger.reconcile import reconcile
from ledger.sharding import connect, connect_writer
from ledger.writer import BatchApplier
from tests.support import Api, until_result


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
    conn = await connect_writer(s.shard_dsns()[shard], shard)
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
        assert all(r.applied for r in await asyncio.gather(*(until_result(client, c, deadline) for c in deposits)))
        bets = [command(Kind.BET, p, f"bet-{p}-{n}", 100) for n in range(25) for p in players]
        tasks = [asyncio.create_task(until_result(client, c, deadline)) for c in bets[:150]]
        await asyncio.sleep(0.05)
        writer.send_signal(signal.SIGKILL)  # no drain, no ack: whatever it committed stays unacked
        writer.wait()
        tasks += [asyncio.create_task(until_result(client, c, deadline)) for c in bets[150:]]
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
            assert 'ledger_writer_active{shard="1"} 1.0' in await resp.text()
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


INT64_MAX = 2**63 - 1


async def test_house_and_cash_accounts_never_overflow(own_db: Settings) -> None:
    """Near-int64 deposits and stakes of a few players must not make the brand's shared cash or house
    account refuse the money of everyone else on the shard."""
    dsn = own_db.shard_dsns()[0]
    near = INT64_MAX - 5
    async with applier_on(own_db, 0) as applier:
        # two whales in one batch: the cash account's batch delta alone leaves int64
        out = await applier.apply([command(Kind.DEPOSIT, "whale-1", "wd1", near, provider_id="operator"),
                                   command(Kind.DEPOSIT, "whale-2", "wd2", near, provider_id="operator")])
        assert [r.status.value for r in out.results] == ["ok", "ok"] and out.batch_seq > 0
        out = await applier.apply([command(Kind.DEPOSIT, "whale-3", "wd3", near, provider_id="operator")])
        assert out.results[0].applied, out.results[0]
        # an ordinary player of the same brand, currency and shard
        out = await applier.apply([command(Kind.DEPOSIT, "minnow", "md1", 10_000, provider_id="operator")])
        assert out.results[0].applied and out.results[0].balance == 10_000, out.results[0]
        # the whales stake everything (the house passes int64), then the minnow plays a round
        out = await applier.apply([command(Kind.BET, f"whale-{i}", f"wb{i}", near) for i in (1, 2, 3)])
        assert all(r.applied for r in out.results), out.results
        out = await applier.apply([command(Kind.BET, "minnow", "mb1", 500)])
        assert out.results[0].applied and out.results[0].balance == 9_500
        out = await applier.apply([command(Kind.WIN, "minnow", "mw1", 1_500, ref_tx_id="mb1", round_id="r-mb1")])
        assert out.results[0].applied and out.results[0].balance == 11_000
        # free-round wins near int64 for the whales push the house back below zero, far past int64
        out = await applier.apply([command(Kind.WIN, f"whale-{i}", f"ww{i}", near, free_round=True,
                                           credit_type="bonus", round_id=f"fr-{i}") for i in (1, 2, 3)])
        assert all(r.applied for r in out.results), out.results
        # a wallet stays an int64: a credit past it is refused by the rules, the rest of the batch applies
        out = await applier.apply([command(Kind.DEPOSIT, "whale-1", "wd1b", 10, provider_id="operator"),
                                   command(Kind.DEPOSIT, "minnow", "md2", 1_000, provider_id="operator")])
        assert out.batch_seq > 0  # one batch: the refusal did not fail it into one-by-one retries
        assert out.results[0].status.value == "bad_command" and "int64" in out.results[0].detail
        assert out.results[1].applied and out.results[1].balance == 12_000
        balances = {r["kind"]: int(r["balance"]) for r in await applier.conn.fetch(
            """SELECT a.kind, b.balance FROM accounts a JOIN balances b USING (account_id)
                WHERE a.kind <> 'player'""")}
        assert balances == {"cash": -(3 * near + 11_000), "house": 3 * near - 1_000 - 3 * near}
    reports = await reconcile({0: dsn})
    assert all(r.ok for r in reports), [r.problems for r in reports]


async def test_players_at_one_live_table_each_settle_the_shared_round(own_db: Settings) -> None:
    async with applier_on(own_db, 1) as applier:
        players = [f"seat-{i}" for i in range(3)]
        await applier.apply([command(Kind.DEPOSIT, p, f"d-{p}", 1_000, provider_id="operator") for p in players])
        bets = await applier.apply([command(Kind.BET, p, f"debit-{p}", 100, round_id="table-round-1")
                                    for p in players])
        assert all(r.applied for r in bets.results), bets.results
        # wins arrive in a later batch, so the rounds are loaded from the database, one per player
        wins = await applier.apply([command(Kind.WIN, p, f"credit-{p}", 300, ref_tx_id=f"debit-{p}",
                                            round_id="table-round-1", single_settlement=True) for p in players])
        assert [(r.status.value, r.balance) for r in wins.results] == [("ok", 1_200)] * 3
        ended = await applier.apply([command(Kind.END_ROUND, players[0], "end-0", round_id="table-round-1")])
        assert ended.results[0].applied
        late = await applier.apply([command(Kind.BET, players[0], "late-0", 1, round_id="table-round-1"),
                                    command(Kind.BET, players[1], "late-1", 1, round_id="table-round-1")])
        assert [r.status.value for r in late.results] == ["round_closed", "ok"]
        rows = await applier.conn.fetch("SELECT player_id, bet_count, win_total, closed FROM rounds "
                                        "WHERE round_id = 'table-round-1' ORDER BY player_id")
        assert [tuple(r) for r in rows] == [("seat-0", 1, 300, True), ("seat-1", 2, 300, False),
                                            ("seat-2", 1, 300, False)]
    assert all(r.ok for r in await reconcile({1: own_db.shard_dsns()[1]}))


async def test_migration_003_upgrades_a_shard_holding_data(pg_server_dsn: str, settings: Settings) -> None:
    """A shard migrated to 002 and written by the old functions keeps its rows, chain and reconcile."""
    from ledger import chain
    from ledger.migrate import migrate_shard, migrations

    suffix = uuid.uuid4().hex[:6]
    dsn = await embedded.create_database(pg_server_dsn, f"legacy_{suffix}", exist_ok=False)
    try:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute('CREATE SCHEMA "shard_0"; SET search_path TO "shard_0"')
            await conn.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL, "
                               "applied_at timestamptz NOT NULL DEFAULT now())")
            for version, name, sql in migrations():
                if version <= 2:
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO schema_migrations VALUES ($1, $2)", version, name)
            # the old writer: a deposit, a bet on round "old-r" and a currency-less max_stake of 5.00
            await conn.fetchval("SELECT gw_load_batch($1::jsonb, current_date, 1, 0)", orjson.dumps(
                {"acc": [["player", "b1", "old", "EUR", "t1"], ["cash", "b1", "", "EUR", "t1"],
                         ["house", "b1", "", "EUR", "t1"]], "tx": [], "bet": [], "rnd": [], "rg": []}).decode())
            ids = {r["kind"]: r["account_id"] for r in await conn.fetch("SELECT kind, account_id FROM accounts")}
            tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            txs = [[1024, "b1", "operator", "od1", "deposit", "ok", "h1", "t1", "MGA", "old", "EUR", "cash:od1",
                    None, 1_000, "win", 1, tp, "c1"],
                   [2048, "b1", "sim", "ob1", "bet", "ok", "h2", "t1", "MGA", "old", "EUR", "old-r", None, 100,
                    "win", 1, tp, "c2"]]
            entries = [[1024, ids["cash"], -1_000], [1024, ids["player"], 1_000],
                       [2048, ids["player"], -100], [2048, ids["house"], 100]]
            digest = chain.batch_digest((chain.digest_fields(t) for t in txs), entries)
            doc = {"t": txs, "e": entries,
                   "d": [[ids["cash"], -1_000], [ids["player"], 900], [ids["house"], 100]],
                   "b": [["b1", "sim", "ob1", "old-r", "old", "EUR", 100, False, "open", 2048]],
                   "r": [["b1", "sim", "old-r", "old", "EUR", 1, 1, 1, 100, 0, False]], "s": [],
                   "l": [["b1", "old", "max_stake", 500, None, False, None]],
                   "u": [["b1", "old", "EUR", dt.date.today().isoformat(), 100, 0]], "o": []}
            await conn.execute("SELECT gw_write_batch($1, $2, $3, $4, $5::jsonb)", 1, chain.GENESIS, digest,
                               chain.chain_hash(chain.GENESIS, 1, digest), orjson.dumps(doc).decode())
        finally:
            await conn.close()
        assert await migrate_shard(dsn, 0) == [3]
        assert all(r.ok for r in await reconcile({0: dsn}))
        s = settings.replace(pg_dsns=dsn, shards=1)
        async with applier_on(s, 0) as applier:
            out = await applier.apply([
                command(Kind.WIN, "old", "ow1", 250, ref_tx_id="ob1", round_id="old-r"),  # the old round's bet
                command(Kind.BET, "old", "ob2", 501, round_id="new-r"),  # the legacy limit still holds
                command(Kind.DEPOSIT, "newcomer", "nd1", 10, provider_id="operator"),
                command(Kind.BET, "newcomer", "nb1", 1, round_id="old-r"),  # another player, same round id
            ])
            assert [(r.status.value, r.balance) for r in out.results] == [
                ("ok", 1_150), ("stake_limit", 1_150), ("ok", 10), ("ok", 9)]
            assert await applier.conn.fetchval(
                "SELECT win_total FROM rounds WHERE round_id = 'old-r' AND player_id = 'old'") == 250
            assert await applier.conn.fetchval("SELECT currency FROM rg_limits WHERE player_id = 'old'") == ""
        assert all(r.ok for r in await reconcile({0: dsn}))
    finally:
        await embedded.drop_database(pg_server_dsn, f"legacy_{suffix}")
