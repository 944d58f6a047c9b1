"""Per-request cost of the edge middleware, metrics and error answers (``python -m benchmarks.metrics_bench [old]``).

Times the middleware around a handler that returns at once, on a real routed aiohttp request, so what
is measured is the middleware's own work: route label, tallies, and (given another module file, e.g.
an older ``gateway/metrics.py``) the same for that version side by side. Best of 7 runs.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
from typing import Any

from aiohttp import web
from aiohttp.test_utils import make_mocked_request


def _load(path: str) -> Any:
    spec = importlib.util.spec_from_file_location("metrics_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def _per_call_us(middleware: Any, n: int = 50_000) -> float:
    app = web.Application()
    ok = web.Response(status=200)

    async def handler(request: web.Request) -> web.StreamResponse:
        return ok

    app.router.add_post("/v1/providers/demo/bet", handler)
    request = make_mocked_request("POST", "/v1/providers/demo/bet", app=app)
    match = await app.router.resolve(request)
    request._match_info = match
    best = float("inf")
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(n):
            await middleware(request, handler)
        best = min(best, time.perf_counter() - start)
    base = float("inf")
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(n):
            await handler(request)
        base = min(base, time.perf_counter() - start)
    return (best - base) / n * 1e6


def main() -> None:
    from gateway import metrics
    from gateway.app import error_answer

    print(f"edge middleware (this tree): "
          f"{asyncio.run(_per_call_us(metrics.edge_middleware(error_answer))):.2f} µs/request")
    exporter = metrics.Exporter(None)
    start = time.perf_counter()
    for _ in range(100):
        exporter.flush()
    print(f"one flush of the tallies (off the request path, once a second): "
          f"{(time.perf_counter() - start) / 100 * 1e6:.1f} µs")
    for path in sys.argv[1:]:
        other = _load(path)  # an older metrics.py has ``metrics_middleware``, a newer one ``edge_middleware``
        middleware = other.edge_middleware(error_answer) if hasattr(other, "edge_middleware") \
            else other.metrics_middleware
        print(f"middleware ({path}): {asyncio.run(_per_call_us(middleware)):.2f} µs/request")


if __name__ == "__main__":
    main()
