"""GCRA rate limiter, pure-Python twin of ``hotpath._ratelimit_c``.

Both twins make the same decision for the same call sequence, evictions included:

* A scope has an emission interval ``T = 1_000_000_000 // rate_per_s`` ns and a burst ``B``.
  A (scope, key) pair keeps one number, its theoretical arrival time ``TAT``; an unknown pair
  behaves as ``TAT <= now``.
* ``check`` with cost ``c``: ``new = max(TAT, now) + c*T``. Allowed iff ``new - now <= B*T``:
  ``TAT = new``, result 0. Refused otherwise: nothing is consumed and the result is
  ``new - B*T - now > 0``, the exact wait after which the same call passes (without other
  traffic). A fresh key therefore takes B calls at once, then one per T.
* ``check_many`` decides all pairs first and consumes only if every pair passes; a pair listed
  twice is charged twice. The result is the largest wait.
* Memory is bounded. A pair with ``TAT + idle_expiry_ns <= now`` is as good as fresh, so dropping
  it changes no decision: each call drops up to two such pairs from the least-recently-used end
  (lazy expiry) and ``purge`` drops them all. At ``max_keys`` pairs a new pair evicts the
  least-recently-used one (every check uses its pairs, refused or not). LRU order does not depend
  on hash-table layout, so both twins evict the same pair.
* Keys are ``str``, ``bytes`` or ``int`` (signed 64-bit); ``"1"``, ``b"1"`` and ``1`` are three
  different keys. The compiled twin tells keys apart by two independent 64-bit hashes, so two keys
  share state with probability about 2**-128 per pair of keys.
* Time is injected as integer nanoseconds, meaningful in ``[0, 2**62)``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

__all__ = ("MAX_BURST", "MAX_KEYS", "MAX_SCOPES", "MAX_SPAN_NS", "RateLimiter")

MAX_SCOPES = 256
MAX_KEYS = 1 << 28
MAX_BURST = (1 << 31) - 1
MAX_SPAN_NS = 1 << 61
_SWEEP = 2
_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1

Key = str | bytes | int


def _check_key(key: object) -> None:
    if isinstance(key, int):
        if not _INT64_MIN <= key <= _INT64_MAX:
            raise OverflowError("int keys must fit in a signed 64-bit integer")
    elif not isinstance(key, str | bytes):
        raise TypeError(f"key must be str, bytes or int, not {type(key).__name__}")


class RateLimiter:
    """GCRA limiter over registered scopes; see the module docstring for the exact rules."""

    __slots__ = ("_idle", "_max_keys", "_scopes", "_tats")

    def __init__(self, max_keys: int, idle_expiry_ns: int) -> None:
        if not 1 <= max_keys <= MAX_KEYS:
            raise ValueError(f"max_keys must be in [1, {MAX_KEYS}]")
        if idle_expiry_ns < 0:
            raise ValueError("idle_expiry_ns must be >= 0")
        self._max_keys = max_keys
        self._idle = idle_expiry_ns
        # scope_id -> (T, B*T, B)
        self._scopes: dict[int, tuple[int, int, int]] = {}
        # (scope_id, key) -> TAT, least recently used first
        self._tats: OrderedDict[tuple[int, Key], int] = OrderedDict()

    def add_scope(self, scope_id: int, rate_per_s: int, burst: int) -> None:
        """Register (or retune) ``scope_id`` at ``rate_per_s`` with ``burst`` immediate calls."""
        if not 1 <= rate_per_s <= 1_000_000_000:
            raise ValueError("rate_per_s must be in [1, 1e9]")
        self.add_scope_interval(scope_id, 1_000_000_000 // rate_per_s, burst)

    def add_scope_interval(self, scope_id: int, interval_ns: int, burst: int) -> None:
        """Register (or retune) ``scope_id`` with one call per ``interval_ns`` (rates below 1/s)."""
        if not 0 <= scope_id < MAX_SCOPES:
            raise ValueError(f"scope_id must be in [0, {MAX_SCOPES})")
        if not 1 <= burst <= MAX_BURST:
            raise ValueError(f"burst must be in [1, {MAX_BURST}]")
        if not 1 <= interval_ns <= MAX_SPAN_NS // burst:
            raise ValueError("interval_ns must be >= 1 and interval_ns * burst <= 2**61")
        self._scopes[scope_id] = (interval_ns, interval_ns * burst, burst)

    def _scope(self, scope_id: int, cost: int) -> tuple[int, int, int]:
        scope = self._scopes.get(scope_id)
        if scope is None:
            raise KeyError(scope_id)
        if not 1 <= cost <= scope[2]:
            raise ValueError("cost must be in [1, burst]")
        return scope

    def _sweep(self, now_ns: int) -> None:
        tats = self._tats
        limit = now_ns - self._idle
        for _ in range(_SWEEP):
            if not tats:
                return
            ident = next(iter(tats))
            if tats[ident] > limit:
                return
            del tats[ident]

    def _store(self, ident: tuple[int, Key], tat: int) -> None:
        tats = self._tats
        if ident in tats:
            tats[ident] = tat
            tats.move_to_end(ident)
        else:
            if len(tats) >= self._max_keys:
                tats.popitem(last=False)
            tats[ident] = tat

    def check(self, scope_id: int, key: Key, now_ns: int, cost: int = 1) -> int:
        """0 if allowed (and consumed), else the exact retry-after in ns (nothing consumed)."""
        interval, span, _ = self._scope(scope_id, cost)
        _check_key(key)
        self._sweep(now_ns)
        ident = (scope_id, key)
        tat = self._tats.get(ident)
        new = (now_ns if tat is None or tat < now_ns else tat) + interval * cost
        retry = new - span - now_ns
        if retry > 0:
            self._tats.move_to_end(ident)
            return retry
        self._store(ident, new)
        return 0

    def check_many(self, items: Iterable[tuple[int, Key]], now_ns: int, cost: int = 1) -> int:
        """All-or-nothing :meth:`check` over ``(scope_id, key)`` pairs: 0 or the largest wait."""
        plan: list[tuple[tuple[int, Key], int, int, int]] = []
        for scope_id, key in items:
            interval, span, _ = self._scope(scope_id, cost)
            _check_key(key)
            plan.append(((scope_id, key), interval, span, 0))
        self._sweep(now_ns)
        tats = self._tats
        tentative: dict[tuple[int, Key], int] = {}
        worst = 0
        for n, (ident, interval, span, _) in enumerate(plan):
            tat = tentative.get(ident)
            if tat is None:
                tat = tats.get(ident)
            new = (now_ns if tat is None or tat < now_ns else tat) + interval * cost
            tentative[ident] = new
            plan[n] = (ident, interval, span, new)
            worst = max(worst, new - span - now_ns)
        if worst > 0:
            for ident, _, _, _ in plan:
                if ident in tats:
                    tats.move_to_end(ident)
            return worst
        for ident, _, _, new in plan:
            self._store(ident, new)
        return 0

    def purge(self, now_ns: int) -> int:
        """Drop every pair idle past ``TAT + idle_expiry_ns``; return how many were dropped."""
        limit = now_ns - self._idle
        expired = [ident for ident, tat in self._tats.items() if tat <= limit]
        for ident in expired:
            del self._tats[ident]
        return len(expired)

    def __len__(self) -> int:
        return len(self._tats)
