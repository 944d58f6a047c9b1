"""Plain in-process tallies kept on the request path, copied into Prometheus metrics off it.

An increment here is a dict update (~0.1 µs); a ``prometheus_client`` increment in multi-process mode
writes a memory-mapped file under a lock (~5 µs, ~10 µs for a histogram observation, measured). So the
request path only counts here, and ``gateway.metrics.Exporter`` adds the differences to the real
metrics once a second and just before a scrape. No imports: the wallet and the middleware both use it.
"""

from __future__ import annotations

from collections import defaultdict

#: request duration bucket bounds (seconds); ``gateway_request_duration_seconds``
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)

#: (route, status) → requests answered
requests: defaultdict[tuple[str, int], int] = defaultdict(int)
#: route → per-bucket (not cumulative) counts, the last one past every bound
latency: defaultdict[str, list[int]] = defaultdict(lambda: [0] * (len(BUCKETS) + 1))
latency_sum: defaultdict[str, float] = defaultdict(float)
#: route → clients that hung up before their body arrived
disconnects: defaultdict[str, int] = defaultdict(int)
#: (brand, currency) → bets accepted by the ledger (retries not counted) and their stake in minor units
bets: defaultdict[tuple[str, str], int] = defaultdict(int)
stake: defaultdict[tuple[str, str], int] = defaultdict(int)


def observe_request(route: str, status: int, seconds: float) -> None:
    requests[(route, status)] += 1
    counts = latency[route]
    for i, bound in enumerate(BUCKETS):
        if seconds <= bound:
            counts[i] += 1
            break
    else:
        counts[-1] += 1
    latency_sum[route] += seconds


def bet_accepted(brand: str, currency: str, amount: int) -> None:
    key = (brand, currency)
    bets[key] += 1
    stake[key] += amount
