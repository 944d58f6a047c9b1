"""Versioned SQL migrations, applied per shard schema under an advisory lock.

Files ``migrations/NNN_name.sql`` run once each, in order, inside one transaction per file; the
applied versions are recorded in ``schema_migrations`` so re-running is a no-op.
"""

from __future__ import annotations

import logging
import re
from importlib import resources

import asyncpg

from ledger.sharding import schema_for

log = logging.getLogger(__name__)
_LOCK_KEY = 0x6761_7465_7761_79  # "gateway"


def migrations() -> list[tuple[int, str, str]]:
    found = []
    for item in resources.files("ledger").joinpath("migrations").iterdir():
        m = re.fullmatch(r"(\d+)_([\w]+)\.sql", item.name)
        if m:
            found.append((int(m.group(1)), m.group(2), item.read_text()))
    return sorted(found)


async def migrate_shard(dsn: str, shard: int) -> list[int]:
    """Bring one shard's schema up to date; returns the versions applied now."""
    schema = schema_for(shard)
    conn = await asyncpg.connect(dsn)
    applied: list[int] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(f'SET search_path TO "{schema}"')
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, sql in migrations():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name)
            applied.append(version)
            log.info("shard %d: applied migration %03d_%s", shard, version, name)
    finally:
        try:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
        finally:
            await conn.close()
    return applied


async def migrate_all(dsns: dict[int, str]) -> dict[int, list[int]]:
    return {shard: await migrate_shard(dsn, shard) for shard, dsn in sorted(dsns.items())}
