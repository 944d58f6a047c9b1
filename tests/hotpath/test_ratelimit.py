"""GCRA limiter behaviour, run against both twins."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

S = 1_000_000_000
MS = 1_000_000
T0 = 10 * S


def limiter(mod: ModuleType, max_keys: int = 1000, idle_ns: int = S, rate: int = 10, burst: int = 5) -> Any:
    rl = mod.RateLimiter(max_keys, idle_ns)
    rl.add_scope(1, rate, burst)
    return rl


def test_fresh_key_takes_burst_then_exact_retry_after(ratelimit: ModuleType) -> None:
    rl = limiter(ratelimit, rate=10, burst=5)
    assert [rl.check(1, "p:b:1", T0) for _ in range(5)] == [0] * 5
    assert rl.check(1, "p:b:1", T0) == 100 * MS
    assert rl.check(1, "p:b:1", T0 + 30 * MS) == 70 * MS
    assert rl.check(1, "p:b:1", T0 + 100 * MS - 1) == 1
    assert rl.check(1, "p:b:1", T0 + 100 * MS) == 0
    assert rl.check(1, "p:b:1", T0 + 100 * MS) == 100 * MS


def test_refusal_consumes_nothing(ratelimit: ModuleType) -> None:
    rl = limiter(ratelimit, rate=1, burst=1)
    assert rl.check(1, "k", T0) == 0
    assert [rl.check(1, "k", T0) for _ in range(3)] == [S] * 3
    assert rl.check(1, "k", T0 + S) == 0


def test_emission_interval_is_integer_division(ratelimit: ModuleType) -> None:
    rl = limiter(ratelimit, rate=3, burst=1)
    assert rl.check(1, "k", T0) == 0
    assert rl.check(1, "k", T0) == 333_333_333


def test_recovers_one_call_per_interval(ratelimit: ModuleType) -> None:
    rl = limiter(ratelimit, rate=10, burst=3)
    for _ in range(3):
        assert rl.check(1, "k", T0) == 0
    assert rl.check(1, "k", T0 + 100 * MS) == 0
    assert rl.check(1, "k", T0 + 100 * MS) == 100 * MS
    # A long idle period refills the whole burst, never more.
    assert [rl.check(1, "k", T0 + 10 * S) for _ in range(4)] == [0, 0, 0, 100 * MS]


def test_cost(ratelimit: ModuleType) -> None:
    rl = limiter(ratelimit, rate=10, burst=5)
    assert rl.check(1, "k", T0, cost=3) == 0
    assert rl.check(1, "k", T0, cost=3) == 100 * MS
    assert rl.check(1, "k", T0, cost=2) == 0
    with pytest.raises(ValueError):
        rl.check(1, "k", T0, cost=6)
    with pytest.raises(ValueError):
        rl.check(1, "k", T0, cost=0)


def test_interval_scope_below_one_per_second(ratelimit: ModuleType) -> None:
    rl = ratelimit.RateLimiter(10, S)
    rl.add_scope_interval(7, 60 * S, 2)
    assert rl.check(7, "login:1.2.3.4", T0) == 0
    assert rl.check(7, "login:1.2.3.4", T0) == 0
    assert rl.check(7, "login:1.2.3.4", T0 + S) == 59 * S


def test_keys_scopes_and_key_types_are_independent(ratelimit: ModuleType) -> None:
    rl = limiter(ratelimit, rate=1, burst=1)
    rl.add_scope(2, 1, 1)
    for key in ("1", b"1", 1, "2"):
        assert rl.check(1, key, T0) == 0
        assert rl.check(1, key, T0) == S
    assert rl.check(2, "1", T0) == 0
    assert rl.check(1, True, T0) == S  # True is the int 1
    assert len(rl) == 5


def test_errors(ratelimit: ModuleType) -> None:
    rl = limiter(ratelimit)
    with pytest.raises(KeyError):
        rl.check(2, "k", T0)
    with pytest.raises(TypeError):
        rl.check(1, 1.5, T0)
    with pytest.raises(OverflowError):
        rl.check(1, 1 << 63, T0)
    with pytest.raises(ValueError):
        rl.add_scope(256, 1, 1)
    with pytest.raises(ValueError):
        rl.add_scope(1, 0, 1)
    with pytest.raises(ValueError):
        rl.add_scope(1, 1, 0)
    with pytest.raises(ValueError):
        rl.add_scope_interval(1, 1 << 60, 4)
    with pytest.raises(ValueError):
        ratelimit.RateLimiter(0, S)
    with pytest.raises(ValueError):
        ratelimit.RateLimiter(1, -1)
    assert len(rl) == 0


def test_check_many_is_all_or_nothing(ratelimit: ModuleType) -> None:
    rl = limiter(ratelimit, rate=10, burst=1)
    rl.add_scope(2, 1, 3)
    assert rl.check(1, "player", T0) == 0
    assert rl.check_many([(2, "brand"), (1, "player")], T0) == 100 * MS
    # Nothing was consumed on the brand scope: its whole burst is still there.
    assert [rl.check(2, "brand", T0) for _ in range(4)] == [0, 0, 0, S]
    assert rl.check_many([(1, "other"), (1, "player")], T0) == 100 * MS
    assert rl.check(1, "other", T0) == 0


def test_check_many_returns_largest_wait_and_consumes_all(ratelimit: ModuleType) -> None:
    rl = limiter(ratelimit, rate=10, burst=1)
    rl.add_scope(2, 1, 1)
    assert rl.check_many([(1, "a"), (2, "b")], T0) == 0
    assert rl.check_many([(1, "a"), (2, "b")], T0) == S
    assert rl.check_many([(1, "a"), (2, "b")], T0 + 500 * MS) == 500 * MS
    assert rl.check(1, "a", T0 + 100 * MS) == 0
    assert rl.check(2, "b", T0 + S) == 0
    assert rl.check_many([], T0) == 0
    assert rl.check_many(iter([(1, "c")]), T0) == 0


def test_check_many_charges_a_repeated_pair_twice(ratelimit: ModuleType) -> None:
    rl = limiter(ratelimit, rate=10, burst=2)
    assert rl.check_many([(1, "k"), (1, "k")], T0) == 0
    assert rl.check(1, "k", T0) == 100 * MS
    rl.add_scope(2, 10, 1)
    assert rl.check_many([(2, "j"), (2, "j")], T0) == 100 * MS
    assert rl.check(2, "j", T0) == 0


def test_check_many_validates_before_touching_state(ratelimit: ModuleType) -> None:
    rl = limiter(ratelimit, rate=10, burst=1)
    with pytest.raises(KeyError):
        rl.check_many([(1, "a"), (9, "b")], T0)
    with pytest.raises(TypeError):
        rl.check_many([(1, "a"), (1, None)], T0)
    assert len(rl) == 0
    assert rl.check(1, "a", T0) == 0


def test_idle_keys_expire_lazily(ratelimit: ModuleType) -> None:
    rl = limiter(ratelimit, idle_ns=S, rate=10, burst=1)
    assert rl.check(1, "a", T0) == 0  # TAT = T0 + 100 ms, expires at T0 + 1.1 s
    assert rl.check(1, "b", T0 + 1100 * MS - 1) == 0
    assert len(rl) == 2
    assert rl.check(1, "c", T0 + 1100 * MS) == 0
    assert len(rl) == 2  # "a" dropped by the call's sweep
    assert rl.check(1, "a", T0 + 1100 * MS) == 0  # as good as fresh anyway


def test_purge_drops_every_expired_key(ratelimit: ModuleType) -> None:
    rl = limiter(ratelimit, idle_ns=S, rate=10, burst=1)
    for n in range(10):
        assert rl.check(1, f"k{n}", T0 + n * MS) == 0
    assert rl.check(1, "k0", T0 + 100 * MS) == 0  # k0 is now the most recent key
    assert rl.purge(T0 + 1105 * MS) == 5  # k1..k5; k0's TAT moved to T0 + 200 ms
    assert len(rl) == 5
    assert rl.purge(T0 + 10 * S) == 5
    assert len(rl) == 0
    assert rl.purge(T0 + 10 * S) == 0


def test_cap_evicts_least_recently_used(ratelimit: ModuleType) -> None:
    rl = limiter(ratelimit, max_keys=3, idle_ns=10 * S, rate=1, burst=1)
    for key in "abc":
        assert rl.check(1, key, T0) == 0
    assert rl.check(1, "a", T0 + 1) > 0  # a refused call still counts as use: order b, c, a
    assert rl.check(1, "d", T0 + 2) == 0  # evicts b
    assert len(rl) == 3
    assert rl.check(1, "c", T0 + 3) > 0  # c kept: order a, d, c
    assert rl.check(1, "b", T0 + 4) == 0  # b forgotten, so fresh; evicts a
    assert rl.check(1, "a", T0 + 5) == 0  # a forgotten
    assert len(rl) == 3


def test_cap_of_one(ratelimit: ModuleType) -> None:
    rl = limiter(ratelimit, max_keys=1, rate=1, burst=1)
    assert rl.check_many([(1, "a"), (1, "b")], T0) == 0
    assert len(rl) == 1
    assert rl.check(1, "b", T0) == S
    assert rl.check(1, "a", T0) == 0


def test_many_keys_through_the_table(ratelimit: ModuleType) -> None:
    rl = limiter(ratelimit, max_keys=500, idle_ns=0, rate=1000, burst=2)
    for round_ in range(3):
        now = T0 + round_ * S
        for n in range(2000):
            key = f"p:brand:{n}" if n % 2 else n
            assert rl.check(1, key, now) == 0
        assert len(rl) == 500
    # The most recent 500 keys are held, each with one call of its burst left.
    for n in range(1500, 2000):
        key = f"p:brand:{n}" if n % 2 else n
        assert rl.check(1, key, T0 + 2 * S) == 0
        assert rl.check(1, key, T0 + 2 * S) == MS
