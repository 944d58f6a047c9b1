"""Random operation sequences through both twins must give identical decisions and outputs."""

from __future__ import annotations

import random
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.c_ext

SETTINGS = settings(max_examples=150, deadline=None)


def outcome(call: Callable[..., Any], *args: Any) -> Any:
    """Result of ``call(*args)``, or the type of the exception it raised."""
    try:
        return call(*args)
    except Exception as exc:
        return type(exc)


# --- ratelimit ----------------------------------------------------------------------------------

KEYS = st.sampled_from(["a", "b", "p:brand:1", "Jörg", "", b"a", b"", 1, 0, -5, True, (1 << 63) - 1])
SCOPE_IDS = st.integers(0, 3)  # scope 3 is never registered
DT = st.integers(-50, 400)
COSTS = st.integers(0, 4)
LIMITER_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("check"), SCOPE_IDS, KEYS, DT, COSTS),
        st.tuples(st.just("many"), st.lists(st.tuples(SCOPE_IDS, KEYS), max_size=5), DT, COSTS),
        st.tuples(st.just("purge"), DT),
    ),
    max_size=60,
)
SCOPES = st.lists(st.tuples(st.integers(1, 5), st.integers(1, 4)), min_size=3, max_size=3)


@SETTINGS
@given(
    max_keys=st.integers(1, 6),
    idle=st.integers(0, 300),
    scopes=SCOPES,
    ops=LIMITER_OPS,
)
def test_ratelimit_twins_agree(
    twins: dict[str, tuple[ModuleType, ModuleType]],
    max_keys: int,
    idle: int,
    scopes: list[tuple[int, int]],
    ops: list[tuple[Any, ...]],
) -> None:
    limiters = []
    for mod in twins["ratelimit"]:
        rl = mod.RateLimiter(max_keys, idle)
        for scope_id, (interval, burst) in enumerate(scopes):
            rl.add_scope_interval(scope_id, interval * 10, burst)
        limiters.append(rl)
    now = 1000
    for op in ops:
        now += op[-2] if op[0] != "purge" else op[1]
        results = []
        for rl in limiters:
            if op[0] == "check":
                results.append(outcome(rl.check, op[1], op[2], now, op[4]))
            elif op[0] == "many":
                results.append(outcome(rl.check_many, op[1], now, op[3]))
            else:
                results.append(outcome(rl.purge, now))
            results.append(len(rl))
        assert results[:2] == results[2:], op


# --- batcher ------------------------------------------------------------------------------------

PAYLOADS = st.sampled_from([b"{}", b'{"a":1}', b'{"cmd":"win","amount":"12.50"}', b"x" * 30, b"x" * 41])
BATCHER_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(-1, 3), PAYLOADS, st.integers(0, 40)),
        st.tuples(st.just("due"), st.integers(0, 40)),
        st.tuples(st.just("flush"), st.just(0)),
        st.tuples(st.just("deadline"), st.just(0)),
    ),
    max_size=60,
)


def batches(out: Any) -> Any:
    if isinstance(out, list):
        return [batches(b) for b in out]
    if out is None or isinstance(out, type):
        return out
    return (out.shard, out.cmd_ids, out.payloads, out.nbytes, out.first_ns, out.encode(), len(out))


@SETTINGS
@given(
    max_count=st.integers(1, 5),
    max_bytes=st.integers(3, 120),
    max_delay=st.integers(0, 100),
    ops=BATCHER_OPS,
)
def test_batcher_twins_agree(
    twins: dict[str, tuple[ModuleType, ModuleType]],
    max_count: int,
    max_bytes: int,
    max_delay: int,
    ops: list[tuple[Any, ...]],
) -> None:
    pair = [mod.Batcher(3, max_count, max_bytes, max_delay) for mod in twins["batcher"]]
    now = 0
    for n, op in enumerate(ops):
        now += op[-1]
        results = []
        for b in pair:
            if op[0] == "add":
                results.append(batches(outcome(b.add, op[1], f"c{n}", op[2], now)))
            elif op[0] == "due":
                results.append(batches(b.due(now)))
            elif op[0] == "flush":
                results.append(batches(b.flush_all()))
            else:
                results.append(b.next_deadline_ns())
            results.append([b.pending(s) for s in range(3)] + [len(b)])
        assert results[:2] == results[2:], op


# --- backpressure -------------------------------------------------------------------------------

QUEUE_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("offer"), st.integers(0, 2), st.integers(0, 30)),
        st.tuples(st.just("take"), st.just(0), st.integers(0, 30)),
        st.tuples(st.just("sojourn"), st.integers(-5, 40), st.integers(0, 30)),
    ),
    max_size=80,
)


@SETTINGS
@given(
    capacity=st.integers(1, 4),
    target=st.integers(0, 20),
    interval=st.integers(0, 60),
    ops=QUEUE_OPS,
)
def test_backpressure_twins_agree(
    twins: dict[str, tuple[ModuleType, ModuleType]],
    capacity: int,
    target: int,
    interval: int,
    ops: list[tuple[Any, ...]],
) -> None:
    pair = [mod.ShardQueue(capacity, target, interval) for mod in twins["backpressure"]]
    now = 0
    for n, op in enumerate(ops):
        now += op[-1]
        results = []
        for q in pair:
            if op[0] == "offer":
                results.append(outcome(q.offer, op[1], f"i{n}", now))
            elif op[0] == "take":
                results.append(q.take(now))
            else:
                results.append(q.record_sojourn(op[1], now))
            results.append((q.state(), q.shedding, q.dropped, len(q)))
        assert results[:2] == results[2:], op


# --- shard --------------------------------------------------------------------------------------


@SETTINGS
@given(key=st.integers(0, (1 << 64) - 1), buckets=st.integers(1, (1 << 31) - 1))
def test_jump_twins_agree(twins: dict[str, tuple[ModuleType, ModuleType]], key: int, buckets: int) -> None:
    c, py = twins["shard"]
    assert c.jump(key, buckets) == py.jump(key, buckets)


@SETTINGS
@given(player_id=st.text(max_size=40), shards=st.integers(-1, 5000))
def test_shard_for_twins_agree(twins: dict[str, tuple[ModuleType, ModuleType]], player_id: str, shards: int) -> None:
    c, py = twins["shard"]
    assert c.fnv1a_64(player_id) == py.fnv1a_64(player_id)
    assert outcome(c.shard_for, player_id, shards) == outcome(py.shard_for, player_id, shards)


def test_ratelimit_twins_agree_under_churn(twins: dict[str, tuple[ModuleType, ModuleType]]) -> None:
    """Many keys through a small table: collisions, evictions and backward-shift deletions."""
    rng = random.Random(20240601)
    keys: list[str | bytes | int] = [f"p:brand:{n}" for n in range(600)]
    keys += range(300)
    keys += [f"p:{n}".encode() for n in range(100)]
    limiters = []
    for mod in twins["ratelimit"]:
        rl = mod.RateLimiter(257, 2_000)
        rl.add_scope_interval(0, 100, 3)
        rl.add_scope_interval(1, 1_000, 1)
        limiters.append(rl)
    now = 0
    for step in range(30_000):
        now += rng.randrange(0, 40)
        if step % 1000 == 999:
            assert limiters[0].purge(now) == limiters[1].purge(now)
        elif step % 7 == 0:
            items = [(rng.randrange(2), rng.choice(keys)) for _ in range(rng.randrange(1, 20))]
            assert limiters[0].check_many(items, now) == limiters[1].check_many(items, now)
        else:
            scope, key = rng.randrange(2), rng.choice(keys)
            assert limiters[0].check(scope, key, now) == limiters[1].check(scope, key, now)
        assert len(limiters[0]) == len(limiters[1])
