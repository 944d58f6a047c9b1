"""The shard's hot state, kept in memory by the one writer that holds the shard's lock.

The writer is the only writer of its shard, so what it committed is what the database holds: balances,
prior outcomes (idempotency keys), bets, rounds, tombstones, responsible-gaming limits and usage stay
here between batches, and a warm batch needs no load round trip. A key not yet here (a miss) is loaded
alone. Nothing here is trusted after an error: the writer drops it all when a batch fails (the engine
has already mutated it) and when it loses its connection or lock (a new connection starts empty, so a
writer taking over reads fresh state). The database's constraints stay the last line of defence.
"""

from __future__ import annotations

import datetime as dt
from collections import deque

from ledger.rules import BatchState, TxKey
from ledger.store import BatchKeys


class HotState:
    """Loaded keys and their state; ``limit`` bounds the keys held (beyond it, everything is dropped
    and reloaded on demand: simple, and a reload costs one load round trip per batch for a while)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.drops = 0
        self.clear()

    def clear(self) -> None:
        self.state = BatchState()
        #: transaction keys looked up (found ones are in ``state.txs``, the rest are known absent)
        self.seen_tx: set[TxKey] = set()
        #: (brand, player) whose limits and usage since ``since`` are loaded
        self.seen_rg: set[tuple[str, str]] = set()
        self.since: dt.date | None = None
        #: ledger transaction numbers drawn ahead (a gap when dropped: harmless, as for a failed batch)
        self.ids: deque[int] = deque()

    def drop(self) -> None:
        """After any error: forget everything (the next batch loads what it needs)."""
        self.drops += 1
        self.clear()

    @property
    def size(self) -> int:
        st = self.state
        return len(self.seen_tx) + len(st.bets) + len(st.rounds) + len(st.accounts) + len(st.usage)

    def missing(self, keys: BatchKeys, since: dt.date) -> BatchKeys:
        """The part of ``keys`` not held (all of it when the cache is off, over its bound, or the
        usage window moved back, which only a clock set back can do)."""
        if self.limit <= 0 or self.size > self.limit or (self.since is not None and since < self.since):
            self.clear()
        if self.since is None:
            self.since = since
        st = self.state
        # O(batch), never O(cache): `set - dict.keys()` would copy the whole cache's keys each batch
        bets, rounds = st.bets, st.rounds
        return BatchKeys(
            acc={k: t for k, t in keys.acc.items() if k not in st.accounts},
            tx=keys.tx - self.seen_tx,
            bet={k for k in keys.bet if k not in bets},
            rnd={k for k in keys.rnd if k not in rounds},
            rg=keys.rg - self.seen_rg,
        )

    def loaded(self, keys: BatchKeys) -> None:
        self.seen_tx |= keys.tx
        self.seen_rg |= keys.rg

    def take_ids(self, n: int) -> list[int]:
        return [self.ids.popleft() for _ in range(n)]
