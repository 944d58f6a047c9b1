"""Compiled hot paths of the request path, each with a pure-Python twin of the same API.

``ratelimit`` (GCRA per scope and key), ``batcher`` (settlements per ledger shard),
``backpressure`` (per-shard lanes that never refuse a settlement) and ``shard`` (stable player
placement). Both twins make the same decisions; time is always passed in, never read.
``IMPLEMENTATION`` is ``"c"`` when every selector picked its compiled twin, else ``"py"``
(``GATEWAY_NO_EXTENSIONS`` set, or an extension missing from the build).
"""

from typing import Final, Literal

from . import backpressure, batcher, ratelimit, shard

__all__ = ("IMPLEMENTATION",)

_COMPILED = all(
    obj.__module__.endswith("_c")
    for obj in (backpressure.ShardQueue, batcher.Batcher, ratelimit.RateLimiter, shard.shard_for)
)

IMPLEMENTATION: Final[Literal["c", "py"]] = "c" if _COMPILED else "py"
