"""GCRA rate limiter: the compiled twin unless disabled or missing (rules in ``_ratelimit_py``)."""

import os
from typing import TYPE_CHECKING

__all__ = ("MAX_BURST", "MAX_KEYS", "MAX_SCOPES", "MAX_SPAN_NS", "RateLimiter")

if TYPE_CHECKING or os.environ.get("GATEWAY_NO_EXTENSIONS"):
    from ._ratelimit_py import MAX_BURST, MAX_KEYS, MAX_SCOPES, MAX_SPAN_NS, RateLimiter
else:
    try:
        from ._ratelimit_c import MAX_BURST, MAX_KEYS, MAX_SCOPES, MAX_SPAN_NS, RateLimiter
    except ImportError:  # pragma: no cover - depends on the build
        from ._ratelimit_py import MAX_BURST, MAX_KEYS, MAX_SCOPES, MAX_SPAN_NS, RateLimiter
