"""Per-shard settlement batcher, pure-Python twin of ``hotpath._batcher_c``.

Invariant: a batch's message body ``encode()`` is never larger than ``max_bytes``, holds at
most ``max_count`` commands, and no command waits in a batch longer than ``max_delay_ns`` once
``due`` is called on time. ``nbytes`` is exactly ``len(encode())``: ``2 + sum(len(payload)) +
(count - 1)`` for the ``[`` ``]`` and the commas. Rules, identical in both twins:

* ``add`` rejects (:class:`PayloadTooLarge`, a ``ValueError``) a payload that could never fit
  (``len + 2 > max_bytes``), before changing anything.
* A payload that would push the pending batch past ``max_bytes`` first closes that batch
  (returned) and starts the next one with it; so the byte bound closes a batch lazily, on the
  add that would overflow it, and at most one batch leaves per ``add``.
* A batch that reaches ``max_count`` commands is returned by the ``add`` that filled it.
* ``due(now)`` closes every shard whose oldest command is ``>= max_delay_ns`` old, in shard order;
  ``flush_all`` closes every non-empty shard, in shard order.

``add_many(shard, cmd_ids, payloads, now)`` is ``add`` over the pairs in order, collecting the
batches they close (several per call are possible), in one call: the ledger client moves a
shard's whole queue at once. It keeps sequential semantics on a rejected payload: the pairs
before it stay added, and the batches they closed, which the caller still owns and must send,
ride on the :class:`PayloadTooLarge` (``batches``, with the rejected pair's ``index``); the
pairs after it are not looked at. Unlike zero ``add`` calls, it checks ``shard`` and that both
sequences have the same length (``ValueError``) even when they are empty, before changing
anything.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ("Batch", "Batcher", "PayloadTooLarge")


class PayloadTooLarge(ValueError):
    """A payload longer than ``max_bytes - 2``: it could never be sent, alone or batched.

    ``index`` is its position in the call's input (0 for ``add``); ``batches`` are the batches
    closed by the pairs before it in the same ``add_many`` call, already out of the batcher.
    """

    def __init__(self, message: str, index: int, batches: list[Batch]) -> None:
        super().__init__(message)
        self.index = index
        self.batches = batches


class Batch:
    """Commands of one shard, in arrival order, to be written in one ledger transaction."""

    __slots__ = ("cmd_ids", "first_ns", "nbytes", "payloads", "shard")

    def __init__(self, shard: int, cmd_ids: list[str], payloads: list[bytes], nbytes: int, first_ns: int) -> None:
        self.shard = shard
        self.cmd_ids = cmd_ids
        self.payloads = payloads
        self.nbytes = nbytes
        self.first_ns = first_ns

    def encode(self) -> bytes:
        """One message body: the payloads (JSON objects) as a JSON array."""
        return b"[" + b",".join(self.payloads) + b"]"

    def __len__(self) -> int:
        return len(self.cmd_ids)

    def __repr__(self) -> str:
        return f"<Batch shard={self.shard} count={len(self.cmd_ids)} nbytes={self.nbytes}>"


class Batcher:
    """Accumulates encoded commands per shard and closes batches by count, bytes or age."""

    __slots__ = ("_first", "_ids", "_max_bytes", "_max_count", "_max_delay", "_nbytes", "_payloads")

    def __init__(self, shards: int, max_count: int, max_bytes: int, max_delay_ns: int) -> None:
        if shards < 1:
            raise ValueError("shards must be >= 1")
        if max_count < 1:
            raise ValueError("max_count must be >= 1")
        if max_bytes < 3:
            raise ValueError("max_bytes must be >= 3")
        if max_delay_ns < 0:
            raise ValueError("max_delay_ns must be >= 0")
        self._max_count = max_count
        self._max_bytes = max_bytes
        self._max_delay = max_delay_ns
        self._ids: list[list[str]] = [[] for _ in range(shards)]
        self._payloads: list[list[bytes]] = [[] for _ in range(shards)]
        self._nbytes = [0] * shards
        self._first = [0] * shards

    def _close(self, shard: int) -> Batch:
        batch = Batch(shard, self._ids[shard], self._payloads[shard], self._nbytes[shard], self._first[shard])
        self._ids[shard] = []
        self._payloads[shard] = []
        self._nbytes[shard] = 0
        return batch

    def add(self, shard: int, cmd_id: str, payload: bytes, now_ns: int) -> Batch | None:
        """Queue one command; return the batch it closed, if any (see the module rules)."""
        ids = self._ids
        if not 0 <= shard < len(ids):
            raise ValueError("shard out of range")
        size = len(payload)
        if size + 2 > self._max_bytes:
            raise PayloadTooLarge(f"payload of {size} bytes exceeds max_bytes={self._max_bytes}", 0, [])
        out = None
        pending = self._nbytes[shard]
        if pending and pending + 1 + size > self._max_bytes:
            out = self._close(shard)
            pending = 0
        if pending:
            self._nbytes[shard] = pending + 1 + size
        else:
            self._nbytes[shard] = size + 2
            self._first[shard] = now_ns
        shard_ids = ids[shard]
        shard_ids.append(cmd_id)
        self._payloads[shard].append(payload)
        if len(shard_ids) >= self._max_count:
            out = self._close(shard)
        return out

    def add_many(self, shard: int, cmd_ids: Sequence[str], payloads: Sequence[bytes], now_ns: int) -> list[Batch]:
        """``add`` each pair in order; return the batches closed on the way (module rules)."""
        if not 0 <= shard < len(self._ids):
            raise ValueError("shard out of range")
        if len(cmd_ids) != len(payloads):
            raise ValueError("cmd_ids and payloads differ in length")
        out: list[Batch] = []
        max_bytes = self._max_bytes
        max_count = self._max_count
        ids = self._ids[shard]
        pays = self._payloads[shard]
        pending = self._nbytes[shard]
        try:
            for index, payload in enumerate(payloads):
                size = len(payload)
                if size + 2 > max_bytes:
                    raise PayloadTooLarge(f"payload of {size} bytes exceeds max_bytes={max_bytes}", index, out)
                if pending and pending + 1 + size > max_bytes:
                    self._nbytes[shard] = pending
                    out.append(self._close(shard))
                    ids = self._ids[shard]
                    pays = self._payloads[shard]
                    pending = 0
                if pending:
                    pending += 1 + size
                else:
                    pending = size + 2
                    self._first[shard] = now_ns
                ids.append(cmd_ids[index])
                pays.append(payload)
                if len(ids) >= max_count:
                    self._nbytes[shard] = pending
                    out.append(self._close(shard))
                    ids = self._ids[shard]
                    pays = self._payloads[shard]
                    pending = 0
        finally:
            self._nbytes[shard] = pending
        return out

    def due(self, now_ns: int) -> list[Batch]:
        """Close and return the batches whose oldest command is at least ``max_delay_ns`` old."""
        limit = now_ns - self._max_delay
        return [
            self._close(shard) for shard, nbytes in enumerate(self._nbytes) if nbytes and self._first[shard] <= limit
        ]

    def next_deadline_ns(self) -> int | None:
        """When the earliest pending batch falls due, or ``None`` when nothing is pending."""
        firsts = [self._first[shard] for shard, nbytes in enumerate(self._nbytes) if nbytes]
        return min(firsts) + self._max_delay if firsts else None

    def flush_all(self) -> list[Batch]:
        """Close and return every non-empty batch (shutdown, drain)."""
        return [self._close(shard) for shard, nbytes in enumerate(self._nbytes) if nbytes]

    def pending(self, shard: int) -> int:
        """Commands waiting in ``shard``'s open batch."""
        if not 0 <= shard < len(self._ids):
            raise ValueError("shard out of range")
        return len(self._ids[shard])

    def __len__(self) -> int:
        return sum(len(ids) for ids in self._ids)
