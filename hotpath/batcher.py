"""Per-shard settlement batcher: the compiled twin unless disabled or missing (rules in ``_batcher_py``)."""

import os
from typing import TYPE_CHECKING

__all__ = ("Batch", "Batcher", "PayloadTooLarge")

if TYPE_CHECKING or os.environ.get("GATEWAY_NO_EXTENSIONS"):
    from ._batcher_py import Batch, Batcher, PayloadTooLarge
else:
    try:
        from ._batcher_c import Batch, Batcher, PayloadTooLarge
    except ImportError:  # pragma: no cover - depends on the build
        from ._batcher_py import Batch, Batcher, PayloadTooLarge
