"""Shard queue behaviour, run against both twins."""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

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


# --- bulk: take_many is take up to max_items times, stopping at the first None -------------------


def take_each(q: Any, now: int, max_items: int) -> list[object]:
    """The reference for ``take_many``."""
    out = []
    for _ in range(max_items):
        item = q.take(now)
        if item is None:
            break
        out.append(item)
    return out


def snapshot(q: Any) -> tuple[object, ...]:
    return (q.state(), q.shedding, q.dropped, len(q))


def test_take_many_equals_sequential_take(backpressure: ModuleType) -> None:
    bulk, single = (backpressure.ShardQueue(8, TARGET, INTERVAL) for _ in range(2))
    now = 0
    for step, (offers, max_items, dt) in enumerate(
        [(5, 2, 0), (9, 3, TARGET), (0, 1, INTERVAL), (12, 20, 1), (3, 0, INTERVAL), (70, 64, 2 * INTERVAL)]
    ):
        for k in range(offers):
            lane, item = (k * 7 + step) % 3 % 2, f"i{step}.{k}"
            assert bulk.offer(lane, item, now + k) == single.offer(lane, item, now + k)
        now += dt
        assert bulk.take_many(now, max_items) == take_each(single, now, max_items)
        assert snapshot(bulk) == snapshot(single)


def test_take_many_serves_settlements_first_and_stops_when_empty(backpressure: ModuleType) -> None:
    q = backpressure.ShardQueue(10)
    for item in ("b1", "b2"):
        q.offer(1, item, 0)
    for item in ("s1", "s2", "s3"):
        q.offer(0, item, 0)
    assert q.take_many(0, 2) == ["s1", "s2"]
    assert q.take_many(0, 100) == ["s3", "b1", "b2"]
    assert q.take_many(0, 100) == []
    assert len(q) == 0


def test_take_many_feeds_every_sojourn_to_the_detector(backpressure: ModuleType) -> None:
    """Each taken item's sojourn is observed in turn: the detector can enter shedding in the middle
    of one call, and the last sojourn is what the state reports."""
    q = backpressure.ShardQueue(100, TARGET, INTERVAL)
    q.record_sojourn(TARGET, 0)  # an above-target period began at 0
    for stamp in (INTERVAL - TARGET, 2 * INTERVAL, 0):
        q.offer(0, f"s{stamp}", stamp)
    q.offer(0, "young", 2 * INTERVAL)
    assert q.take_many(INTERVAL, 1) == [f"s{INTERVAL - TARGET}"]  # sojourn == target at INTERVAL
    assert q.shedding
    assert q.take_many(2 * INTERVAL, 2) == [f"s{2 * INTERVAL}", "s0"]  # 0 below target, then above
    assert q.state()["last_sojourn_ns"] == 2 * INTERVAL
    assert not q.shedding  # the below-target item left it; the next one restarted the period
    assert q.take_many(2 * INTERVAL + INTERVAL, 5) == ["young"]
    assert not q.shedding  # emptied


def test_take_many_leaves_shedding_when_it_empties_the_queue(backpressure: ModuleType) -> None:
    q = backpressure.ShardQueue(100, TARGET, INTERVAL)
    fill(q, 3, 0)
    q.record_sojourn(TARGET, 0)
    q.record_sojourn(TARGET, INTERVAL)
    assert q.shedding
    assert q.take_many(2 * INTERVAL, 2) == ["s0", "s1"]
    assert q.shedding
    assert q.take_many(2 * INTERVAL, 1) == ["s2"]
    assert not q.shedding
    q.record_sojourn(TARGET, 3 * INTERVAL)
    q.record_sojourn(TARGET, 4 * INTERVAL)
    assert q.shedding
    assert q.take_many(4 * INTERVAL, 1) == []  # found empty, like take returning None
    assert not q.shedding


def test_take_many_of_zero_changes_nothing(backpressure: ModuleType) -> None:
    q = backpressure.ShardQueue(100, TARGET, INTERVAL)
    q.record_sojourn(TARGET, 0)
    q.record_sojourn(TARGET, INTERVAL)
    before = snapshot(q)
    assert q.take_many(INTERVAL, 0) == []  # empty, but no take was made
    assert snapshot(q) == before
    assert q.shedding
    with pytest.raises(ValueError):
        q.take_many(0, -1)
    assert snapshot(q) == before


def test_take_many_hands_items_over(backpressure: ModuleType) -> None:
    import gc
    import weakref

    class Item:
        pass

    q = backpressure.ShardQueue(8)
    items = [Item() for _ in range(6)]
    refs = [weakref.ref(item) for item in items]
    for n, item in enumerate(items):
        q.offer(n % 2, item, 0)
    taken = q.take_many(0, 4)
    assert taken == [items[0], items[2], items[4], items[1]]
    del items, item
    gc.collect()
    assert all(r() is not None for r in refs)
    del taken, q
    gc.collect()
    assert [r() for r in refs] == [None] * 6


def test_queue_set_take_many(backpressure: ModuleType) -> None:
    qs = backpressure.QueueSet(3, 4, TARGET, INTERVAL)
    for item in ("b1", "b2"):
        qs.offer(1, 1, item, 0)
    qs.offer(1, 0, "s1", 0)
    assert qs.take_many(0, 0, 10) == []
    assert qs.take_many(1, 0, 10) == ["s1", "b1", "b2"]
    with pytest.raises(ValueError):
        qs.take_many(3, 0, 1)
    with pytest.raises(ValueError):
        qs.take_many(0, 0, -1)


@pytest.mark.c_ext
@pytest.mark.skipif(bool(os.environ.get("GATEWAY_NO_EXTENSIONS")), reason="GATEWAY_NO_EXTENSIONS is set")
def test_compiled_take_many_survives_a_finalizer_taking_from_the_queue() -> None:
    """``take_many`` allocates its list before moving items into it; the collector can run there,
    and a finalizer can take from the same queue: it must size the list again, not pop past the end."""
    import gc

    from hotpath._backpressure_c import ShardQueue

    q = ShardQueue(100)
    for n in range(10):
        q.offer(n % 2, f"i{n}", 0)

    class Saboteur:
        def __init__(self) -> None:
            self.cycle = self  # only the collector frees it
            self.took: list[object] = []

        def __del__(self) -> None:
            for _ in range(7):
                self.took.append(q.take(0))

    took = Saboteur().took  # keeps what the finalizer took
    old = gc.get_threshold()
    gc.disable()
    # with the list free list used up, a new list is a tracked allocation
    lists: list[list[object]] = [[] for _ in range(200)]
    gc.set_threshold(gc.get_count()[0])  # the collector runs on the next one, take_many's
    gc.enable()
    try:
        out = q.take_many(0, 100)
    finally:
        gc.set_threshold(*old)
    del lists
    assert len(took) == 7
    assert sorted(took + out, key=lambda s: int(str(s)[1:])) == [f"i{n}" for n in range(10)]
    assert len(q) == 0
