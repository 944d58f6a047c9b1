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
from ledger.sharding import connect
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
        # the same player's next round: only the new transaction, bet and round keys are unknown
        out = await applier.apply([command(Kind.BET, "ann", "b2", 100, round_id="r2"),
                                   command(Kind.WIN, "ann", "w2", 250, ref_tx_id="b2", round_id="r2")])
        assert [r.balance for r in out.results] == [4800, 5050]
        assert len(loads) == 1
        assert not loads[0].acc and not loads[0].rg  # wallet, house, limits and usage came from memory
        assert ("b1", "sim", "b1") not in loads[0].tx
        loads.clear()
        # a provider retry of known transactions: answered from memory, no round trip for state
        again = await applier.apply([command(Kind.BET, "ann", "b2", 100, round_id="r2")])
        assert again.results[0].duplicate and again.results[0].balance == 5050
        assert loads == []
        assert await applier.conn.fetchval(
            "SELECT b.balance FROM accounts a JOIN balances b USING (account_id) WHERE a.player_id = 'ann'") == 5050
    assert (await reconcile({0: dsn}))[0].ok


async def test_a_failed_batch_drops_the_cache_and_the_next_reads_fresh_state(own_db: Settings) -> None:  # noqa: F811
    dsn = own_db.shard_dsns()[0]
    a, b = await connect(dsn, 0), await connect(dsn, 0)
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
    a = await connect(dsn, 0)
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
