"""JetStream layout shared by the gateway (publisher) and the ledger writers (consumers).

``LEDGER``: subjects ``ledger.cmd.<shard>``, file storage, work-queue retention (a batch is gone once
its writer acks it), ``discard: new`` (a full stream refuses new batches rather than dropping queued
settlements) and a duplicate window so a publish retried with the same ``Nats-Msg-Id`` is stored once.
``EVENTS``: ``events.<tenant>.<brand>.<type>``, limits retention, the outbox relay's destination.
A namespace prefix lets several deployments or test runs share one NATS server.

Both streams and the writers' durable consumers are (re)created idempotently at start-up and again
whenever a process finds them missing (a NATS server that came back without its store), so the
ledger heals without an operator. ``stalled_shards`` is the readiness probes' measure of a stuck
shard: with work-queue retention a batch leaves the stream when its writer acks it, so the oldest
message still on a shard's subject is its oldest command not yet committed and answered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from core.settings import Settings

log = logging.getLogger(__name__)

REPLY_HEADER = "Gw-Reply"
MSG_ID_HEADER = "Nats-Msg-Id"
#: W3C trace context of a command batch's first command, and the trace ids of all of them (comma-separated),
#: so the writer's logs and spans need not parse the body (each command also carries its own traceparent)
TRACEPARENT_HEADER = "traceparent"
TRACE_IDS_HEADER = "Gw-Trace-Ids"


def subject_prefix(settings: Settings) -> str:
    return f"{settings.namespace}." if settings.namespace else ""


def stream_name(settings: Settings, base: str) -> str:
    return f"{settings.namespace}_{base}" if settings.namespace else base


def cmd_subject(settings: Settings, shard: int) -> str:
    return f"{subject_prefix(settings)}ledger.cmd.{shard}"


def durable_name(settings: Settings, shard: int) -> str:
    return f"writer-{shard}"


async def ensure_streams(js: JetStreamContext, settings: Settings) -> None:
    """Create or update both streams (idempotent; safe from every process at start-up)."""
    prefix = subject_prefix(settings)
    ledger = StreamConfig(
        name=stream_name(settings, settings.stream_name),
        subjects=[f"{prefix}ledger.cmd.*"],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        discard=DiscardPolicy.NEW,
        duplicate_window=settings.stream_duplicate_window_s,  # seconds
        max_msgs=settings.stream_max_msgs,
        max_msg_size=settings.batch_max_bytes + 64 * 1024,
        num_replicas=settings.stream_replicas,
    )
    events = StreamConfig(
        name=stream_name(settings, settings.events_stream_name),
        subjects=[f"{prefix}events.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        duplicate_window=settings.stream_duplicate_window_s,  # seconds
        max_age=7 * 24 * 3600.0,
        num_replicas=settings.stream_replicas,
    )
    for cfg in (ledger, events):
        try:
            await js.add_stream(cfg)
        except nats.js.errors.BadRequestError:
            await js.update_stream(cfg)


def consumer_config(settings: Settings, shard: int) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=durable_name(settings, shard),
        filter_subject=cmd_subject(settings, shard),
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=settings.writer_ack_wait_s,  # seconds
        max_ack_pending=10_000,
        max_waiting=16,
    )


async def ensure_consumer(js: JetStreamContext, settings: Settings, shard: int) -> None:
    """Create the shard writers' durable consumer (a no-op when it exists with this config)."""
    await js.add_consumer(stream_name(settings, settings.stream_name), consumer_config(settings, shard))


async def _oldest_age_s(js: JetStreamContext, stream: str, subject: str, now: float) -> float | None:
    try:
        msg = await js.get_msg(stream, seq=0, subject=subject, next=True)
    except nats.js.errors.NotFoundError:
        return None
    return max(0.0, now - msg.time.timestamp()) if msg.time is not None else None


async def stalled_shards(js: JetStreamContext, settings: Settings, shards: Iterable[int],
                         max_age_s: float) -> dict[int, float]:
    """Shard → age (s) of its oldest command still in the LEDGER stream, for those older than
    ``max_age_s``. One request when nothing is old (the stream's oldest message across all shards);
    one per shard only while something is. Ages come from the server's clock, so hosts must keep
    their clocks in sync (NTP) for the bound to mean what it says."""
    stream = stream_name(settings, settings.stream_name)
    now = time.time()
    oldest = await _oldest_age_s(js, stream, f"{subject_prefix(settings)}ledger.cmd.*", now)
    if oldest is None or oldest <= max_age_s:
        return {}
    wanted = list(shards)
    ages = await asyncio.gather(*(_oldest_age_s(js, stream, cmd_subject(settings, s), now) for s in wanted))
    return {s: age for s, age in zip(wanted, ages, strict=True) if age is not None and age > max_age_s}


def connection_callbacks(who: str) -> dict[str, Callable[..., Awaitable[None]]]:
    """nats.connect() callbacks that log each disconnect, reconnect and error in one line (the client's
    default logs a traceback for every failed reconnect attempt, burying the one line that matters)."""

    async def error_cb(exc: Exception) -> None:
        log.warning("%s: NATS: %s: %s", who, type(exc).__name__, exc)

    async def disconnected_cb() -> None:
        log.warning("%s: NATS disconnected; reconnecting", who)

    async def reconnected_cb() -> None:
        log.warning("%s: NATS reconnected", who)

    return {"error_cb": error_cb, "disconnected_cb": disconnected_cb, "reconnected_cb": reconnected_cb}
