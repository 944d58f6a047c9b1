"""Shard queue behaviour, run against both twins."""

from __future__ import annotations

from types import ModuleType

import pytest

MS = 1_000_000
TARGET = 5 * MS
INTERVAL = 100 * MS


def test_settlements_first_fifo_within_lane(backpressure: ModuleType) -> None:
    q = backpressure.ShardQueue(10)
    settle, bet = backpressure.LANE_SETTLE, backpressure.LANE_BET
    assert (settle, bet) == (0, 1)
    assert q.offer(bet, "b1", 0)
    assert q.offer(bet, "b2", 0)
    assert q.offer(settle, "s1", 0)
    assert q.offer(settle, "s2", 0)
    assert (q.depth(settle), q.depth(bet), len(q)) == (2, 2, 4)
    assert [q.take(1) for _ in range(5)] == ["s1", "s2", "b1", "b2", None]


def test_bet_lane_bounded_settle_lane_never_refused(backpressure: ModuleType) -> None:
    q = backpressure.ShardQueue(2)
    assert q.offer(1, "b1", 0) and q.offer(1, "b2", 0)
    assert not q.offer(1, "b3", 0)
    assert q.dropped == 1
    assert all(q.offer(0, f"s{n}", 0) for n in range(500))  # past capacity and past the first ring size
    assert q.depth(0) == 500
    assert [q.take(0) for _ in range(502)] == [f"s{n}" for n in range(500)] + ["b1", "b2"]


def fill(q: object, n: int, at: int) -> None:
    for k in range(n):
        assert q.offer(0, f"s{k}", at)  # type: ignore[attr-defined]


def test_standing_queue_enters_and_leaves_shedding(backpressure: ModuleType) -> None:
    q = backpressure.ShardQueue(100, TARGET, INTERVAL)
    fill(q, 10, 0)
    q.take(TARGET)  # sojourn == target: the above-target period starts
    assert not q.shedding
    q.take(TARGET + INTERVAL - 1)
    assert not q.shedding
    q.take(TARGET + INTERVAL)
    assert q.shedding
    assert not q.offer(1, "bet", TARGET + INTERVAL)
    assert q.offer(0, "win", TARGET + INTERVAL)  # settlements are never shed
    assert q.dropped == 1
    q.record_sojourn(TARGET - 1, TARGET + INTERVAL + 1)  # below target: leave
    assert not q.shedding
    assert q.offer(1, "bet", TARGET + INTERVAL + 1)
    assert q.state() == {
        "depth_settle": 8,
        "depth_bet": 1,
        "capacity": 100,
        "shedding": False,
        "dropped": 1,
        "last_sojourn_ns": TARGET - 1,
    }


def test_below_target_sojourn_restarts_the_interval(backpressure: ModuleType) -> None:
    q = backpressure.ShardQueue(100, TARGET, INTERVAL)
    q.record_sojourn(TARGET, 0)
    q.record_sojourn(TARGET - 1, INTERVAL // 2)
    q.record_sojourn(TARGET, INTERVAL)
    assert not q.shedding  # a new period began at INTERVAL
    q.record_sojourn(TARGET * 10, 2 * INTERVAL - 1)
    assert not q.shedding
    q.record_sojourn(TARGET * 10, 2 * INTERVAL)
    assert q.shedding


def test_emptying_the_queue_ends_shedding(backpressure: ModuleType) -> None:
    q = backpressure.ShardQueue(100, TARGET, INTERVAL)
    fill(q, 3, 0)
    q.record_sojourn(TARGET, 0)
    q.record_sojourn(TARGET, INTERVAL)
    assert q.shedding
    q.take(2 * INTERVAL)
    q.take(2 * INTERVAL)
    assert q.shedding
    assert q.take(2 * INTERVAL) == "s2"
    assert not q.shedding  # both lanes empty
    q.record_sojourn(TARGET, 3 * INTERVAL)
    assert not q.shedding  # the above-target period restarted too
    q.record_sojourn(TARGET, 4 * INTERVAL)
    assert q.shedding
    assert q.take(4 * INTERVAL) is None
    assert not q.shedding


def test_sojourn_of_taken_item_is_recorded(backpressure: ModuleType) -> None:
    q = backpressure.ShardQueue(4)
    q.offer(1, "b", 1000)
    q.offer(1, "c", 2000)
    assert q.take(4500) == "b"
    assert q.state()["last_sojourn_ns"] == 3500


def test_errors(backpressure: ModuleType) -> None:
    q = backpressure.ShardQueue(1)
    with pytest.raises(ValueError):
        q.offer(2, "x", 0)
    with pytest.raises(TypeError):
        q.offer(0, None, 0)
    with pytest.raises(ValueError):
        q.depth(-1)
    with pytest.raises(ValueError):
        backpressure.ShardQueue(0)
    with pytest.raises(ValueError):
        backpressure.ShardQueue(1, -1)


def test_items_are_released(backpressure: ModuleType) -> None:
    import gc
    import weakref

    class Item:
        pass

    q = backpressure.ShardQueue(4)
    kept, dropped = Item(), Item()
    refs = [weakref.ref(kept), weakref.ref(dropped)]
    q.offer(1, kept, 0)
    q.offer(0, dropped, 0)
    assert q.take(0) is dropped
    del kept, dropped, q
    gc.collect()
    assert [r() for r in refs] == [None, None]


def test_queue_set(backpressure: ModuleType) -> None:
    qs = backpressure.QueueSet(3, 2, TARGET, INTERVAL)
    assert len(qs) == 3
    assert qs.offer(2, 1, "b", 0)
    assert qs[2].depth(1) == 1
    assert qs.take(1, 0) is None
    assert qs.take(2, 0) == "b"
    assert [s["depth_bet"] for s in qs.state()] == [0, 0, 0]
    with pytest.raises(ValueError):
        qs.offer(3, 1, "b", 0)
    with pytest.raises(ValueError):
        qs[-1]
