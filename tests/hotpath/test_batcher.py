"""Settlement batcher behaviour, run against both twins."""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import orjson
import pytest

MS = 1_000_000
NO_EXTENSIONS = bool(os.environ.get("GATEWAY_NO_EXTENSIONS"))


def payload(n: int, pad: int = 0) -> bytes:
    return orjson.dumps({"cmd": f"c{n}", "pad": "x" * pad})


def summary(batch: Any) -> tuple[int, list[str], list[bytes], int, int]:
    return (batch.shard, batch.cmd_ids, batch.payloads, batch.nbytes, batch.first_ns)


def test_count_bound_closes_batch(batcher: ModuleType) -> None:
    b = batcher.Batcher(shards=4, max_count=3, max_bytes=1 << 20, max_delay_ns=10 * MS)
    p = [payload(n) for n in range(4)]
    assert b.add(2, "c0", p[0], 100) is None
    assert b.add(2, "c1", p[1], 200) is None
    assert b.pending(2) == 2
    batch = b.add(2, "c2", p[2], 300)
    assert summary(batch) == (2, ["c0", "c1", "c2"], p[:3], len(batch.encode()), 100)
    assert len(batch) == 3
    assert b.pending(2) == 0
    assert b.add(2, "c3", p[3], 400) is None
    assert b.next_deadline_ns() == 400 + 10 * MS


def test_encode_is_one_json_array(batcher: ModuleType) -> None:
    b = batcher.Batcher(shards=1, max_count=3, max_bytes=1 << 20, max_delay_ns=MS)
    docs = [{"id": "a", "amount": "1.00"}, {"id": "b", "n": [1, 2]}, {"id": "ü"}]
    batch = None
    for n, doc in enumerate(docs):
        batch = b.add(0, f"c{n}", orjson.dumps(doc), 0)
    assert batch is not None
    body = batch.encode()
    assert body == b"[" + b",".join(orjson.dumps(doc) for doc in docs) + b"]"
    assert orjson.loads(body) == docs
    assert batch.nbytes == len(body)
    assert batcher.Batch(0, [], [], 2, 0).encode() == b"[]"
    assert batcher.Batch(0, ["x"], [b"{}"], 4, 0).encode() == b"[{}]"


def test_byte_bound_flushes_before_overflow(batcher: ModuleType) -> None:
    ten = b'{"a":"12"}'
    assert len(ten) == 10
    b = batcher.Batcher(shards=1, max_count=100, max_bytes=2 + 10 + 1 + 10, max_delay_ns=MS)
    assert b.add(0, "a", ten, 1) is None
    assert b.add(0, "b", ten, 2) is None  # exactly max_bytes: stays open until something overflows it
    batch = b.add(0, "c", b"{}", 3)
    assert summary(batch) == (0, ["a", "b"], [ten, ten], 23, 1)
    assert len(batch.encode()) == 23
    assert b.pending(0) == 1
    assert summary(b.flush_all()[0]) == (0, ["c"], [b"{}"], 4, 3)


def test_oversized_payload_is_rejected_without_side_effects(batcher: ModuleType) -> None:
    b = batcher.Batcher(shards=1, max_count=10, max_bytes=12, max_delay_ns=MS)
    assert b.add(0, "a", b"{}", 0) is None
    with pytest.raises(ValueError):
        b.add(0, "big", b"x" * 11, 0)
    assert b.add(0, "max", b"x" * 10, 0) is not None  # 2 + 10 fits alone; closes "a" first
    assert b.pending(0) == 1


def test_age_bound_and_deadlines(batcher: ModuleType) -> None:
    b = batcher.Batcher(shards=3, max_count=100, max_bytes=1 << 20, max_delay_ns=5 * MS)
    assert b.next_deadline_ns() is None
    assert b.due(10**12) == []
    b.add(1, "x", b"{}", 10 * MS)
    b.add(0, "y", b"{}", 12 * MS)
    b.add(1, "z", b"{}", 13 * MS)
    assert b.next_deadline_ns() == 15 * MS
    assert b.due(15 * MS - 1) == []
    [first] = b.due(15 * MS)
    assert (first.shard, first.cmd_ids, first.first_ns) == (1, ["x", "z"], 10 * MS)
    assert b.next_deadline_ns() == 17 * MS
    assert [x.shard for x in b.due(10**12)] == [0]
    assert b.next_deadline_ns() is None
    assert len(b) == 0


def test_flush_all_in_shard_order(batcher: ModuleType) -> None:
    b = batcher.Batcher(shards=4, max_count=100, max_bytes=1 << 20, max_delay_ns=MS)
    for shard in (3, 0, 2, 3):
        b.add(shard, f"s{shard}", b"{}", 0)
    assert len(b) == 4
    assert [(x.shard, len(x)) for x in b.flush_all()] == [(0, 1), (2, 1), (3, 2)]
    assert b.flush_all() == []


def test_zero_delay_and_single_command_batches(batcher: ModuleType) -> None:
    b = batcher.Batcher(shards=1, max_count=1, max_bytes=100, max_delay_ns=0)
    assert b.add(0, "a", b"{}", 5).cmd_ids == ["a"]
    b2 = batcher.Batcher(shards=1, max_count=2, max_bytes=100, max_delay_ns=0)
    b2.add(0, "a", b"{}", 5)
    assert b2.next_deadline_ns() == 5
    assert [x.cmd_ids for x in b2.due(5)] == [["a"]]


def test_errors(batcher: ModuleType) -> None:
    b = batcher.Batcher(shards=2, max_count=2, max_bytes=100, max_delay_ns=MS)
    for shard in (-1, 2):
        with pytest.raises(ValueError):
            b.add(shard, "a", b"{}", 0)
        with pytest.raises(ValueError):
            b.pending(shard)
    for args in ((0, 1, 3, 0), (1, 0, 3, 0), (1, 1, 2, 0), (1, 1, 3, -1)):
        with pytest.raises(ValueError):
            batcher.Batcher(*args)


# --- bulk: add_many is add over the pairs, in order -----------------------------------------------


def add_each(b: Any, shard: int, cmd_ids: list[str], payloads: list[bytes], now: int) -> list[Any]:
    """The reference for ``add_many``: ``add`` per pair, keeping the batches it closes."""
    out = []
    for cmd_id, data in zip(cmd_ids, payloads, strict=True):
        batch = b.add(shard, cmd_id, data, now)
        if batch is not None:
            out.append(batch)
    return out


def state(b: Any, shards: int) -> tuple[list[int], int, int | None]:
    return ([b.pending(s) for s in range(shards)], len(b), b.next_deadline_ns())


@pytest.mark.parametrize(
    ("max_count", "max_bytes"),
    [(1, 1 << 20), (3, 1 << 20), (100, 1 << 20), (7, 60), (1000, 45), (4, 3 + 30)],
)
def test_add_many_equals_sequential_add(batcher: ModuleType, max_count: int, max_bytes: int) -> None:
    bulk = batcher.Batcher(2, max_count, max_bytes, 5 * MS)
    single = batcher.Batcher(2, max_count, max_bytes, 5 * MS)
    sizes = [0, 3, 12, 1, 25, 7, 7, 30, 2, 18]
    n = 0
    for call, count in enumerate([0, 1, 5, 17, 2, 40, 3, 0, 9, 64]):
        cmd_ids = [f"c{n + k}" for k in range(count)]
        payloads = [payload(n + k, sizes[(n + k) % len(sizes)])[: max_bytes - 2] for k in range(count)]
        n += count
        shard, now = call % 2, call * MS
        got = bulk.add_many(shard, cmd_ids, tuple(payloads) if call % 3 else payloads, now)
        assert isinstance(got, list)
        assert [summary(x) for x in got] == [summary(x) for x in add_each(single, shard, cmd_ids, payloads, now)]
        assert all(x.nbytes == len(x.encode()) <= max_bytes and len(x) <= max_count for x in got)
        assert state(bulk, 2) == state(single, 2)
    assert [summary(x) for x in bulk.flush_all()] == [summary(x) for x in single.flush_all()]


def test_add_many_closes_several_batches_in_one_call(batcher: ModuleType) -> None:
    b = batcher.Batcher(shards=1, max_count=3, max_bytes=1 << 20, max_delay_ns=MS)
    assert b.add(0, "a", b"{}", 1) is None
    out = b.add_many(0, [f"c{n}" for n in range(7)], [b"{}"] * 7, 2)
    assert [(x.cmd_ids, x.first_ns) for x in out] == [(["a", "c0", "c1"], 1), (["c2", "c3", "c4"], 2)]
    assert b.pending(0) == 2
    assert b.next_deadline_ns() == 2 + MS
    assert b.add_many(0, [], [], 3) == []
    assert b.pending(0) == 2


def test_add_many_oversize_keeps_the_pairs_before_it(batcher: ModuleType) -> None:
    """Sequential semantics: the pairs before the rejected one stay added, those after are not
    looked at, and the batches already closed travel on the exception to be sent."""
    b = batcher.Batcher(shards=1, max_count=2, max_bytes=12, max_delay_ns=MS)
    ids = ["a", "b", "c", "big", "d"]
    data = [b"{}", b"{}", b"{}", b"x" * 11, b"{}"]
    with pytest.raises(batcher.PayloadTooLarge) as info:
        b.add_many(0, ids, data, 7)
    exc: Any = info.value
    assert issubclass(batcher.PayloadTooLarge, ValueError)
    assert str(exc) == "payload of 11 bytes exceeds max_bytes=12"
    assert exc.index == 3
    assert [summary(x) for x in exc.batches] == [(0, ["a", "b"], [b"{}", b"{}"], 7, 7)]
    assert b.pending(0) == 1
    assert [x.cmd_ids for x in b.flush_all()] == [["c"]]
    # the same through single calls
    single = batcher.Batcher(shards=1, max_count=2, max_bytes=12, max_delay_ns=MS)
    assert [x.cmd_ids for x in add_each(single, 0, ids[:3], data[:3], 7)] == [["a", "b"]]
    with pytest.raises(batcher.PayloadTooLarge) as info:
        single.add(0, "big", b"x" * 11, 7)
    assert (info.value.index, info.value.batches, str(info.value)) == (0, [], str(exc))
    assert single.pending(0) == 1


def test_add_many_rejected_first_pair_changes_nothing(batcher: ModuleType) -> None:
    b = batcher.Batcher(shards=2, max_count=5, max_bytes=12, max_delay_ns=MS)
    b.add(1, "a", b"{}", 0)
    with pytest.raises(batcher.PayloadTooLarge) as info:
        b.add_many(1, ["big", "b"], [b"x" * 20, b"{}"], 1)
    assert (info.value.index, info.value.batches) == (0, [])
    assert state(b, 2) == ([0, 1], 1, MS)


def test_add_many_errors(batcher: ModuleType) -> None:
    b = batcher.Batcher(shards=2, max_count=2, max_bytes=100, max_delay_ns=MS)
    for shard in (-1, 2):
        with pytest.raises(ValueError, match="shard out of range"):
            b.add_many(shard, [], [], 0)  # checked even when there is nothing to add
    with pytest.raises(ValueError, match="differ in length"):
        b.add_many(0, ["a", "b"], [b"{}"], 0)
    assert len(b) == 0


@pytest.mark.c_ext
@pytest.mark.skipif(NO_EXTENSIONS, reason="GATEWAY_NO_EXTENSIONS is set")
def test_compiled_add_many_checks_types_before_adding() -> None:
    from hotpath._batcher_c import Batcher

    b = Batcher(shards=1, max_count=2, max_bytes=100, max_delay_ns=MS)
    cases: list[tuple[Any, Any]] = [
        (["a", 1], [b"{}", b"{}"]),
        (["a", "b"], [b"{}", "{}"]),
        (["a", "b"], [b"{}", None]),
    ]
    for ids, data in cases:
        with pytest.raises(TypeError):
            b.add_many(0, ids, data, 0)
        assert len(b) == 0
    with pytest.raises(TypeError):
        b.add_many(0, iter(["a"]), [b"{}"], 0)  # type: ignore[arg-type]
    assert b.add_many(0, (), (), 0) == []


def test_add_many_releases_references(batcher: ModuleType) -> None:
    import gc
    import sys

    ids = [f"id-{n}-{'x' * n}" for n in range(40)]
    data = [payload(n, n) for n in range(40)]
    before = [sys.getrefcount(x) for x in ids + data]
    b = batcher.Batcher(shards=2, max_count=7, max_bytes=200, max_delay_ns=MS)
    for round_ in range(20):
        kept = b.add_many(round_ % 2, ids, data, round_)
        b.add(0, ids[0], data[0], round_)
        del kept
    b.flush_all()
    b.add_many(1, ids[:5], data[:5], 0)
    del b
    gc.collect()
    assert [sys.getrefcount(x) for x in ids + data] == before


@pytest.mark.c_ext
@pytest.mark.skipif(NO_EXTENSIONS, reason="GATEWAY_NO_EXTENSIONS is set")
@pytest.mark.parametrize("allocations", [1, 3, 8])
def test_compiled_add_many_survives_inputs_changed_by_a_finalizer(allocations: int) -> None:
    """Closing a batch allocates, so the collector can run there, and a finalizer can empty the
    caller's lists while ``add_many`` walks them: it must notice instead of reading freed items."""
    import gc

    from hotpath._batcher_c import Batcher

    class Saboteur:
        def __init__(self, victims: list[list[Any]]) -> None:
            self.victims = victims
            self.cycle = self  # only the collector frees it

        def __del__(self) -> None:
            for victim in self.victims:
                victim.clear()

    ids = [f"id{n}-{'x' * 20}" for n in range(200)]
    data = [b"%d" % n * 10 for n in range(200)]
    b = Batcher(shards=1, max_count=1, max_bytes=1 << 20, max_delay_ns=0)
    old = gc.get_threshold()
    gc.disable()
    Saboteur([ids, data])
    # the collector runs on the tracked allocation after the next ``allocations``: add_many's own
    # result list is its first, then each closed batch makes three
    gc.set_threshold(gc.get_count()[0] + allocations)
    gc.enable()
    try:
        b.add_many(0, ids, data, 0)
    except RuntimeError as exc:
        raised: RuntimeError | None = exc
    else:
        raised = None
    finally:
        gc.set_threshold(*old)
    assert not ids and not data
    assert raised is not None
    assert str(raised) == "cmd_ids or payloads changed during add_many"
