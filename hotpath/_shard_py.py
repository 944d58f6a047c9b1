"""Player → shard placement, pure-Python twin of ``hotpath._shard_c``.

Invariant: a player's shard depends only on the player id and the shard count, in every process
and every release. So the key is FNV-1a 64 of the UTF-8 id (never the randomized built-in
``hash()``), and the bucket is Lamping & Veach's jump consistent hash, which moves only ~1/n of
the players when the shard count grows from n-1 to n.
"""

from __future__ import annotations

__all__ = ("MAX_BUCKETS", "fnv1a_64", "jump", "shard_for")

MAX_BUCKETS = (1 << 31) - 1
_MASK64 = (1 << 64) - 1
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_LCG_MULT = 2862933555777941757


def fnv1a_64(data: str) -> int:
    """FNV-1a 64 of the UTF-8 encoding of ``data``."""
    h = _FNV_OFFSET
    for byte in data.encode("utf-8"):
        h = ((h ^ byte) * _FNV_PRIME) & _MASK64
    return h


def jump(key: int, buckets: int) -> int:
    """Bucket in ``[0, buckets)`` for the unsigned 64-bit ``key`` (Lamping & Veach, 2014)."""
    if not 0 <= key <= _MASK64:
        raise OverflowError("key must be an unsigned 64-bit integer")
    if not 1 <= buckets <= MAX_BUCKETS:
        raise ValueError(f"buckets must be in [1, {MAX_BUCKETS}]")
    b = -1
    j = 0
    while j < buckets:
        b = j
        key = (key * _LCG_MULT + 1) & _MASK64
        j = int((b + 1) * (2147483648.0 / ((key >> 33) + 1)))
    return b


def shard_for(player_id: str, shards: int) -> int:
    """Shard in ``[0, shards)`` owning ``player_id``."""
    if not 1 <= shards <= MAX_BUCKETS:
        raise ValueError(f"buckets must be in [1, {MAX_BUCKETS}]")
    return jump(fnv1a_64(player_id), shards)
