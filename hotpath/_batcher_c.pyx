"""Per-shard settlement batcher, compiled twin of ``hotpath._batcher_py`` (rules there).

Each shard's open batch is two C arrays of owned references (command ids, payloads)
with its byte count and age: ``add`` and ``add_many`` store a pointer per item and touch
no list, and closing a batch moves the references into two exactly sized lists without
any reference-count traffic. The arrays grow by doubling up to ``max_count`` and are
reused. The garbage collector does not see into them; they only ever hold exact ``str``
and ``bytes``, which cannot refer back.

``encode`` sizes the body once and copies each payload into one preallocated ``bytes``.
It stays within a few times of the pure twin's ``b"[" + b",".join(payloads) + b"]"``,
not ten, because that expression is already C (``bytes.join`` with its own exact-bytes
fast path) and both are bound by the same work, reading each payload and copying its
bytes; what C saves is only the two extra copies made by the concatenations and the
bytecode around them.
"""

cimport cython
from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
)
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE, PyList_New
from cpython.ref cimport PyObject
from cpython.sequence cimport PySequence_Fast
from libc.stdint cimport int64_t
from libc.stdlib cimport calloc, free, realloc
from libc.string cimport memcpy

cdef extern from "Python.h":
    Py_ssize_t PySequence_Fast_GET_SIZE(object)
    PyObject** PySequence_Fast_ITEMS(object)
    bint PyBytes_CheckExact(PyObject*)
    bint PyUnicode_CheckExact(PyObject*)
    Py_ssize_t PyBytes_GET_SIZE_raw "PyBytes_GET_SIZE"(PyObject*)
    char* PyBytes_AS_STRING_raw "PyBytes_AS_STRING"(PyObject*)
    void PyList_SET_ITEM_steal "PyList_SET_ITEM"(object, Py_ssize_t, PyObject*)
    void Py_INCREF_raw "Py_INCREF"(PyObject*)
    void Py_DECREF_raw "Py_DECREF"(PyObject*)

__all__ = ("Batch", "Batcher", "PayloadTooLarge")

cdef enum:
    _FIRST_CAP = 16


class PayloadTooLarge(ValueError):
    """A payload longer than ``max_bytes - 2``: never sendable, alone or batched.

    ``index`` is its position in the call's input (0 for ``add``); ``batches`` are the
    batches closed by the pairs before it in the same ``add_many`` call.
    """

    def __init__(self, message, index, batches):
        super().__init__(message)
        self.index = index
        self.batches = batches


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
        cdef PyObject* item
        cdef char* buf
        for k in range(count):
            item = <PyObject*>PyList_GET_ITEM(payloads, k)
            if not PyBytes_CheckExact(item):
                raise TypeError(
                    f"payloads must be bytes, not {type(<object>item).__name__}"
                )
            size += PyBytes_GET_SIZE_raw(item)
        out = PyBytes_FromStringAndSize(NULL, size)
        buf = PyBytes_AS_STRING(out)
        buf[0] = b"["
        buf += 1
        for k in range(count):
            if k:
                buf[0] = b","
                buf += 1
            item = <PyObject*>PyList_GET_ITEM(payloads, k)
            n = PyBytes_GET_SIZE_raw(item)
            memcpy(buf, PyBytes_AS_STRING_raw(item), n)
            buf += n
        buf[0] = b"]"
        return out

    def __len__(self):
        return PyList_GET_SIZE(self.cmd_ids)

    def __repr__(self):
        return (
            f"<Batch shard={self.shard} count={len(self.cmd_ids)} nbytes={self.nbytes}>"
        )


cdef struct Open:
    PyObject** ids  # owned references, [0, count)
    PyObject** payloads
    Py_ssize_t count
    Py_ssize_t cap
    Py_ssize_t nbytes  # 0 = nothing pending (an open batch has >= 2 bytes)
    int64_t first


@cython.final
cdef class Batcher:
    """Accumulates encoded commands per shard; closes batches by count, bytes or age."""

    cdef Py_ssize_t _shards
    cdef Py_ssize_t _max_count
    cdef Py_ssize_t _max_bytes
    cdef int64_t _max_delay
    cdef Open* _open

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
        self._open = <Open*>calloc(shards, sizeof(Open))
        if self._open == NULL:
            raise MemoryError()

    def __dealloc__(self):
        cdef Py_ssize_t shard, k
        cdef Open* o
        if self._open == NULL:
            return
        for shard in range(self._shards):
            o = &self._open[shard]
            for k in range(o.count):
                Py_DECREF_raw(o.ids[k])
                Py_DECREF_raw(o.payloads[k])
            free(o.ids)
            free(o.payloads)
        free(self._open)

    cdef int _grow(self, Open* o) except -1:
        """Room for one more item (never past ``max_count``, where a batch closes)."""
        cdef Py_ssize_t cap = o.cap * 2 if o.cap else _FIRST_CAP
        cdef PyObject** grown
        if cap > self._max_count:
            cap = self._max_count
        grown = <PyObject**>realloc(o.ids, cap * sizeof(PyObject*))
        if grown == NULL:
            raise MemoryError()
        o.ids = grown
        grown = <PyObject**>realloc(o.payloads, cap * sizeof(PyObject*))
        if grown == NULL:
            raise MemoryError()
        o.payloads = grown
        o.cap = cap
        return 0

    cdef Batch _close(self, Py_ssize_t shard):
        cdef Open* o = &self._open[shard]
        cdef Batch batch
        cdef list ids
        cdef list payloads
        cdef Py_ssize_t count = -1, k
        # allocating can run the collector, and a finalizer could add to this batcher:
        # move only when nothing changed while the batch and its lists were made
        while count != o.count:
            count = o.count
            batch = Batch.__new__(Batch)
            ids = PyList_New(count)
            payloads = PyList_New(count)
        for k in range(count):
            PyList_SET_ITEM_steal(ids, k, o.ids[k])
            PyList_SET_ITEM_steal(payloads, k, o.payloads[k])
        batch.shard = shard
        batch.cmd_ids = ids
        batch.payloads = payloads
        batch.nbytes = o.nbytes
        batch.first_ns = o.first
        o.count = 0
        o.nbytes = 0
        return batch

    cdef inline int _store(self, Open* o, PyObject* cmd_id, PyObject* payload,
                           Py_ssize_t size, int64_t now_ns) except -1:
        """Append a checked pair to an open batch it fits in (the caller closes)."""
        if o.count == o.cap:
            self._grow(o)
        if o.nbytes:
            o.nbytes += 1 + size
        else:
            o.nbytes = size + 2
            o.first = now_ns
        Py_INCREF_raw(cmd_id)
        Py_INCREF_raw(payload)
        o.ids[o.count] = cmd_id
        o.payloads[o.count] = payload
        o.count += 1
        return 0

    def add(self, Py_ssize_t shard, str cmd_id not None, bytes payload not None,
            int64_t now_ns):
        """Queue one command; return the batch it closed, if any (module rules)."""
        cdef Py_ssize_t size = PyBytes_GET_SIZE(payload)
        cdef Open* o
        cdef object out = None
        if shard < 0 or shard >= self._shards:
            raise ValueError("shard out of range")
        if size + 2 > self._max_bytes:
            raise PayloadTooLarge(
                f"payload of {size} bytes exceeds max_bytes={self._max_bytes}", 0, []
            )
        o = &self._open[shard]
        if o.nbytes and o.nbytes + 1 + size > self._max_bytes:
            out = self._close(shard)
        self._store(o, <PyObject*>cmd_id, <PyObject*>payload, size, now_ns)
        if o.count >= self._max_count:
            out = self._close(shard)
        return out

    def add_many(self, Py_ssize_t shard, cmd_ids, payloads, int64_t now_ns):
        """``add`` each pair in order; return the batches closed on the way (module
        rules). Types are checked for the whole input first (``TypeError``, nothing
        added).

        Closing a batch allocates, which can run the collector and with it code that
        changes the inputs (or this batcher), so after each close the inputs are looked
        at again: a changed length is a ``RuntimeError``, and a pair is only read for
        good once no close is pending before it."""
        cdef list out = []
        cdef Py_ssize_t n, size, k = 0
        cdef PyObject** ids
        cdef PyObject** pays
        cdef PyObject* cmd_id
        cdef PyObject* payload
        cdef Open* o
        if shard < 0 or shard >= self._shards:
            raise ValueError("shard out of range")
        o = &self._open[shard]
        if len(cmd_ids) != len(payloads):
            raise ValueError("cmd_ids and payloads differ in length")
        id_seq = PySequence_Fast(cmd_ids, "cmd_ids must be a sequence")
        pay_seq = PySequence_Fast(payloads, "payloads must be a sequence")
        n = PySequence_Fast_GET_SIZE(pay_seq)
        if PySequence_Fast_GET_SIZE(id_seq) != n:
            raise ValueError("cmd_ids and payloads differ in length")
        ids = PySequence_Fast_ITEMS(id_seq)
        pays = PySequence_Fast_ITEMS(pay_seq)
        for k in range(n):
            if not PyUnicode_CheckExact(ids[k]):
                raise TypeError(
                    f"cmd_ids[{k}] must be str, not {type(<object>ids[k]).__name__}"
                )
            if not PyBytes_CheckExact(pays[k]):
                raise TypeError(
                    f"payloads[{k}] must be bytes, not {type(<object>pays[k]).__name__}"
                )
        k = 0
        while k < n:
            cmd_id = ids[k]
            payload = pays[k]
            if not PyUnicode_CheckExact(cmd_id) or not PyBytes_CheckExact(payload):
                raise RuntimeError("cmd_ids or payloads changed during add_many")
            size = PyBytes_GET_SIZE_raw(payload)
            if size + 2 > self._max_bytes:
                raise PayloadTooLarge(
                    f"payload of {size} bytes exceeds max_bytes={self._max_bytes}",
                    k,
                    out,
                )
            if o.nbytes and o.nbytes + 1 + size > self._max_bytes:
                out.append(self._close(shard))
            else:
                self._store(o, cmd_id, payload, size, now_ns)
                k += 1
                if o.count < self._max_count:
                    continue
                out.append(self._close(shard))
            if (PySequence_Fast_GET_SIZE(id_seq) != n
                    or PySequence_Fast_GET_SIZE(pay_seq) != n):
                raise RuntimeError("cmd_ids or payloads changed during add_many")
            ids = PySequence_Fast_ITEMS(id_seq)
            pays = PySequence_Fast_ITEMS(pay_seq)
        return out

    def due(self, int64_t now_ns):
        """Close and return the batches whose oldest command is ``max_delay_ns`` old."""
        cdef int64_t limit = now_ns - self._max_delay
        cdef Py_ssize_t shard
        cdef list out = []
        for shard in range(self._shards):
            if self._open[shard].nbytes and self._open[shard].first <= limit:
                out.append(self._close(shard))
        return out

    def next_deadline_ns(self):
        """When the earliest open batch falls due; ``None`` when nothing is pending."""
        cdef Py_ssize_t shard
        cdef bint found = False
        cdef int64_t first = 0
        cdef Open* o
        for shard in range(self._shards):
            o = &self._open[shard]
            if o.nbytes and (not found or o.first < first):
                first = o.first
                found = True
        if not found:
            return None
        return first + self._max_delay

    def flush_all(self):
        """Close and return every non-empty batch (shutdown, drain)."""
        cdef Py_ssize_t shard
        cdef list out = []
        for shard in range(self._shards):
            if self._open[shard].nbytes:
                out.append(self._close(shard))
        return out

    def pending(self, Py_ssize_t shard):
        """Commands waiting in ``shard``'s open batch."""
        if shard < 0 or shard >= self._shards:
            raise ValueError("shard out of range")
        return self._open[shard].count

    def __len__(self):
        cdef Py_ssize_t shard, total = 0
        for shard in range(self._shards):
            total += self._open[shard].count
        return total
