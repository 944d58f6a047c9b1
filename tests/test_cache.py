"""The session cache: a burst on one cold key makes one load; entries expire with jitter."""

from __future__ import annotations

import asyncio

import pytest

from gateway.cache import SingleFlightCache


async def test_a_burst_on_a_cold_key_loads_once() -> None:
    cache: SingleFlightCache[str, int] = SingleFlightCache(ttl_ms=1000, jitter_pct=20, max_entries=10)
    calls = 0

    async def load() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return 42

    values = await asyncio.gather(*(cache.get("k", load) for _ in range(50)))
    assert values == [42] * 50 and calls == 1
    assert await cache.get("k", load) == 42 and calls == 1 and cache.hits >= 1


async def test_a_failed_load_reaches_every_waiter_and_is_not_cached() -> None:
    cache: SingleFlightCache[str, int] = SingleFlightCache(ttl_ms=1000, jitter_pct=0, max_entries=10)

    async def boom() -> int:
        await asyncio.sleep(0.01)
        raise RuntimeError("redis down")

    results = await asyncio.gather(*(cache.get("k", boom) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert len(cache) == 0

    async def ok() -> int:
        return 7

    assert await cache.get("k", ok) == 7


async def test_expiry_jitter_and_bound() -> None:
    cache: SingleFlightCache[int, int] = SingleFlightCache(ttl_ms=20, jitter_pct=50, max_entries=3)

    async def one() -> int:
        return 1

    for key in range(5):
        await cache.get(key, one)
    assert len(cache) == 3  # oldest dropped
    expiries = {exp for exp, _ in cache._data.values()}
    assert len(expiries) == 3  # jittered, not identical
    await asyncio.sleep(0.04)
    loads = cache.loads
    await cache.get(4, one)
    assert cache.loads == loads + 1  # expired: loaded again


@pytest.mark.parametrize("pct", [0, 100])
async def test_jitter_bounds(pct: int) -> None:
    cache: SingleFlightCache[int, int] = SingleFlightCache(ttl_ms=1000, jitter_pct=pct, max_entries=100)

    async def one() -> int:
        return 1

    for key in range(20):
        await cache.get(key, one)
    spans = [exp for exp, _ in cache._data.values()]
    assert max(spans) - min(spans) <= 2 * pct / 100 * 1e9 + 5e7
