"""Settlement batcher behaviour, run against both twins."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import orjson
import pytest

MS = 1_000_000


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
