"""Per-shard admission queue with priority lanes, compiled twin of
``hotpath._backpressure_py``.

The rules (settlements never refused, bets shed on a full lane or a standing queue) are
documented in the twin. Each lane is a C ring of (enqueue time, owned reference): offer
and take move one pointer and one integer, and the detector is a few integer compares.
The garbage collector does not see into the rings, so items must not refer back to their
queue. ``take_many`` sizes its list once (it returns ``min(max_items, len)`` items,
since ``take`` only answers ``None`` on empty lanes) and moves each ring's owned
reference straight into it.
"""

cimport cython
from cpython.list cimport PyList_New
from cpython.ref cimport Py_DECREF, Py_INCREF, Py_XDECREF, PyObject
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc

cdef extern from "Python.h":
    void PyList_SET_ITEM_steal "PyList_SET_ITEM"(object, Py_ssize_t, PyObject*)

__all__ = ("LANE_BET", "LANE_SETTLE", "QueueSet", "ShardQueue")

LANE_SETTLE = 0
LANE_BET = 1

cdef enum:
    _SETTLE = 0
    _BET = 1
    _FIRST_SETTLE_CAP = 64


cdef struct Ring:
    PyObject** items
    int64_t* stamps
    Py_ssize_t head
    Py_ssize_t size
    Py_ssize_t mask  # capacity - 1, capacity a power of two


cdef int _ring_alloc(Ring* ring, Py_ssize_t cap) except -1:
    ring.items = <PyObject**>malloc(cap * sizeof(PyObject*))
    ring.stamps = <int64_t*>malloc(cap * sizeof(int64_t))
    if ring.items == NULL or ring.stamps == NULL:
        free(ring.items)
        free(ring.stamps)
        ring.items = NULL
        ring.stamps = NULL
        raise MemoryError()
    ring.head = 0
    ring.size = 0
    ring.mask = cap - 1
    return 0


cdef int _ring_grow(Ring* ring) except -1:
    cdef Ring bigger
    cdef Py_ssize_t k, at
    _ring_alloc(&bigger, (ring.mask + 1) * 2)
    for k in range(ring.size):
        at = (ring.head + k) & ring.mask
        bigger.items[k] = ring.items[at]
        bigger.stamps[k] = ring.stamps[at]
    bigger.size = ring.size
    free(ring.items)
    free(ring.stamps)
    ring[0] = bigger
    return 0


cdef inline void _ring_push(Ring* ring, object item, int64_t stamp) noexcept:
    cdef Py_ssize_t at = (ring.head + ring.size) & ring.mask
    Py_INCREF(item)
    ring.items[at] = <PyObject*>item
    ring.stamps[at] = stamp
    ring.size += 1


cdef inline PyObject* _ring_pop(Ring* ring, int64_t* stamp) noexcept:
    """Oldest item as an owned reference."""
    cdef PyObject* item = ring.items[ring.head]
    stamp[0] = ring.stamps[ring.head]
    ring.head = (ring.head + 1) & ring.mask
    ring.size -= 1
    return item


cdef void _ring_free(Ring* ring) noexcept:
    cdef Py_ssize_t k
    if ring.items != NULL:
        for k in range(ring.size):
            Py_XDECREF(ring.items[(ring.head + k) & ring.mask])
    free(ring.items)
    free(ring.stamps)
    ring.items = NULL
    ring.stamps = NULL
    ring.size = 0


@cython.final
cdef class ShardQueue:
    """Bounded bet lane, unbounded settle lane and a sojourn-time shedding detector."""

    cdef Ring _lanes[2]
    cdef Py_ssize_t _capacity
    cdef int64_t _target
    cdef int64_t _interval
    cdef int64_t _above_until
    cdef int64_t _dropped
    cdef int64_t _last
    cdef bint _above
    cdef bint _shedding

    def __cinit__(self, Py_ssize_t capacity, int64_t target_ns=5_000_000,
                  int64_t interval_ns=100_000_000):
        cdef Py_ssize_t cap = 1
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        if target_ns < 0 or interval_ns < 0:
            raise ValueError("target_ns and interval_ns must be >= 0")
        while cap < capacity:
            cap <<= 1
        _ring_alloc(&self._lanes[_SETTLE], _FIRST_SETTLE_CAP)
        _ring_alloc(&self._lanes[_BET], cap)
        self._capacity = capacity
        self._target = target_ns
        self._interval = interval_ns

    def __dealloc__(self):
        _ring_free(&self._lanes[_SETTLE])
        _ring_free(&self._lanes[_BET])

    cdef inline bint _offer(self, int lane, object item, int64_t now_ns) except -1:
        cdef Ring* ring
        if item is None:
            raise TypeError("item must not be None")
        if lane == _SETTLE:
            ring = &self._lanes[_SETTLE]
            if ring.size > ring.mask:
                _ring_grow(ring)
            _ring_push(ring, item, now_ns)
            return True
        if lane != _BET:
            raise ValueError(f"unknown lane {lane}")
        ring = &self._lanes[_BET]
        if self._shedding or ring.size >= self._capacity:
            self._dropped += 1
            return False
        _ring_push(ring, item, now_ns)
        return True

    cdef inline void _observe(self, int64_t sojourn_ns, int64_t now_ns) noexcept:
        self._last = sojourn_ns
        if sojourn_ns < self._target:
            self._above = False
            self._shedding = False
        elif not self._above:
            self._above = True
            self._above_until = now_ns + self._interval
        elif now_ns >= self._above_until:
            self._shedding = True

    cdef inline object _take(self, int64_t now_ns):
        cdef PyObject* raw
        cdef int64_t stamp
        if self._lanes[_SETTLE].size:
            raw = _ring_pop(&self._lanes[_SETTLE], &stamp)
        elif self._lanes[_BET].size:
            raw = _ring_pop(&self._lanes[_BET], &stamp)
        else:
            self._above = False
            self._shedding = False
            return None
        item = <object>raw
        Py_DECREF(item)
        self._observe(now_ns - stamp, now_ns)
        if not self._lanes[_SETTLE].size and not self._lanes[_BET].size:
            self._above = False
            self._shedding = False
        return item

    cdef list _take_many(self, int64_t now_ns, Py_ssize_t max_items):
        cdef Ring* settles = &self._lanes[_SETTLE]
        cdef Ring* bets = &self._lanes[_BET]
        cdef Py_ssize_t count, k
        cdef int64_t stamp
        cdef PyObject* raw
        cdef list out
        if max_items < 0:
            raise ValueError("max_items must be >= 0")
        while True:
            count = settles.size + bets.size
            out = PyList_New(count if count < max_items else max_items)
            # the allocation can run the collector, and a finalizer could use this queue
            if settles.size + bets.size == count:
                break
        if count > max_items:
            count = max_items
        if not max_items:
            return out
        for k in range(count):
            if settles.size:
                raw = _ring_pop(settles, &stamp)
            else:
                raw = _ring_pop(bets, &stamp)
            PyList_SET_ITEM_steal(out, k, raw)
            self._observe(now_ns - stamp, now_ns)
        if not settles.size and not bets.size:
            self._above = False
            self._shedding = False
        return out

    def offer(self, int lane, object item, int64_t now_ns):
        """Enqueue ``item``; ``False`` only for a refused bet (full lane, shedding)."""
        return self._offer(lane, item, now_ns)

    def take(self, int64_t now_ns):
        """Next item (settlements first), or ``None`` when both lanes are empty."""
        return self._take(now_ns)

    def take_many(self, int64_t now_ns, Py_ssize_t max_items):
        """Up to ``max_items`` items, as ``take`` would return them one by one."""
        return self._take_many(now_ns, max_items)

    def record_sojourn(self, int64_t sojourn_ns, int64_t now_ns):
        """Feed one observed queueing delay to the shedding detector."""
        self._observe(sojourn_ns, now_ns)

    def depth(self, int lane):
        """Items waiting in ``lane``."""
        if lane != _SETTLE and lane != _BET:
            raise ValueError(f"unknown lane {lane}")
        return self._lanes[lane].size

    @property
    def shedding(self):
        """Whether new bets are being refused."""
        return self._shedding

    @property
    def dropped(self):
        """Bets refused so far."""
        return self._dropped

    def state(self):
        """Snapshot for metrics."""
        return {
            "depth_settle": self._lanes[_SETTLE].size,
            "depth_bet": self._lanes[_BET].size,
            "capacity": self._capacity,
            "shedding": self._shedding,
            "dropped": self._dropped,
            "last_sojourn_ns": self._last,
        }

    def __len__(self):
        return self._lanes[_SETTLE].size + self._lanes[_BET].size


@cython.final
cdef class QueueSet:
    """One :class:`ShardQueue` per shard, same settings."""

    cdef list _queues
    cdef Py_ssize_t _shards

    def __init__(self, Py_ssize_t shards, Py_ssize_t capacity,
                 int64_t target_ns=5_000_000, int64_t interval_ns=100_000_000):
        if shards < 1:
            raise ValueError("shards must be >= 1")
        self._queues = [
            ShardQueue(capacity, target_ns, interval_ns) for _ in range(shards)
        ]
        self._shards = shards

    cdef inline ShardQueue _queue(self, Py_ssize_t shard):
        if shard < 0 or shard >= self._shards:
            raise ValueError("shard out of range")
        return <ShardQueue>self._queues[shard]

    def offer(self, Py_ssize_t shard, int lane, object item, int64_t now_ns):
        """:meth:`ShardQueue.offer` on ``shard``."""
        return self._queue(shard)._offer(lane, item, now_ns)

    def take(self, Py_ssize_t shard, int64_t now_ns):
        """:meth:`ShardQueue.take` on ``shard``."""
        return self._queue(shard)._take(now_ns)

    def take_many(self, Py_ssize_t shard, int64_t now_ns, Py_ssize_t max_items):
        """:meth:`ShardQueue.take_many` on ``shard``."""
        return self._queue(shard)._take_many(now_ns, max_items)

    def __getitem__(self, Py_ssize_t shard):
        return self._queue(shard)

    def __len__(self):
        return self._shards

    def state(self):
        """Per-shard snapshots, in shard order."""
        return [(<ShardQueue>queue).state() for queue in self._queues]
