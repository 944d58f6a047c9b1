"""The gateway's Prometheus metrics (``prometheus_client``), summed over every ``serve`` worker.

``gateway serve --workers N`` gives its workers one fresh ``PROMETHEUS_MULTIPROC_DIR`` (see
``gateway.cli``): each worker's values live in memory-mapped files there and a scrape, whichever
worker answers it, renders all of them through ``MultiProcessCollector`` (counters and histograms
summed, live gauges summed or maxed over the workers still alive). A single process renders its own
registry.

The request path never touches a metric: it counts in plain dicts (``gateway.counters``, as do the
ledger client, guards, caches and quota in their own attributes), and an ``Exporter`` per app adds the
differences to the metrics once a second and just before it renders a scrape. Another worker's
counts are therefore at most ``FLUSH_INTERVAL_S`` old in a scrape.

A client that hangs up before its body arrived is not a request the gateway answered: it is counted
in ``gateway_client_disconnects_total`` (answered 499 to nobody), never as a 5xx, and logged at most at
debug level. Connections closed for a header or body deadline are ``gateway_http_timeouts_total``;
requests that are not valid HTTP, ``gateway_http_malformed_total``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import prometheus_client
from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from core.http import REJECTED, TIMEOUTS, ClientDisconnected, Handler
from gateway import counters
from gateway.degradation import MODES
from gateway.state import GatewayState

log = logging.getLogger(__name__)
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

#: how often each worker copies its tallies into the shared metrics
FLUSH_INTERVAL_S = 1.0
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: nginx's "client closed request": never sent (the client is gone), only returned to aiohttp
CLIENT_CLOSED = 499
LEDGER_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.0)

REGISTRY = CollectorRegistry(auto_describe=True)

REQUESTS = Counter("gateway_requests", "Requests answered, by route and HTTP status", ["route", "status"],
                   registry=REGISTRY)
REQUEST_SECONDS = Histogram("gateway_request_duration_seconds", "Time to answer a request", ["route"],
                            buckets=counters.BUCKETS, registry=REGISTRY)
DISCONNECTS = Counter("gateway_client_disconnects", "Clients that hung up before their body arrived", ["route"],
                      registry=REGISTRY)
HTTP_TIMEOUTS = Counter("gateway_http_timeouts", "Connections closed for a header or body deadline", ["phase"],
                        registry=REGISTRY)
HTTP_MALFORMED = Counter("gateway_http_malformed", "Requests that were not valid HTTP", registry=REGISTRY)
BETS = Counter("gateway_bets", "Bets accepted by the ledger (retries not counted)", ["brand", "currency"],
               registry=REGISTRY)
STAKE = Counter("gateway_bet_stake_minor_units", "Stake of accepted bets, in the currency's minor units",
                ["brand", "currency"], registry=REGISTRY)
QUEUE_DEPTH = Gauge("gateway_ledger_queue_depth", "Commands waiting for the ledger", ["shard", "lane"],
                    multiprocess_mode="livesum", registry=REGISTRY)
SHEDDING = Gauge("gateway_ledger_shedding", "1 while a shard's bet lane sheds", ["shard"],
                 multiprocess_mode="livemax", registry=REGISTRY)
SHED = Counter("gateway_ledger_shed", "Bets shed because the ledger is behind", ["shard"], registry=REGISTRY)
INFLIGHT = Gauge("gateway_ledger_inflight_batches", "Batches published and not yet answered", ["shard"],
                 multiprocess_mode="livesum", registry=REGISTRY)
PUBLISHED = Counter("gateway_ledger_batches_published", "Command batches stored in JetStream", registry=REGISTRY)
LEDGER_SECONDS = Histogram("gateway_ledger_latency_seconds", "Submit to result of one ledger command",
                           buckets=LEDGER_BUCKETS, registry=REGISTRY)
LEDGER_TIMEOUTS = Counter("gateway_ledger_timeouts", "Commands not answered within GATEWAY_LEDGER_TIMEOUT_MS",
                          registry=REGISTRY)
LEDGER_LAG = Gauge("gateway_ledger_lag_seconds", "Smoothed ledger round trip", multiprocess_mode="livemax",
                   registry=REGISTRY)
RATE_LIMITED = Counter("gateway_rate_limited", "Calls refused by a rate limit", registry=REGISTRY)
QUOTA_FAIL_OPEN = Counter("gateway_redis_quota_fail_open", "Quota checks let through while Redis failed",
                          registry=REGISTRY)
QUOTA_LIMITED = Counter("gateway_redis_quota_limited", "Calls refused by the shared Redis quota", registry=REGISTRY)
CACHE_HITS = Counter("gateway_session_cache_hits", "Session cache hits", registry=REGISTRY)
CACHE_MISSES = Counter("gateway_session_cache_misses", "Session cache misses", registry=REGISTRY)
CACHE_LOADS = Counter("gateway_session_cache_loads", "Session loads from Redis", registry=REGISTRY)
DEGRADATION_MODE = Gauge("gateway_degradation_mode", "1 for the current degradation mode", ["scope", "mode"],
                         multiprocess_mode="livemax", registry=REGISTRY)
DEGRADATION_CHANGES = Counter("gateway_degradation_changes", "Degradation mode changes", registry=REGISTRY)
DEGRADATION_ENTRIES = Gauge("gateway_degradation_entries", "Providers and brands in a degraded mode",
                            multiprocess_mode="livemax", registry=REGISTRY)
WS_CONNECTIONS = Gauge("gateway_ws_connections", "Player websockets open", multiprocess_mode="livesum",
                       registry=REGISTRY)
WS_PLAYERS = Gauge("gateway_ws_players", "Players with at least one websocket open", multiprocess_mode="livesum",
                   registry=REGISTRY)
WS_SENT = Counter("gateway_ws_messages_sent", "Messages sent to player websockets", registry=REGISTRY)
WS_CONFLATED = Counter("gateway_ws_balances_conflated", "Balance pushes folded into a newer one for a slow client",
                       registry=REGISTRY)
WS_SLOW = Counter("gateway_ws_slow_disconnects", "Websockets closed because the client did not keep up",
                  registry=REGISTRY)
WS_HIGH_WATER = Gauge("gateway_ws_queue_high_water", "Longest per-socket queue seen", multiprocess_mode="livemax",
                      registry=REGISTRY)
WS_CURSOR = Gauge("gateway_ws_event_cursor", "Event-stream sequence the websocket feed has reached",
                  multiprocess_mode="livemax", registry=REGISTRY)
PROVIDER_UP = Gauge("gateway_provider_up", "Last health check of a provider passed (1) or failed (0)",
                    ["provider"], multiprocess_mode="livemin", registry=REGISTRY)


def _add_histogram(child: Histogram, counts: list[int], total: float) -> None:
    """Add per-bucket counts (not cumulative, the last past every bound) and their sum to a histogram
    child: what ``observe`` does one value at a time. Its value cells are the library's own, and the
    bucket lists have the same bounds (``+Inf`` appended by the library)."""
    for cell, n in zip(child._buckets, counts, strict=True):
        if n:
            cell.inc(n)
    child._sum.inc(total)


class Exporter:
    """Copies one gateway process's tallies into the metrics: counters by difference since the last
    flush, gauges as they are now. Called from one task and from scrapes of the same event loop."""

    def __init__(self, state: GatewayState | None) -> None:
        self.state = state
        self._seen: dict[Hashable, float] = {}
        self._seen_hist: dict[str, tuple[list[int], float]] = {}

    def _delta(self, key: Hashable, total: float) -> float:
        before = self._seen.get(key, 0)
        self._seen[key] = total
        return total - before if total >= before else total  # a smaller total: a new source object

    def _counter(self, metric: Counter, key: Hashable, total: float, *labels: str) -> None:
        delta = self._delta(key, total)
        if delta > 0:
            (metric.labels(*labels) if labels else metric).inc(delta)

    def _counters(self, metric: Counter, name: str, totals: Mapping[Any, float]) -> None:
        for labels, total in list(totals.items()):
            self._counter(metric, (name, labels), total, *map(str, labels))

    def _histogram(self, child: Histogram, key: str, counts: list[int], total: float) -> None:
        before, before_sum = self._seen_hist.get(key, ([0] * len(counts), 0.0))
        if sum(counts) < sum(before):  # a new source object
            before, before_sum = [0] * len(counts), 0.0
        diff = [a - b for a, b in zip(counts, before, strict=True)]
        if any(diff):
            _add_histogram(child, diff, total - before_sum)
        self._seen_hist[key] = (list(counts), total)

    def flush(self) -> None:
        _PROCESS.flush_process()
        if self.state is not None:
            self._flush_state(self.state)

    def flush_process(self) -> None:
        """The tallies of the whole process (several apps in one process, as in tests, share them)."""
        self._counters(REQUESTS, "requests", counters.requests)
        for route, counts in list(counters.latency.items()):
            self._histogram(REQUEST_SECONDS.labels(route), f"route:{route}", counts, counters.latency_sum[route])
        self._counters(DISCONNECTS, "disconnects", {(k,): v for k, v in counters.disconnects.items()})
        self._counters(HTTP_TIMEOUTS, "timeouts", {(k,): v for k, v in TIMEOUTS.items()})
        self._counter(HTTP_MALFORMED, "malformed", REJECTED["malformed"])
        self._counters(BETS, "bets", counters.bets)
        self._counters(STAKE, "stake", counters.stake)

    def _flush_state(self, st: GatewayState) -> None:
        ledger = st.ledger
        for shard, q in enumerate(ledger.queue_state()):
            label = str(shard)
            for lane in ("settle", "bet"):
                QUEUE_DEPTH.labels(label, lane).set(float(q.get("depth_" + lane, 0)))  # type: ignore[arg-type]
            SHEDDING.labels(label).set(int(bool(q.get("shedding"))))
            INFLIGHT.labels(label).set(float(q.get("inflight", 0)))  # type: ignore[arg-type]
            if ("shed", shard) not in self._seen:
                SHED.labels(label)  # a zero series from the start: alerts on rate() see 0, not nothing
            self._counter(SHED, ("shed", shard), float(q.get("dropped", 0)), label)  # type: ignore[arg-type]
        self._counter(PUBLISHED, "published", ledger.published)
        self._histogram(LEDGER_SECONDS, "ledger", ledger.latency_counts, ledger.latency_sum)
        self._counter(LEDGER_TIMEOUTS, "ledger_timeouts", ledger.timeouts)
        LEDGER_LAG.set(ledger.lag_ewma_s)
        self._counter(RATE_LIMITED, "rate_limited", st.guards.limited)
        quota = st.wallet.quota
        if quota is not None:
            self._counter(QUOTA_FAIL_OPEN, "quota_fail_open", quota.fail_open)
            self._counter(QUOTA_LIMITED, "quota_limited", quota.limited)
        cache = st.wallet.sessions.cache
        self._counter(CACHE_HITS, "cache_hits", cache.hits)
        self._counter(CACHE_MISSES, "cache_misses", cache.misses)
        self._counter(CACHE_LOADS, "cache_loads", cache.loads)
        snap = st.degradation.snapshot()
        for mode in MODES:
            DEGRADATION_MODE.labels("global", mode).set(int(snap["global"] == mode))
        self._counter(DEGRADATION_CHANGES, "degradation_changes", snap["changes"])  # type: ignore[arg-type]
        DEGRADATION_ENTRIES.set(len(snap["entries"]))  # type: ignore[arg-type]
        hub = st.ws_hub
        if hub is not None:
            WS_CONNECTIONS.set(hub.count)
            WS_PLAYERS.set(len(hub.by_player))
            self._counter(WS_SENT, "ws_sent", hub.sent)
            self._counter(WS_CONFLATED, "ws_conflated", hub.conflated)
            self._counter(WS_SLOW, "ws_slow", hub.slow_disconnects)
            WS_HIGH_WATER.set(hub.high_water)
            WS_CURSOR.set(hub.cursor)

    async def run(self, stop: asyncio.Event) -> None:
        """Flush every ``FLUSH_INTERVAL_S`` until ``stop``; an error is logged and the loop goes on."""
        while not stop.is_set():
            try:
                self.flush()
            except Exception:
                log.exception("metrics flush failed; carrying on")
            try:
                await asyncio.wait_for(stop.wait(), FLUSH_INTERVAL_S)
            except TimeoutError:
                pass
        self.flush()


#: the process-wide tallies' exporter; each app's own (its ledger client, guards, ...) is on the app
_PROCESS = Exporter(None)
EXPORTER_KEY = web.AppKey("metrics_exporter", Exporter)


def _route_label(request: web.Request) -> str:
    info = request.match_info.route.resource
    return info.canonical if info is not None else "unmatched"


#: turns what a handler raised into its answer (``gateway.app.error_answer``); may raise it on
ErrorAnswer = Callable[[web.Request, Exception], web.StreamResponse]


def edge_middleware(answer: ErrorAnswer) -> Middleware:
    """The app's one middleware: errors answered by ``answer``, then every answer counted by route and
    status with its duration (a client gone mid-body counted apart, as a disconnect)."""

    @web.middleware
    async def edge(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        try:
            response: web.StreamResponse = await handler(request)
        except ClientDisconnected:
            counters.disconnects[_route_label(request)] += 1
            return web.Response(status=CLIENT_CLOSED)
        except Exception as exc:
            response = answer(request, exc)
        counters.observe_request(_route_label(request), response.status, time.perf_counter() - start)
        return response

    return edge


def render(registry: CollectorRegistry = REGISTRY) -> bytes:
    """Prometheus text of every worker sharing this process's multi-process folder, else of ``registry``."""
    path = os.environ.get(MULTIPROC_ENV)
    if path:
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path)  # type: ignore[no-untyped-call]
        return generate_latest(merged)
    return generate_latest(registry)


async def metrics_handler(request: web.Request) -> web.Response:
    (request.app.get(EXPORTER_KEY) or _PROCESS).flush()
    response = web.Response(body=render())
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    response.charset = "utf-8"
    return response
