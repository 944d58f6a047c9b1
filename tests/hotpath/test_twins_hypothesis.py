"""Random operation sequences through both twins must give identical decisions and outputs.

The bulk operations (``Batcher.add_many``, ``ShardQueue.take_many``) are interleaved with the
single ones, and each twin's bulk calls are also checked against its own single calls (those
run without extensions too).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

SETTINGS = settings(max_examples=150, deadline=None)


def outcome(call: Callable[..., Any], *args: Any) -> Any:
    """Result of ``call(*args)``, or the name of the type of the exception it raised (each twin
    defines its own exception classes)."""
    try:
        return call(*args)
    except Exception as exc:
        return Raised(type(exc).__name__)


class Raised(str):
    """An exception's type name, as an outcome."""

    __slots__ = ()


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


@pytest.mark.c_ext
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
SHARDS = st.integers(-1, 3)  # -1 and 3 are out of range
BATCHER_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), SHARDS, PAYLOADS, st.integers(0, 40)),
        st.tuples(st.just("add_many"), SHARDS, st.lists(PAYLOADS, max_size=12), st.integers(0, 40)),
        st.tuples(st.just("due"), st.integers(0, 40)),
        st.tuples(st.just("flush"), st.just(0)),
        st.tuples(st.just("deadline"), st.just(0)),
    ),
    max_size=60,
)


def batches(out: Any) -> Any:
    if isinstance(out, list):
        return [batches(b) for b in out]
    if out is None or isinstance(out, Raised):
        return out
    return (out.shard, out.cmd_ids, out.payloads, out.nbytes, out.first_ns, out.encode(), len(out))


def add_many_outcome(b: Any, shard: int, cmd_ids: list[str], payloads: list[bytes], now: int) -> Any:
    """``add_many``'s batches, or what its exception says and carries."""
    try:
        return batches(b.add_many(shard, cmd_ids, payloads, now))
    except ValueError as exc:
        index, carried = getattr(exc, "index", None), getattr(exc, "batches", None)
        return (type(exc).__name__, str(exc), index, None if carried is None else batches(carried))


def add_each_outcome(b: Any, shard: int, cmd_ids: list[str], payloads: list[bytes], now: int) -> Any:
    """The same, from ``add`` per pair (the semantics ``add_many`` must have)."""
    if not 0 <= shard < 3:
        return ("ValueError", "shard out of range", None, None)  # add_many checks it even with no pairs
    out: list[Any] = []
    for index, (cmd_id, data) in enumerate(zip(cmd_ids, payloads, strict=True)):
        try:
            batch = b.add(shard, cmd_id, data, now)
        except ValueError as exc:
            return (type(exc).__name__, str(exc), index, batches(out))
        if batch is not None:
            out.append(batch)
    return batches(out)


def batcher_state(b: Any) -> list[int | None]:
    return [b.pending(s) for s in range(3)] + [len(b), b.next_deadline_ns()]


def run_batcher_op(b: Any, op: tuple[Any, ...], n: int, now: int) -> Any:
    if op[0] == "add":
        return batches(outcome(b.add, op[1], f"c{n}", op[2], now))
    if op[0] == "add_many":
        return add_many_outcome(b, op[1], [f"c{n}.{k}" for k in range(len(op[2]))], op[2], now)
    if op[0] == "due":
        return batches(b.due(now))
    if op[0] == "flush":
        return batches(b.flush_all())
    return b.next_deadline_ns()


@pytest.mark.c_ext
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
        results = [(run_batcher_op(b, op, n, now), batcher_state(b)) for b in pair]
        assert results[0] == results[1], op


@SETTINGS
@given(
    max_count=st.integers(1, 5),
    max_bytes=st.integers(3, 120),
    max_delay=st.integers(0, 100),
    ops=BATCHER_OPS,
)
def test_add_many_is_add_per_pair(
    batcher: ModuleType, max_count: int, max_bytes: int, max_delay: int, ops: list[tuple[Any, ...]]
) -> None:
    """Within one twin: a batcher fed ``add_many`` and one fed ``add`` per pair stay identical."""
    bulk, single = (batcher.Batcher(3, max_count, max_bytes, max_delay) for _ in range(2))
    now = 0
    for n, op in enumerate(ops):
        now += op[-1]
        if op[0] == "add_many":
            cmd_ids = [f"c{n}.{k}" for k in range(len(op[2]))]
            got = add_many_outcome(bulk, op[1], cmd_ids, op[2], now)
            assert got == add_each_outcome(single, op[1], cmd_ids, op[2], now), op
        else:
            assert run_batcher_op(bulk, op, n, now) == run_batcher_op(single, op, n, now), op
        assert batcher_state(bulk) == batcher_state(single), op


# --- backpressure -------------------------------------------------------------------------------

QUEUE_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("offer"), st.integers(0, 2), st.integers(0, 30)),
        st.tuples(st.just("take"), st.just(0), st.integers(0, 30)),
        st.tuples(st.just("take_many"), st.integers(-1, 6), st.integers(0, 30)),
        st.tuples(st.just("sojourn"), st.integers(-5, 40), st.integers(0, 30)),
    ),
    max_size=80,
)


def queue_state(q: Any) -> tuple[Any, ...]:
    return (q.state(), q.shedding, q.dropped, len(q))


def run_queue_op(q: Any, op: tuple[Any, ...], n: int, now: int) -> Any:
    if op[0] == "offer":
        return outcome(q.offer, op[1], f"i{n}", now)
    if op[0] == "take":
        return q.take(now)
    if op[0] == "take_many":
        return outcome(q.take_many, now, op[1])
    return q.record_sojourn(op[1], now)


@pytest.mark.c_ext
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
        results = [(run_queue_op(q, op, n, now), queue_state(q)) for q in pair]
        assert results[0] == results[1], op


@SETTINGS
@given(
    capacity=st.integers(1, 4),
    target=st.integers(0, 20),
    interval=st.integers(0, 60),
    ops=QUEUE_OPS,
)
def test_take_many_is_take_until_none(
    backpressure: ModuleType, capacity: int, target: int, interval: int, ops: list[tuple[Any, ...]]
) -> None:
    """Within one twin: a queue drained by ``take_many`` and one drained by ``take`` calls stay
    identical, hidden detector state included (later decisions would differ otherwise)."""
    bulk, single = (backpressure.ShardQueue(capacity, target, interval) for _ in range(2))
    now = 0
    for n, op in enumerate(ops):
        now += op[-1]
        if op[0] == "take_many" and op[1] >= 0:
            got = bulk.take_many(now, op[1])
            want = []
            for _ in range(op[1]):
                item = single.take(now)
                if item is None:
                    break
                want.append(item)
            assert got == want, op
        elif op[0] == "take_many":
            assert isinstance(outcome(bulk.take_many, now, op[1]), Raised)
        else:
            assert run_queue_op(bulk, op, n, now) == run_queue_op(single, op, n, now), op
        assert queue_state(bulk) == queue_state(single), op


# --- shard --------------------------------------------------------------------------------------


@pytest.mark.c_ext
@SETTINGS
@given(key=st.integers(0, (1 << 64) - 1), buckets=st.integers(1, (1 << 31) - 1))
def test_jump_twins_agree(twins: dict[str, tuple[ModuleType, ModuleType]], key: int, buckets: int) -> None:
    c, py = twins["shard"]
    assert c.jump(key, buckets) == py.jump(key, buckets)


@pytest.mark.c_ext
@SETTINGS
@given(player_id=st.text(max_size=40), shards=st.integers(-1, 5000))
def test_shard_for_twins_agree(twins: dict[str, tuple[ModuleType, ModuleType]], player_id: str, shards: int) -> None:
    c, py = twins["shard"]
    assert c.fnv1a_64(player_id) == py.fnv1a_64(player_id)
    assert outcome(c.shard_for, player_id, shards) == outcome(py.shard_for, player_id, shards)


@pytest.mark.c_ext
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
