"""Stable player → shard placement: the compiled twin unless disabled or missing."""

import os
from typing import TYPE_CHECKING

__all__ = ("MAX_BUCKETS", "fnv1a_64", "jump", "shard_for")

if TYPE_CHECKING or os.environ.get("GATEWAY_NO_EXTENSIONS"):
    from ._shard_py import MAX_BUCKETS, fnv1a_64, jump, shard_for
else:
    try:
        from ._shard_c import MAX_BUCKETS, fnv1a_64, jump, shard_for
    except ImportError:  # pragma: no cover - depends on the build
        from ._shard_py import MAX_BUCKETS, fnv1a_64, jump, shard_for
