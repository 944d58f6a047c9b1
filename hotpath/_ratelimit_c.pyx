"""GCRA rate limiter, compiled twin of ``hotpath._ratelimit_py`` (rules there).

State lives in one C open-addressing table (linear probing, load <= 1/2, backward-shift
deletion) of ``(h1, h2, TAT, lru_prev, lru_next)`` slots threaded on an intrusive LRU
list, so a check allocates nothing and touches no Python object but the key. A key is
identified by two independent 64-bit hashes of (scope, type, value): ``h1`` from
CPython's keyed SipHash of the key (cached on the str; crafted keys cannot pile up in
one probe run) mixed with a per-limiter random seed, ``h2`` a seeded word-at-a-time
hash of its bytes. Eviction and expiry follow LRU order, which does not depend on the
table layout, so this twin evicts exactly what the pure twin evicts. The table takes
64 bytes per ``max_keys``, allocated up front (zeroed pages are touched as keys arrive).
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_Check, PyBytes_GET_SIZE
from cpython.long cimport PyLong_AsLongLong, PyLong_Check
from cpython.object cimport PyObject_Hash
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_Check
from libc.stdint cimport int32_t, int64_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy

import os

__all__ = ("MAX_BURST", "MAX_KEYS", "MAX_SCOPES", "MAX_SPAN_NS", "RateLimiter")

MAX_SCOPES = 256
MAX_KEYS = 1 << 28
MAX_BURST = (1 << 31) - 1
MAX_SPAN_NS = 1 << 61

cdef enum:
    _NSCOPES = 256
    _SWEEP = 2
    _STACK_ITEMS = 16

cdef uint64_t _K1 = 0x9E3779B97F4A7C15ULL
cdef uint64_t _K2 = 0xC2B2AE3D27D4EB4FULL
cdef uint64_t _K3 = 0x165667B19E3779F9ULL


cdef struct Slot:
    uint64_t h1  # 0 marks an empty slot
    uint64_t h2
    int64_t tat
    int32_t prev  # LRU neighbours as slot indices, -1 at the ends
    int32_t next


cdef struct Scope:
    int64_t interval  # T in ns; 0 = not registered
    int64_t span  # T * burst
    int64_t burst


cdef inline uint64_t _fmix(uint64_t k) noexcept nogil:
    k ^= k >> 33
    k *= 0xFF51AFD7ED558CCDULL
    k ^= k >> 33
    k *= 0xC4CEB9FE1A85EC53ULL
    k ^= k >> 33
    return k


cdef inline uint64_t _words(const char* p, Py_ssize_t n, uint64_t h) noexcept nogil:
    cdef uint64_t w
    cdef Py_ssize_t left = n
    h ^= <uint64_t>n * _K1
    while left >= 8:
        memcpy(&w, p, 8)
        h = (h ^ w) * _K2
        h ^= h >> 29
        p += 8
        left -= 8
    if left:
        w = 0
        memcpy(&w, p, left)
        h = (h ^ w) * _K2
        h ^= h >> 29
    return _fmix(h ^ (<uint64_t>n * _K3))


cdef struct Ident:
    uint64_t h1
    uint64_t h2
    int scope


@cython.final
cdef class RateLimiter:
    """GCRA limiter over registered scopes; rules in ``hotpath._ratelimit_py``."""

    cdef Slot* _slots
    cdef uint64_t _mask
    cdef Py_ssize_t _count
    cdef Py_ssize_t _max_keys
    cdef int64_t _idle
    cdef int32_t _head
    cdef int32_t _tail
    cdef uint64_t _seed1
    cdef uint64_t _seed2
    cdef Scope _scopes[_NSCOPES]

    def __cinit__(self, Py_ssize_t max_keys, int64_t idle_expiry_ns):
        cdef uint64_t size = 8
        cdef int i
        if max_keys < 1 or max_keys > MAX_KEYS:
            raise ValueError(f"max_keys must be in [1, {MAX_KEYS}]")
        if idle_expiry_ns < 0:
            raise ValueError("idle_expiry_ns must be >= 0")
        while size < <uint64_t>max_keys * 2:
            size <<= 1
        self._slots = <Slot*>calloc(size, sizeof(Slot))
        if self._slots == NULL:
            raise MemoryError()
        self._mask = size - 1
        self._count = 0
        self._max_keys = max_keys
        self._idle = idle_expiry_ns
        self._head = -1
        self._tail = -1
        seeds = os.urandom(16)
        memcpy(&self._seed1, <const char*>seeds, 8)
        memcpy(&self._seed2, (<const char*>seeds) + 8, 8)
        for i in range(_NSCOPES):
            self._scopes[i].interval = 0

    def __dealloc__(self):
        free(self._slots)

    def add_scope(self, int scope_id, int64_t rate_per_s, int64_t burst):
        """Register (or retune) ``scope_id``: ``rate_per_s``, ``burst`` at once."""
        if rate_per_s < 1 or rate_per_s > 1_000_000_000:
            raise ValueError("rate_per_s must be in [1, 1e9]")
        self.add_scope_interval(scope_id, 1_000_000_000 // rate_per_s, burst)

    def add_scope_interval(self, int scope_id, int64_t interval_ns, int64_t burst):
        """Register (or retune) ``scope_id``: one call per ``interval_ns``."""
        if scope_id < 0 or scope_id >= _NSCOPES:
            raise ValueError(f"scope_id must be in [0, {MAX_SCOPES})")
        if burst < 1 or burst > MAX_BURST:
            raise ValueError(f"burst must be in [1, {MAX_BURST}]")
        if interval_ns < 1 or interval_ns > MAX_SPAN_NS // burst:
            raise ValueError(
                "interval_ns must be >= 1 and interval_ns * burst <= 2**61"
            )
        self._scopes[scope_id].interval = interval_ns
        self._scopes[scope_id].span = interval_ns * burst
        self._scopes[scope_id].burst = burst

    cdef inline Scope* _scope(self, int scope_id, int64_t cost) except NULL:
        if scope_id < 0 or scope_id >= _NSCOPES or self._scopes[scope_id].interval == 0:
            raise KeyError(scope_id)
        if cost < 1 or cost > self._scopes[scope_id].burst:
            raise ValueError("cost must be in [1, burst]")
        return &self._scopes[scope_id]

    cdef inline int _ident(self, int scope_id, object key, Ident* out) except -1:
        cdef Py_ssize_t n
        cdef const char* p
        cdef int64_t v
        cdef uint64_t salt = (<uint64_t>scope_id + 1) * _K3
        if PyUnicode_Check(key):
            p = PyUnicode_AsUTF8AndSize(key, &n)
            out.h1 = _fmix(<uint64_t>PyObject_Hash(key) ^ self._seed1 ^ salt)
            out.h2 = _words(p, n, self._seed2 ^ salt)
        elif PyBytes_Check(key):
            p = PyBytes_AS_STRING(key)
            n = PyBytes_GET_SIZE(key)
            out.h1 = _fmix(<uint64_t>PyObject_Hash(key) ^ self._seed1 ^ salt ^ _K1)
            out.h2 = _words(p, n, self._seed2 ^ salt ^ _K1)
        elif PyLong_Check(key):
            v = PyLong_AsLongLong(key)
            out.h1 = _fmix(<uint64_t>v ^ self._seed1 ^ salt ^ _K2)
            out.h2 = _fmix((<uint64_t>v + self._seed2) ^ salt ^ _K2)
        else:
            raise TypeError(f"key must be str, bytes or int, not {type(key).__name__}")
        if out.h1 == 0:
            out.h1 = 1
        out.scope = scope_id
        return 0

    # -- table ------------------------------------------------------------------

    cdef inline Py_ssize_t _find(self, uint64_t h1, uint64_t h2) noexcept nogil:
        """Slot index of the key, or ``~i``: ``i`` is the empty slot it would take."""
        cdef uint64_t i = h1 & self._mask
        cdef Slot* s
        while True:
            s = &self._slots[i]
            if s.h1 == 0:
                return ~(<Py_ssize_t>i)
            if s.h1 == h1 and s.h2 == h2:
                return <Py_ssize_t>i
            i = (i + 1) & self._mask

    cdef inline void _unlink(self, int32_t i) noexcept nogil:
        cdef Slot* s = &self._slots[i]
        if s.prev >= 0:
            self._slots[s.prev].next = s.next
        else:
            self._head = s.next
        if s.next >= 0:
            self._slots[s.next].prev = s.prev
        else:
            self._tail = s.prev

    cdef inline void _append(self, int32_t i) noexcept nogil:
        cdef Slot* s = &self._slots[i]
        s.prev = self._tail
        s.next = -1
        if self._tail >= 0:
            self._slots[self._tail].next = i
        else:
            self._head = i
        self._tail = i

    cdef inline void _touch(self, int32_t i) noexcept nogil:
        if i != self._tail:
            self._unlink(i)
            self._append(i)

    cdef inline void _relocate(self, uint64_t src, uint64_t dst) noexcept nogil:
        cdef Slot* s = &self._slots[dst]
        s[0] = self._slots[src]
        if s.prev >= 0:
            self._slots[s.prev].next = <int32_t>dst
        else:
            self._head = <int32_t>dst
        if s.next >= 0:
            self._slots[s.next].prev = <int32_t>dst
        else:
            self._tail = <int32_t>dst

    cdef void _remove(self, int32_t slot) noexcept nogil:
        cdef uint64_t mask = self._mask
        cdef uint64_t i = <uint64_t>slot
        cdef uint64_t j = i
        cdef uint64_t home
        self._unlink(slot)
        self._count -= 1
        while True:
            j = (j + 1) & mask
            if self._slots[j].h1 == 0:
                break
            home = self._slots[j].h1 & mask
            # The entry at j may fill the hole at i unless its home is cyclically
            # in (i, j].
            if (i <= j and i < home <= j) or (i > j and (home > i or home <= j)):
                continue
            self._relocate(j, i)
            i = j
        self._slots[i].h1 = 0

    cdef void _store(self, Ident* ident, int64_t tat) noexcept nogil:
        cdef Py_ssize_t i = self._find(ident.h1, ident.h2)
        if i >= 0:
            self._slots[i].tat = tat
            self._touch(<int32_t>i)
            return
        self._insert(i, ident, tat)

    cdef inline void _insert(self, Py_ssize_t i, Ident* ident,
                             int64_t tat) noexcept nogil:
        """A new key at free slot ``~i`` (``i`` from ``_find``), evicting the
        stalest key first when the table is full."""
        if self._count >= self._max_keys:
            self._remove(self._head)
            i = self._find(ident.h1, ident.h2)
        i = ~i
        self._slots[i].h1 = ident.h1
        self._slots[i].h2 = ident.h2
        self._slots[i].tat = tat
        self._append(<int32_t>i)
        self._count += 1

    cdef inline void _sweep(self, int64_t now_ns) noexcept nogil:
        cdef int left = _SWEEP
        cdef int64_t limit = now_ns - self._idle
        while left > 0 and self._head >= 0 and self._slots[self._head].tat <= limit:
            self._remove(self._head)
            left -= 1

    # -- API --------------------------------------------------------------------

    def check(self, int scope_id, object key, int64_t now_ns, int64_t cost=1):
        """0 if allowed (and consumed), else the exact retry-after in ns (nothing
        consumed)."""
        cdef Scope* scope = self._scope(scope_id, cost)
        cdef Ident ident
        cdef Py_ssize_t i
        cdef int64_t tat = now_ns
        cdef int64_t retry
        self._ident(scope_id, key, &ident)
        self._sweep(now_ns)
        i = self._find(ident.h1, ident.h2)
        if i >= 0 and self._slots[i].tat > now_ns:
            tat = self._slots[i].tat
        tat += scope.interval * cost
        retry = tat - scope.span - now_ns
        if retry > 0:
            # A refused key always exists: a fresh one takes cost <= burst.
            self._touch(<int32_t>i)
            return retry
        if i >= 0:
            self._slots[i].tat = tat
            self._touch(<int32_t>i)
        else:
            self._insert(i, &ident, tat)
        return 0

    def check_many(self, items, int64_t now_ns, int64_t cost=1):
        """All-or-nothing :meth:`check` over ``(scope_id, key)`` pairs: 0 or the
        largest wait."""
        cdef Py_ssize_t n
        cdef Ident stack_idents[_STACK_ITEMS]
        cdef int64_t stack_tats[_STACK_ITEMS]
        cdef Py_ssize_t stack_slots[_STACK_ITEMS]
        cdef Ident* idents = stack_idents
        cdef int64_t* tats = stack_tats
        cdef Py_ssize_t* slots = stack_slots
        cdef Py_ssize_t k, m, i
        cdef int64_t tat, worst = 0
        cdef Scope* scope
        cdef int scope_id
        if not isinstance(items, (tuple, list)):
            items = tuple(items)
        n = len(items)
        if n > _STACK_ITEMS:
            idents = <Ident*>malloc(n * sizeof(Ident))
            tats = <int64_t*>malloc(n * sizeof(int64_t))
            slots = <Py_ssize_t*>malloc(n * sizeof(Py_ssize_t))
            if idents == NULL or tats == NULL or slots == NULL:
                free(idents)
                free(tats)
                free(slots)
                raise MemoryError()
        try:
            k = 0
            for item in items:
                if k >= n:
                    raise RuntimeError("items changed size during check_many")
                scope_id, key = item
                self._scope(scope_id, cost)
                self._ident(scope_id, key, &idents[k])
                k += 1
            if k != n:
                raise RuntimeError("items changed size during check_many")
            self._sweep(now_ns)
            for k in range(n):
                scope = &self._scopes[idents[k].scope]
                tat = now_ns
                for m in range(k - 1, -1, -1):
                    if idents[m].h1 == idents[k].h1 and idents[m].h2 == idents[k].h2:
                        tat = tats[m]
                        slots[k] = slots[m]
                        break
                else:
                    i = self._find(idents[k].h1, idents[k].h2)
                    slots[k] = i
                    if i >= 0 and self._slots[i].tat > now_ns:
                        tat = self._slots[i].tat
                tats[k] = tat + scope.interval * cost
                if tats[k] - scope.span - now_ns > worst:
                    worst = tats[k] - scope.span - now_ns
            if worst > 0:
                for k in range(n):
                    if slots[k] >= 0:
                        self._touch(<int32_t>slots[k])
                return worst
            for k in range(n):
                self._store(&idents[k], tats[k])
            return 0
        finally:
            if idents != stack_idents:
                free(idents)
                free(tats)
                free(slots)

    def purge(self, int64_t now_ns):
        """Drop every pair idle past ``TAT + idle_expiry_ns``; return the count."""
        cdef int64_t limit = now_ns - self._idle
        cdef Py_ssize_t n = 0, k
        cdef int32_t i = self._head
        cdef Ident* expired
        if self._count == 0:
            return 0
        expired = <Ident*>malloc(self._count * sizeof(Ident))
        if expired == NULL:
            raise MemoryError()
        while i >= 0:
            if self._slots[i].tat <= limit:
                expired[n].h1 = self._slots[i].h1
                expired[n].h2 = self._slots[i].h2
                n += 1
            i = self._slots[i].next
        for k in range(n):
            self._remove(<int32_t>self._find(expired[k].h1, expired[k].h2))
        free(expired)
        return n

    def __len__(self):
        return self._count
