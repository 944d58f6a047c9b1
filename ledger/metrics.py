"""The ledger writer process's Prometheus metrics (``prometheus_client``), served on its /metrics.

One writer process runs the writers of its shards; the per-batch histograms are observed once per
batch (a few µs against a PostgreSQL round trip), the writers' own counters are read at scrape time
by a collector, so the pull loop keeps plain integers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class _Relay(Protocol):
    @property
    def published(self) -> int: ...


class ShardWriter(Protocol):
    """What a scrape reads of a shard writer (``ledger.writer.ShardWriter``), without importing it."""

    @property
    def shard(self) -> int: ...
    @property
    def applied(self) -> int: ...
    @property
    def batches(self) -> int: ...
    @property
    def apply_seconds(self) -> float: ...
    @property
    def active(self) -> bool: ...
    @property
    def failures(self) -> int: ...
    @property
    def events_published(self) -> int: ...
    @property
    def event_failures(self) -> int: ...
    @property
    def relay(self) -> _Relay | None: ...


REGISTRY = CollectorRegistry(auto_describe=True)

BATCH_COMMANDS = Histogram("ledger_writer_batch_commands", "Commands applied in one database transaction",
                           ["shard"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), registry=REGISTRY)
COMMIT_SECONDS = Histogram("ledger_writer_commit_seconds", "Load, decide, write and commit of one batch",
                           ["shard"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
                           registry=REGISTRY)
SETTLE_LAG = Histogram("ledger_settle_lag_seconds",
                       "From a command batch stored in JetStream to its commit (queueing in the stream included)",
                       ["shard"], buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
                       registry=REGISTRY)


class WriterCollector(Collector):
    """The writers' counters and states, read when scraped."""

    def __init__(self, writers: Sequence[ShardWriter], restarts: Callable[[], dict[str, int]]) -> None:
        self.writers = writers
        self.restarts = restarts

    def collect(self) -> Iterator[Metric]:
        applied = CounterMetricFamily("ledger_writer_applied", "Commands applied", labels=["shard"])
        batches = CounterMetricFamily("ledger_writer_batches", "Batches committed", labels=["shard"])
        seconds = CounterMetricFamily("ledger_writer_apply_seconds", "Time spent applying batches", labels=["shard"])
        active = GaugeMetricFamily("ledger_writer_active", "1 while this writer holds its shard's lock",
                                   labels=["shard"])
        failures = CounterMetricFamily("ledger_writer_failures", "Failures the writer loop survived",
                                       labels=["shard"])
        restarts = CounterMetricFamily("ledger_writer_restarts", "Writer tasks that ended and were restarted",
                                       labels=["shard"])
        published = CounterMetricFamily("ledger_outbox_published", "Events the outbox relay recovered (published "
                                        "late, for a writer that died or lost NATS)", labels=["shard"])
        events = CounterMetricFamily("ledger_writer_events_published", "Events the writer published after commit",
                                     labels=["shard"])
        event_failures = CounterMetricFamily("ledger_writer_event_failures",
                                             "Event publishes left to the outbox relay (NATS failed)", labels=["shard"])
        ended = self.restarts()
        for w in self.writers:
            shard = [str(w.shard)]
            applied.add_metric(shard, w.applied)
            batches.add_metric(shard, w.batches)
            seconds.add_metric(shard, w.apply_seconds)
            active.add_metric(shard, int(w.active))
            failures.add_metric(shard, w.failures)
            restarts.add_metric(shard, ended.get(f"writer-{w.shard}", 0))
            published.add_metric(shard, w.relay.published if w.relay else 0)
            events.add_metric(shard, w.events_published)
            event_failures.add_metric(shard, w.event_failures)
        yield from (applied, batches, seconds, active, failures, restarts, published, events, event_failures)


def registry_for(writers: Sequence[ShardWriter], restarts: Callable[[], dict[str, int]]) -> CollectorRegistry:
    """The process's histograms plus these writers' counters (a registry per served endpoint)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WriterCollector(writers, restarts))
    registry.register(_Histograms())
    return registry


class _Histograms(Collector):
    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def observe_batch(shard: int, commands: int, seconds: float, msgs: Sequence[Msg]) -> None:
    """One committed batch: its size, its apply time and how long its oldest message waited since
    JetStream stored it (the settle lag a provider sees, less the gateway's own queueing)."""
    label = str(shard)
    BATCH_COMMANDS.labels(label).observe(commands)
    COMMIT_SECONDS.labels(label).observe(seconds)
    stored = [ts for m in msgs if (ts := _stored_at(m)) is not None]
    if stored:
        SETTLE_LAG.labels(label).observe(max(0.0, time.time() - min(stored)))


def _stored_at(msg: Msg) -> float | None:
    try:
        return msg.metadata.timestamp.timestamp()
    except Exception:  # not a JetStream delivery (its reply subject carries no metadata)
        return None
