"""Shard → PostgreSQL placement.

Every shard keeps its tables in its own schema ``shard_<n>``, so several shards can share one server
on a laptop and a hot shard can move to a server of its own by changing only the DSN map. Connections
pin ``search_path`` to the shard's schema, so the SQL never names a shard.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import asyncpg


def schema_for(shard: int) -> str:
    return f"shard_{shard}"


def parse_shard_range(spec: str, total: int) -> list[int]:
    """``"0-3"``, ``"1,3"``, ``"all"`` → sorted shard numbers, each checked against ``total``."""
    if spec in ("", "all"):
        return list(range(total))
    out: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.strip().partition("-")
        first, last = int(lo), int(hi or lo)
        if not 0 <= first <= last < total:
            raise ValueError(f"shard range {part!r} outside 0-{total - 1}")
        out.update(range(first, last + 1))
    return sorted(out)


#: a shard writer's connection settings: every statement it runs touches a batch's keys, so a plan that scans
#: a whole table (a hash join of the batch's ``unnest`` against ``transactions``, say) costs O(table) per
#: batch and grows with the ledger; without these the planner picks one whenever its row estimates say so.
#: With scans ruled out a custom plan buys nothing, and planning the load and the write afresh for every
#: batch cost about as much CPU as running the load: each prepared statement is planned once.
_KEY_LOOKUPS_ONLY = {"enable_seqscan": "off", "enable_hashjoin": "off", "enable_mergejoin": "off",
                     "plan_cache_mode": "force_generic_plan"}


async def connect(dsn: str, shard: int, **kw: Any) -> asyncpg.Connection:
    return await asyncpg.connect(dsn, server_settings={"search_path": schema_for(shard)}, **kw)


async def connect_writer(dsn: str, shard: int) -> asyncpg.Connection:
    """The connection a shard's batches are applied on (the writer's, and any tool or test applying them)."""
    return await asyncpg.connect(dsn, server_settings={"search_path": schema_for(shard), **_KEY_LOOKUPS_ONLY})


async def create_pool(dsn: str, shard: int, *, min_size: int = 1, max_size: int = 4) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size,
        server_settings={"search_path": schema_for(shard)},
    )
    assert pool is not None
    return pool


async def pools_for(dsns: dict[int, str], shards: Iterable[int], *, max_size: int = 4) -> dict[int, asyncpg.Pool]:
    pools: dict[int, asyncpg.Pool] = {}
    try:
        for shard in shards:
            pools[shard] = await create_pool(dsns[shard], shard, max_size=max_size)
    except BaseException:
        for pool in pools.values():
            await pool.close()
        raise
    return pools
