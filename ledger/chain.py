"""Per-shard hash chain over batches.

``hash = sha256(prev_hash ‖ batch_seq ‖ digest)`` where ``digest`` covers every transaction and entry
the batch wrote, in a canonical order. The writer computes it from what it inserts; ``reconcile``
recomputes it from the rows in the database, so an edited, deleted or inserted row — even one made
with the append-only triggers disabled — breaks the chain at its batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

GENESIS = b"\x00" * 32


def batch_digest(txs: Iterable[Sequence[Any]], entries: Iterable[Sequence[Any]]) -> bytes:
    """``txs``: (ledger_tx, brand, provider, tx_id, kind, status, request_hash, player, currency,
    round_id, ref_tx_id, amount); ``entries``: (ledger_tx, account_id, amount)."""
    h = hashlib.sha256()
    for row in sorted(txs, key=lambda r: r[0]):
        h.update("\x1f".join("" if v is None else str(v) for v in row).encode())
        h.update(b"\x1e")
    h.update(b"\x1d")
    for row in sorted(entries, key=lambda r: (r[0], r[1], r[2])):
        h.update(f"{row[0]}\x1f{row[1]}\x1f{row[2]}\x1e".encode())
    return h.digest()


def chain_hash(prev_hash: bytes, batch_seq: int, digest: bytes) -> bytes:
    return hashlib.sha256(prev_hash + batch_seq.to_bytes(8, "big") + digest).digest()


def digest_fields(tx_row: Sequence[Any]) -> tuple[Any, ...]:
    """The hashed fields of a row as ``Mutations.txs`` holds it."""
    (ledger_tx, brand, provider, tx_id, kind, status, request_hash, _tenant, _license, player, currency,
     round_id, ref, amount) = tx_row[:14]
    return (ledger_tx, brand, provider, tx_id, kind, status, request_hash, player, currency, round_id, ref,
            amount)
