"""Per-shard admission queues that never refuse a settlement (rules in ``_backpressure_py``).

The compiled twin unless disabled or missing.
"""

import os
from typing import TYPE_CHECKING

__all__ = ("LANE_BET", "LANE_SETTLE", "QueueSet", "ShardQueue")

if TYPE_CHECKING or os.environ.get("GATEWAY_NO_EXTENSIONS"):
    from ._backpressure_py import LANE_BET, LANE_SETTLE, QueueSet, ShardQueue
else:
    try:
        from ._backpressure_c import LANE_BET, LANE_SETTLE, QueueSet, ShardQueue
    except ImportError:  # pragma: no cover - depends on the build
        from ._backpressure_py import LANE_BET, LANE_SETTLE, QueueSet, ShardQueue
