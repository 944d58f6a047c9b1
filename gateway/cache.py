"""In-process cache with TTL plus jitter and single-flight misses.

A burst of calls for one cold key makes ONE Redis lookup: later callers await the first caller's
future. Jittered expiry keeps a fleet of entries loaded together from expiring together. Redis stays
the truth: entries live for a couple of seconds and are dropped on every local change.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class SingleFlightCache(Generic[K, V]):
    def __init__(self, ttl_ms: int, jitter_pct: int, max_entries: int) -> None:
        self.ttl_ns = ttl_ms * 1_000_000
        self.jitter = jitter_pct / 100
        self.max_entries = max_entries
        self._data: OrderedDict[K, tuple[int, V]] = OrderedDict()
        self._inflight: dict[K, asyncio.Future[V]] = {}
        self.hits = 0
        self.misses = 0
        self.loads = 0

    async def get(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        now = time.monotonic_ns()
        item = self._data.get(key)
        if item is not None and item[0] > now:
            self.hits += 1
            return item[1]
        self.misses += 1
        fut = self._inflight.get(key)
        if fut is not None:
            return await asyncio.shield(fut)
        fut = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            self.loads += 1
            value = await load()
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: waiters re-raise it, nobody logs "never retrieved"
            raise
        finally:
            self._inflight.pop(key, None)
        ttl = self.ttl_ns * (1 + random.uniform(-self.jitter, self.jitter))
        self._data[key] = (now + int(ttl), value)
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)
        fut.set_result(value)
        return value

    def drop(self, key: K) -> None:
        self._data.pop(key, None)

    def __len__(self) -> int:
        return len(self._data)
