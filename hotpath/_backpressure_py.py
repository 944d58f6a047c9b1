"""Per-shard admission queue with priority lanes, pure-Python twin of ``hotpath._backpressure_c``.

Invariant: a settlement (win, rollback, deposit, end of round) is never refused, because money
already moved at the game provider; only new bets are shed, and they are shed before they queue
long enough to time out. Rules, identical in both twins:

* ``LANE_SETTLE`` is unbounded (its depth is reported); ``LANE_BET`` holds at most ``capacity``.
* ``take`` serves the settle lane first, FIFO within a lane, and records the taken item's
  sojourn ``now - enqueued``. ``record_sojourn`` feeds the same detector from a later stage
  (e.g. the wait for the ledger's reply).
* CoDel-style detector: a sojourn ``>= target_ns`` starts (or continues) an "above" period; once
  an above sojourn is seen ``interval_ns`` or more after the period began, the queue is
  ``shedding``. A sojourn ``< target_ns``, or ``take`` leaving both lanes empty (or finding them
  empty), ends the period and the shedding.
* ``offer`` on the bet lane returns ``False`` (and counts ``dropped``) while shedding or when the
  lane is full.

``take_many(now, max_items)`` is ``take`` called up to ``max_items`` times, stopping at the first
``None``, in one call: the same items in the same order, each one's sojourn fed to the detector
in turn, and the same end state (including leaving the shedding state when the lanes empty or
were empty). ``max_items == 0`` changes nothing; a negative one is a ``ValueError``.
"""

from __future__ import annotations

from collections import deque

__all__ = ("LANE_BET", "LANE_SETTLE", "QueueSet", "ShardQueue")

LANE_SETTLE = 0
LANE_BET = 1


class ShardQueue:
    """Bounded bet lane, unbounded settle lane and a sojourn-time shedding detector."""

    __slots__ = (
        "_above",
        "_above_until",
        "_bets",
        "_capacity",
        "_dropped",
        "_interval",
        "_last",
        "_settles",
        "_shedding",
        "_target",
    )

    def __init__(self, capacity: int, target_ns: int = 5_000_000, interval_ns: int = 100_000_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        if target_ns < 0 or interval_ns < 0:
            raise ValueError("target_ns and interval_ns must be >= 0")
        self._capacity = capacity
        self._target = target_ns
        self._interval = interval_ns
        self._settles: deque[tuple[int, object]] = deque()
        self._bets: deque[tuple[int, object]] = deque()
        self._shedding = False
        self._above = False
        self._above_until = 0
        self._dropped = 0
        self._last = 0

    def offer(self, lane: int, item: object, now_ns: int) -> bool:
        """Enqueue ``item``; ``False`` only for a bet shed by a full lane or by shedding."""
        if item is None:
            raise TypeError("item must not be None")
        if lane == LANE_SETTLE:
            self._settles.append((now_ns, item))
            return True
        if lane != LANE_BET:
            raise ValueError(f"unknown lane {lane}")
        if self._shedding or len(self._bets) >= self._capacity:
            self._dropped += 1
            return False
        self._bets.append((now_ns, item))
        return True

    def take(self, now_ns: int) -> object | None:
        """Next item (settlements first), or ``None`` when both lanes are empty."""
        if self._settles:
            stamp, item = self._settles.popleft()
        elif self._bets:
            stamp, item = self._bets.popleft()
        else:
            self._above = self._shedding = False
            return None
        self.record_sojourn(now_ns - stamp, now_ns)
        if not self._settles and not self._bets:
            self._above = self._shedding = False
        return item

    def take_many(self, now_ns: int, max_items: int) -> list[object]:
        """Up to ``max_items`` items, as ``take`` would return them one by one (module rules)."""
        if max_items < 0:
            raise ValueError("max_items must be >= 0")
        out: list[object] = []
        if not max_items:
            return out
        settles, bets = self._settles, self._bets
        target, interval = self._target, self._interval
        above, shedding, above_until, last = self._above, self._shedding, self._above_until, self._last
        for _ in range(max_items):
            if settles:
                stamp, item = settles.popleft()
            elif bets:
                stamp, item = bets.popleft()
            else:
                break
            last = now_ns - stamp
            if last < target:
                above = shedding = False
            elif not above:
                above = True
                above_until = now_ns + interval
            elif now_ns >= above_until:
                shedding = True
            out.append(item)
        if not settles and not bets:
            above = shedding = False
        self._above, self._shedding, self._above_until, self._last = above, shedding, above_until, last
        return out

    def record_sojourn(self, sojourn_ns: int, now_ns: int) -> None:
        """Feed one observed queueing delay to the shedding detector."""
        self._last = sojourn_ns
        if sojourn_ns < self._target:
            self._above = self._shedding = False
        elif not self._above:
            self._above = True
            self._above_until = now_ns + self._interval
        elif now_ns >= self._above_until:
            self._shedding = True

    def depth(self, lane: int) -> int:
        """Items waiting in ``lane``."""
        if lane == LANE_SETTLE:
            return len(self._settles)
        if lane == LANE_BET:
            return len(self._bets)
        raise ValueError(f"unknown lane {lane}")

    @property
    def shedding(self) -> bool:
        """Whether new bets are being refused."""
        return self._shedding

    @property
    def dropped(self) -> int:
        """Bets refused so far."""
        return self._dropped

    def state(self) -> dict[str, int | bool]:
        """Snapshot for metrics."""
        return {
            "depth_settle": len(self._settles),
            "depth_bet": len(self._bets),
            "capacity": self._capacity,
            "shedding": self._shedding,
            "dropped": self._dropped,
            "last_sojourn_ns": self._last,
        }

    def __len__(self) -> int:
        return len(self._settles) + len(self._bets)


class QueueSet:
    """One :class:`ShardQueue` per shard, same settings."""

    __slots__ = ("_queues",)

    def __init__(self, shards: int, capacity: int, target_ns: int = 5_000_000, interval_ns: int = 100_000_000) -> None:
        if shards < 1:
            raise ValueError("shards must be >= 1")
        self._queues = [ShardQueue(capacity, target_ns, interval_ns) for _ in range(shards)]

    def _queue(self, shard: int) -> ShardQueue:
        if not 0 <= shard < len(self._queues):
            raise ValueError("shard out of range")
        return self._queues[shard]

    def offer(self, shard: int, lane: int, item: object, now_ns: int) -> bool:
        """:meth:`ShardQueue.offer` on ``shard``."""
        return self._queue(shard).offer(lane, item, now_ns)

    def take(self, shard: int, now_ns: int) -> object | None:
        """:meth:`ShardQueue.take` on ``shard``."""
        return self._queue(shard).take(now_ns)

    def take_many(self, shard: int, now_ns: int, max_items: int) -> list[object]:
        """:meth:`ShardQueue.take_many` on ``shard``."""
        return self._queue(shard).take_many(now_ns, max_items)

    def __getitem__(self, shard: int) -> ShardQueue:
        return self._queue(shard)

    def __len__(self) -> int:
        return len(self._queues)

    def state(self) -> list[dict[str, int | bool]]:
        """Per-shard snapshots, in shard order."""
        return [queue.state() for queue in self._queues]
