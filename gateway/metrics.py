"""Prometheus text metrics, kept in plain dicts: one increment per request, no locks, no registry.

A client that hangs up before its body arrived is not a request the gateway answered: it is counted
in ``gateway_client_disconnects_total`` (answered 499 to nobody), never as a 5xx, and logged at most at
debug level. Connections closed for a header or body deadline are ``gateway_http_timeouts_total``;
requests that are not valid HTTP, ``gateway_http_malformed_total``.
"""

from __future__ import annotations

import time
from collections import defaultdict

from aiohttp import web

from core.http import REJECTED, TIMEOUTS, ClientDisconnected, Handler
from gateway.degradation import MODES
from gateway.state import STATE_KEY

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
_requests: defaultdict[tuple[str, int], int] = defaultdict(int)
_latency: defaultdict[str, list[int]] = defaultdict(lambda: [0] * (len(_BUCKETS) + 1))
_latency_sum: defaultdict[str, float] = defaultdict(float)
_disconnects: defaultdict[str, int] = defaultdict(int)
#: nginx's "client closed request": never sent (the client is gone), only returned to aiohttp
CLIENT_CLOSED = 499


def _route_label(request: web.Request) -> str:
    info = request.match_info.route.resource
    return info.canonical if info is not None else "unmatched"


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    start = time.perf_counter()
    try:
        response: web.StreamResponse = await handler(request)
    except ClientDisconnected:
        _disconnects[_route_label(request)] += 1
        return web.Response(status=CLIENT_CLOSED)
    elapsed = time.perf_counter() - start
    label = _route_label(request)
    _requests[(label, response.status)] += 1
    counts = _latency[label]
    for i, bound in enumerate(_BUCKETS):
        if elapsed <= bound:
            counts[i] += 1
            break
    else:
        counts[-1] += 1
    _latency_sum[label] += elapsed
    return response


def render(request: web.Request) -> str:
    lines = ["# TYPE gateway_requests_total counter"]
    for (route, status), n in sorted(_requests.items()):
        lines.append(f'gateway_requests_total{{route="{route}",status="{status}"}} {n}')
    lines.append("# TYPE gateway_client_disconnects_total counter")
    for route, n in sorted(_disconnects.items()):
        lines.append(f'gateway_client_disconnects_total{{route="{route}"}} {n}')
    lines.append("# TYPE gateway_http_timeouts_total counter")
    for phase, n in sorted(TIMEOUTS.items()):
        lines.append(f'gateway_http_timeouts_total{{phase="{phase}"}} {n}')
    lines.append("# TYPE gateway_http_malformed_total counter")
    lines.append(f"gateway_http_malformed_total {REJECTED['malformed']}")
    lines.append("# TYPE gateway_request_duration_seconds histogram")
    for route, counts in sorted(_latency.items()):
        cum = 0
        for bound, c in zip((*_BUCKETS, float("inf")), counts, strict=True):
            cum += c
            le = "+Inf" if bound == float("inf") else repr(bound)
            lines.append(f'gateway_request_duration_seconds_bucket{{route="{route}",le="{le}"}} {cum}')
        lines.append(f'gateway_request_duration_seconds_count{{route="{route}"}} {cum}')
        lines.append(f'gateway_request_duration_seconds_sum{{route="{route}"}} {_latency_sum[route]:.6f}')
    st = request.app.get(STATE_KEY)
    if st is not None:
        lines.append("# TYPE gateway_ledger_queue_depth gauge")
        for shard, q in enumerate(st.ledger.queue_state()):
            for key in ("settle", "bet"):
                lines.append(f'gateway_ledger_queue_depth{{shard="{shard}",lane="{key}"}} {q.get("depth_" + key, 0)}')
            lines.append(f'gateway_ledger_shedding{{shard="{shard}"}} {int(bool(q.get("shedding")))}')
            lines.append(f'gateway_ledger_shed_total{{shard="{shard}"}} {q.get("dropped", 0)}')
            lines.append(f'gateway_ledger_inflight_batches{{shard="{shard}"}} {q.get("inflight", 0)}')
        lines.append(f"gateway_ledger_batches_published_total {st.ledger.published}")
        lines.append("# TYPE gateway_ledger_latency_seconds histogram")
        cum = 0
        for bound, count in zip((*st.ledger.latency_buckets, float("inf")), st.ledger.latency_counts, strict=True):
            cum += count
            le = "+Inf" if bound == float("inf") else repr(bound)
            lines.append(f'gateway_ledger_latency_seconds_bucket{{le="{le}"}} {cum}')
        lines.append(f"gateway_ledger_latency_seconds_count {cum}")
        lines.append(f"gateway_ledger_latency_seconds_sum {st.ledger.latency_sum:.6f}")
        lines.append(f"gateway_ledger_timeouts_total {st.ledger.timeouts}")
        lines.append(f"gateway_ledger_lag_seconds {st.ledger.lag_ewma_s:.6f}")
        lines.append(f"gateway_rate_limited_total {st.guards.limited}")
        quota = st.wallet.quota
        lines.append(f"gateway_redis_quota_fail_open_total {quota.fail_open if quota else 0}")
        lines.append(f"gateway_redis_quota_limited_total {quota.limited if quota else 0}")
        cache = st.wallet.sessions.cache
        lines.append(f"gateway_session_cache_hits_total {cache.hits}")
        lines.append(f"gateway_session_cache_misses_total {cache.misses}")
        lines.append(f"gateway_session_cache_loads_total {cache.loads}")
        snap = st.degradation.snapshot()
        for mode in MODES:
            lines.append(f'gateway_degradation_mode{{scope="global",mode="{mode}"}} {int(snap["global"] == mode)}')
        lines.append(f"gateway_degradation_changes_total {snap['changes']}")
        lines.append(f"gateway_degradation_entries {len(snap['entries'])}")  # type: ignore[arg-type]
    return "\n".join(lines) + "\n"


async def metrics_handler(request: web.Request) -> web.Response:
    return web.Response(text=render(request), content_type="text/plain")
