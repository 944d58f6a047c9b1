"""Player → shard placement, compiled twin of ``hotpath._shard_py``.

Invariant: a player's shard depends only on the player id and the shard count, in every
process and every release. So the key is FNV-1a 64 of the UTF-8 id (never the randomized
built-in ``hash()``), and the bucket is Lamping & Veach's jump consistent hash, which
moves only ~1/n of the players when the shard count grows from n-1 to n. Same arithmetic
as the twin, including the IEEE double division of the reference implementation.
"""

from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdint cimport int64_t, uint64_t

__all__ = ("MAX_BUCKETS", "fnv1a_64", "jump", "shard_for")

MAX_BUCKETS = (1 << 31) - 1

cdef int64_t _MAX_BUCKETS = (1 << 31) - 1
cdef uint64_t _FNV_OFFSET = 0xCBF29CE484222325ULL
cdef uint64_t _FNV_PRIME = 0x100000001B3ULL
cdef uint64_t _LCG_MULT = 2862933555777941757ULL


cdef inline uint64_t _fnv1a(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    cdef uint64_t h = _FNV_OFFSET
    cdef Py_ssize_t i
    for i in range(n):
        h = (h ^ p[i]) * _FNV_PRIME
    return h


cdef inline int64_t _jump(uint64_t key, int64_t buckets) noexcept nogil:
    cdef int64_t b = -1
    cdef int64_t j = 0
    while j < buckets:
        b = j
        key = key * _LCG_MULT + 1
        j = <int64_t>((b + 1) * (2147483648.0 / <double>((key >> 33) + 1)))
    return b


cdef inline uint64_t _key(str data) except? 0:
    cdef Py_ssize_t n
    cdef const char* p = PyUnicode_AsUTF8AndSize(data, &n)
    return _fnv1a(<const unsigned char*>p, n)


def fnv1a_64(str data not None):
    """FNV-1a 64 of the UTF-8 encoding of ``data``."""
    return _key(data)


def jump(uint64_t key, int64_t buckets):
    """Bucket in ``[0, buckets)`` for the unsigned 64-bit ``key`` (Lamping & Veach)."""
    if buckets < 1 or buckets > _MAX_BUCKETS:
        raise ValueError(f"buckets must be in [1, {_MAX_BUCKETS}]")
    return _jump(key, buckets)


def shard_for(str player_id not None, int64_t shards):
    """Shard in ``[0, shards)`` owning ``player_id``."""
    if shards < 1 or shards > _MAX_BUCKETS:
        raise ValueError(f"buckets must be in [1, {_MAX_BUCKETS}]")
    return _jump(_key(player_id), shards)
