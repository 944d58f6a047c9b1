"""The shard writer's in-memory hot state: warm batches skip the load, and nothing survives an error."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from core.commands import Kind, Status
from core.settings import Settings
from ledger import store
from ledger.reconcile import reconcile
from ledger.sharding import connect, connect_writer
from ledger.writer import _CONNECTION_ERRORS, BatchApplier
from tests.test_ledger import applier_on, command, own_db  # noqa: F401  (fixture)


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[store.BatchKeys]:
    """Every load the writer makes, with the keys it asked for (the real load still runs)."""
    seen: list[store.BatchKeys] = []
    real = store.load_into

    async def counting(conn: Any, st: Any, keys: store.BatchKeys, *args: Any) -> list[int]:
        seen.append(keys)
        return await real(conn, st, keys, *args)

    monkeypatch.setattr(store, "load_into", counting)
    return seen


async def test_a_warm_batch_loads_nothing_and_a_miss_loads_only_its_keys(
        own_db: Settings, loads: list[store.BatchKeys]) -> None:  # noqa: F811
    dsn = own_db.shard_dsns()[0]
    async with applier_on(own_db, 0) as applier:
        await applier.apply([command(Kind.DEPOSIT, "ann", "d1", 5000, provider_id="operator")])
        await applier.apply([command(Kind.BET, "ann", "b1", 100, round_id="r1")])
        loads.clear()
        # the same player's next round: its only unknown keys are its own new ones (transaction ids, the
        # bet and its round), presumed absent and proven so by the write: no load round trip
        out = await applier.apply([command(Kind.BET, "ann", "b2", 100, round_id="r2"),
                                   command(Kind.WIN, "ann", "w2", 250, ref_tx_id="b2", round_id="r2")])
        assert [r.balance for r in out.results] == [4800, 5050]
        assert loads == [] and applier.presumed_misses == 0
        # a provider retry of known transactions: answered from memory, no round trip for state
        again = await applier.apply([command(Kind.BET, "ann", "b2", 100, round_id="r2")])
        assert again.results[0].duplicate and again.results[0].balance == 5050
        assert loads == []
        # a win for a bet this writer never saw must read that bet: loaded, and only what is missing
        late = await applier.apply([command(Kind.WIN, "ann", "w9", 10, ref_tx_id="b-unknown", round_id="r9")])
        assert late.results[0].status is Status.BET_NOT_FOUND
        assert len(loads) == 1 and ("b1", "sim", "b-unknown") in loads[0].bet
        assert not loads[0].acc and not loads[0].rg  # wallet, house, limits and usage came from memory
        assert ("b1", "sim", "b1") not in loads[0].tx
        assert await applier.conn.fetchval(
            "SELECT b.balance FROM accounts a JOIN balances b USING (account_id) WHERE a.player_id = 'ann'") == 5050
    assert (await reconcile({0: dsn}))[0].ok


async def test_keys_presumed_new_that_exist_are_decided_again_on_a_load(
        own_db: Settings, loads: list[store.BatchKeys]) -> None:  # noqa: F811
    """A warm writer that never saw a key (written before it took the shard over) presumes it new; the
    write fails where it exists and the batch is decided again on what the database holds."""
    dsn = own_db.shard_dsns()[0]
    async with applier_on(own_db, 0) as before:
        await before.apply([command(Kind.DEPOSIT, "ida", "d1", 1000, provider_id="operator")])
        await before.apply([command(Kind.ROLLBACK, "ida", "rb1", ref_tx_id="x1")])  # tombstone for x1
        await before.apply([command(Kind.BET, "ida", "t1", 100, round_id="open")])
        await before.apply([command(Kind.BET, "ida", "t2", 100, round_id="shut", round_closed=True)])
    async with applier_on(own_db, 0) as after:
        await after.apply([command(Kind.DEPOSIT, "ida", "d2", 10, provider_id="operator")])  # warm: ida's wallet
        loads.clear()
        cases = [
            (command(Kind.BET, "ida", "x1", 50), Status.TX_ROLLED_BACK),  # tombstoned id
            (command(Kind.BET, "ida", "t1", 100, round_id="open"), Status.OK),  # a retry: the original outcome
            (command(Kind.BET, "ida", "t3", 5000, round_id="shut"), Status.ROUND_CLOSED),  # not "no funds"
            (command(Kind.BET, "ida", "t4", 100, round_id="open"), Status.OK),  # a second bet in an open round
        ]
        for i, (cmd, status) in enumerate(cases):
            # warm again (a miss drops the hot state): so that each case is presumed, not loaded
            await after.apply([command(Kind.BET, "ida", f"w{i}", 1, round_id=f"warm{i}")])
            assert {("player", "b1", "ida", "EUR"), ("house", "b1", "", "EUR")} <= after.hot.state.accounts.keys()
            out = await after.apply([cmd])
            assert out.results[0].status is status, cmd.tx_id
            assert after.presumed_misses == i + 1
        assert out.results[0].balance == 1000 - 200 + 10 - 4 - 100
        assert await after.conn.fetchval(
            "SELECT bet_count FROM rounds WHERE round_id = 'open' AND player_id = 'ida'") == 2  # not overwritten
        # what was read is now known: the next batch in that round presumes nothing and loads nothing
        loads.clear()
        await after.apply([command(Kind.BET, "ida", "t5", 1, round_id="open")])
        assert loads == [] and after.presumed_misses == 4
    assert (await reconcile({0: dsn}))[0].ok


async def test_writer_statements_plan_key_lookups_only(own_db: Settings) -> None:  # noqa: F811
    """The miss load and the write look keys up by index whatever the planner's estimates: a plan that
    scans or hash-joins a whole table costs O(ledger) per batch."""
    async with applier_on(own_db, 0) as applier:
        await applier.apply([command(Kind.DEPOSIT, "jo", "d1", 1000, provider_id="operator")])
        keys = [("b1", "sim", f"k{i}") for i in range(3)]
        rounds = [("b1", "sim", f"r{i}", "jo") for i in range(3)]
        cols = [list(c) for c in zip(*keys, strict=True)]
        rcols = [list(c) for c in zip(*rounds, strict=True)]
        plan = "\n".join(r[0] for r in await applier.conn.fetch(
            "EXPLAIN " + store._LOAD_KEYS, *cols, *cols, *rcols, 0, 0))
        assert "Index" in plan
        assert "Seq Scan on" not in plan and "Hash Join" not in plan and "Merge Join" not in plan, plan


async def test_a_failed_batch_drops_the_cache_and_the_next_reads_fresh_state(own_db: Settings) -> None:  # noqa: F811
    dsn = own_db.shard_dsns()[0]
    a, b = await connect_writer(dsn, 0), await connect(dsn, 0)
    try:
        first = BatchApplier(a, 0, own_db)
        await first.apply([command(Kind.DEPOSIT, "eve", "d1", 100, provider_id="operator")])
        assert first.hot.state.accounts  # warm: eve's wallet (100) is held in memory
        # someone writes the shard behind the writer's back (what the lock forbids): eve is emptied
        rogue = BatchApplier(b, 0, own_db)
        assert (await rogue.apply([command(Kind.WITHDRAW, "eve", "x1", 100, provider_id="operator")])
                ).results[0].applied
        # the stale cache allows the bet; the database refuses the batch (the chain head moved, or the
        # balance >= 0 check), the cache is dropped, and the bet is refused one way or the other
        refused = await first.apply([command(Kind.BET, "eve", "b1", 60)])
        assert refused.results[0].status in (Status.BAD_COMMAND, Status.INSUFFICIENT_FUNDS)
        assert refused.results[0].balance == 0
        assert first.hot.drops >= 1
        # nothing from before the failure is trusted: the next bet sees the real (empty) wallet
        out = await first.apply([command(Kind.BET, "eve", "b2", 60)])
        assert out.results[0].status is Status.INSUFFICIENT_FUNDS and out.results[0].balance == 0
    finally:
        await a.close()
        await b.close()
    assert (await reconcile({0: dsn}))[0].ok


async def test_a_lost_connection_drops_the_cache_and_a_new_writer_reads_fresh_state(
        own_db: Settings) -> None:  # noqa: F811
    dsn = own_db.shard_dsns()[0]
    a = await connect_writer(dsn, 0)
    admin = await connect(dsn, 0)
    try:
        first = BatchApplier(a, 0, own_db)
        await first.apply([command(Kind.DEPOSIT, "fay", "d1", 100, provider_id="operator")])
        pid = a.get_server_pid()
        await admin.execute("SELECT pg_terminate_backend($1)", pid)
        for _ in range(100):  # bounded: the backend is gone within milliseconds
            if not await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid):
                break
            await asyncio.sleep(0.05)
        with pytest.raises((*_CONNECTION_ERRORS, asyncpg.InternalClientError)):
            await first.apply([command(Kind.BET, "fay", "b1", 10)])
        assert first.hot.drops == 1 and not first.hot.state.accounts and not first.hot.ids
        # the writer taking over (a new connection, a new applier) settles against the database's state
        async with applier_on(own_db, 0) as second:
            await second.apply([command(Kind.DEPOSIT, "fay", "d2", 50, provider_id="operator")])
            out = await second.apply([command(Kind.BET, "fay", "b1", 10)])
            assert out.results[0].applied and out.results[0].balance == 140
    finally:
        await a.close()
        await admin.close()
    assert (await reconcile({0: dsn}))[0].ok


async def test_a_full_cache_is_emptied_and_refilled_without_changing_any_outcome(
        own_db: Settings) -> None:  # noqa: F811
    small = own_db.replace(writer_cache_keys=8)
    async with applier_on(small, 1) as applier:
        await applier.apply([command(Kind.DEPOSIT, f"g{i}", f"d{i}", 1000, provider_id="operator")
                             for i in range(6)])
        for i in range(6):
            out = await applier.apply([command(Kind.BET, f"g{i}", f"b{i}", 100),
                                       command(Kind.WIN, f"g{i}", f"w{i}", 30, ref_tx_id=f"b{i}",
                                               round_id=f"r-b{i}")])
            assert [r.balance for r in out.results] == [900, 930]
            assert applier.hot.size <= 8 + 16  # bounded: at most one batch's keys past the limit
        again = await applier.apply([command(Kind.BET, "g0", "b0", 100)])
        assert again.results[0].duplicate and again.results[0].balance == 930
    assert (await reconcile({1: small.shard_dsns()[1]}))[0].ok
