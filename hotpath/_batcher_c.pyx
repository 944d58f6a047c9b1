"""Per-shard settlement batcher, compiled twin of ``hotpath._batcher_py`` (rules there).

Byte counts and ages live in C arrays; the only Python work per ``add`` is appending the
two references to the shard's open lists, which a closed batch takes over without
copying. ``encode`` sizes the body once and copies each payload into it.
"""

cimport cython
from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_Check,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
)
from cpython.list cimport PyList_Append, PyList_GET_ITEM, PyList_GET_SIZE
from libc.stdint cimport int64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy

__all__ = ("Batch", "Batcher")


@cython.final
cdef class Batch:
    """Commands of one shard, in arrival order, for one ledger transaction."""

    cdef readonly Py_ssize_t shard
    cdef readonly list cmd_ids
    cdef readonly list payloads
    cdef readonly Py_ssize_t nbytes
    cdef readonly int64_t first_ns

    def __init__(self, Py_ssize_t shard, list cmd_ids not None, list payloads not None,
                 Py_ssize_t nbytes, int64_t first_ns):
        self.shard = shard
        self.cmd_ids = cmd_ids
        self.payloads = payloads
        self.nbytes = nbytes
        self.first_ns = first_ns

    def encode(self):
        """One message body: the payloads (JSON objects) as a JSON array."""
        cdef list payloads = self.payloads
        cdef Py_ssize_t count = PyList_GET_SIZE(payloads)
        cdef Py_ssize_t size = 2 + (count - 1 if count else 0)
        cdef Py_ssize_t k, n
        cdef char* buf
        cdef object item
        for k in range(count):
            item = <object>PyList_GET_ITEM(payloads, k)
            if not PyBytes_Check(item):
                raise TypeError(f"payloads must be bytes, not {type(item).__name__}")
            size += PyBytes_GET_SIZE(item)
        out = PyBytes_FromStringAndSize(NULL, size)
        buf = PyBytes_AS_STRING(out)
        buf[0] = b"["
        buf += 1
        for k in range(count):
            if k:
                buf[0] = b","
                buf += 1
            item = <object>PyList_GET_ITEM(payloads, k)
            n = PyBytes_GET_SIZE(item)
            memcpy(buf, PyBytes_AS_STRING(item), n)
            buf += n
        buf[0] = b"]"
        return out

    def __len__(self):
        return PyList_GET_SIZE(self.cmd_ids)

    def __repr__(self):
        return (
            f"<Batch shard={self.shard} count={len(self.cmd_ids)} nbytes={self.nbytes}>"
        )


cdef inline list _fresh_lists(Py_ssize_t n):
    cdef list out = [None] * n
    cdef Py_ssize_t k
    for k in range(n):
        out[k] = []
    return out


@cython.final
cdef class Batcher:
    """Accumulates encoded commands per shard; closes batches by count, bytes or age."""

    cdef Py_ssize_t _shards
    cdef Py_ssize_t _max_count
    cdef Py_ssize_t _max_bytes
    cdef int64_t _max_delay
    cdef Py_ssize_t* _nbytes  # 0 = nothing pending (an open batch has >= 2 bytes)
    cdef Py_ssize_t* _count
    cdef int64_t* _first
    cdef list _ids
    cdef list _payloads

    def __cinit__(self, Py_ssize_t shards, Py_ssize_t max_count, Py_ssize_t max_bytes,
                  int64_t max_delay_ns):
        if shards < 1:
            raise ValueError("shards must be >= 1")
        if max_count < 1:
            raise ValueError("max_count must be >= 1")
        if max_bytes < 3:
            raise ValueError("max_bytes must be >= 3")
        if max_delay_ns < 0:
            raise ValueError("max_delay_ns must be >= 0")
        self._shards = shards
        self._max_count = max_count
        self._max_bytes = max_bytes
        self._max_delay = max_delay_ns
        self._nbytes = <Py_ssize_t*>calloc(shards, sizeof(Py_ssize_t))
        self._count = <Py_ssize_t*>calloc(shards, sizeof(Py_ssize_t))
        self._first = <int64_t*>calloc(shards, sizeof(int64_t))
        if self._nbytes == NULL or self._count == NULL or self._first == NULL:
            raise MemoryError()
        self._ids = _fresh_lists(shards)
        self._payloads = _fresh_lists(shards)

    def __dealloc__(self):
        free(self._nbytes)
        free(self._count)
        free(self._first)

    cdef Batch _close(self, Py_ssize_t shard):
        cdef Batch batch = Batch.__new__(Batch)
        batch.shard = shard
        batch.cmd_ids = <list><object>PyList_GET_ITEM(self._ids, shard)
        batch.payloads = <list><object>PyList_GET_ITEM(self._payloads, shard)
        batch.nbytes = self._nbytes[shard]
        batch.first_ns = self._first[shard]
        self._ids[shard] = []
        self._payloads[shard] = []
        self._nbytes[shard] = 0
        self._count[shard] = 0
        return batch

    def add(self, Py_ssize_t shard, str cmd_id not None, bytes payload not None,
            int64_t now_ns):
        """Queue one command; return the batch it closed, if any (module rules)."""
        cdef Py_ssize_t size = PyBytes_GET_SIZE(payload)
        cdef Py_ssize_t pending
        cdef object out = None
        if shard < 0 or shard >= self._shards:
            raise ValueError("shard out of range")
        if size + 2 > self._max_bytes:
            raise ValueError(
                f"payload of {size} bytes exceeds max_bytes={self._max_bytes}"
            )
        pending = self._nbytes[shard]
        if pending and pending + 1 + size > self._max_bytes:
            out = self._close(shard)
            pending = 0
        if pending:
            self._nbytes[shard] = pending + 1 + size
        else:
            self._nbytes[shard] = size + 2
            self._first[shard] = now_ns
        PyList_Append(<object>PyList_GET_ITEM(self._ids, shard), cmd_id)
        PyList_Append(<object>PyList_GET_ITEM(self._payloads, shard), payload)
        self._count[shard] += 1
        if self._count[shard] >= self._max_count:
            out = self._close(shard)
        return out

    def due(self, int64_t now_ns):
        """Close and return the batches whose oldest command is ``max_delay_ns`` old."""
        cdef int64_t limit = now_ns - self._max_delay
        cdef Py_ssize_t shard
        cdef list out = []
        for shard in range(self._shards):
            if self._nbytes[shard] and self._first[shard] <= limit:
                out.append(self._close(shard))
        return out

    def next_deadline_ns(self):
        """When the earliest open batch falls due; ``None`` when nothing is pending."""
        cdef Py_ssize_t shard
        cdef bint found = False
        cdef int64_t first = 0
        for shard in range(self._shards):
            if self._nbytes[shard] and (not found or self._first[shard] < first):
                first = self._first[shard]
                found = True
        if not found:
            return None
        return first + self._max_delay

    def flush_all(self):
        """Close and return every non-empty batch (shutdown, drain)."""
        cdef Py_ssize_t shard
        cdef list out = []
        for shard in range(self._shards):
            if self._nbytes[shard]:
                out.append(self._close(shard))
        return out

    def pending(self, Py_ssize_t shard):
        """Commands waiting in ``shard``'s open batch."""
        if shard < 0 or shard >= self._shards:
            raise ValueError("shard out of range")
        return self._count[shard]

    def __len__(self):
        cdef Py_ssize_t shard, total = 0
        for shard in range(self._shards):
            total += self._count[shard]
        return total
