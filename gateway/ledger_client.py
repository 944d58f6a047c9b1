"""The gateway's side of the ledger transport: route, queue, batch, publish, await.

Per shard, commands pass a bounded priority queue (bets sheddable, settlements never) into a batcher
that coalesces them into one JetStream message (bounded by count, bytes and a few ms). At most
``self.max_inflight`` batches per shard await their results; when the ledger slows, commands wait in the
queue, their sojourn time rises and the queue starts shedding new bets, while wins, rollbacks and
deposits still queue. A batch goes out as a plain publish to the stream's subject with a reply on one
wildcard ack subscription of the client's (``js.publish`` costs a request per call: its own inbox,
future, timeout and parsed ack object); it is retried with the same ``Nats-Msg-Id`` until acked, so
JetStream stores it once. Every command awaits its own result with a deadline; a late result is
dropped here, and the caller's retry meets the ledger's idempotency row.

NATS faults heal here too: the client reconnects forever and resubscribes the reply subject by
itself; a publish that fails for any reason is retried (same ``Nats-Msg-Id``) until the command's
deadline, recreating the streams when the server answers that nobody stores the subject (a server
that came back without its store). A pump survives any error (logged, capped backoff), and one that
still ends is logged as a crash and restarted. ``stalled_shards`` reports commands waiting longer
than the readiness bound, per shard.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import itertools
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from core import logs
from core.commands import Command, Kind, Result
from core.errors import LedgerTimeout, MalformedBody, Overloaded
from core.settings import Settings
from hotpath.backpressure import LANE_BET, LANE_SETTLE, ShardQueue
from hotpath.batcher import Batch, Batcher, PayloadTooLarge
from hotpath.shard import shard_for
from ledger import transport
from ledger.backoff import Backoff

log = logging.getLogger(__name__)

_SHEDDABLE = frozenset({Kind.BET, Kind.WITHDRAW})


#: the status of the empty message NATS sends to a publish's reply subject when nobody stores the subject
_NO_RESPONDERS = "503"


class _Expired(Exception):
    """A command's result did not arrive within the ledger timeout (set on its future by its timer)."""


def _fail(fut: asyncio.Future[Any], error: type[Exception]) -> None:
    """A deadline's timer callback: fail ``fut`` with ``error`` unless it has its answer."""
    if not fut.done():
        fut.set_exception(error())


@dataclass(slots=True)
class _Pending:
    cmd: Command
    payload: bytes
    future: asyncio.Future[Result]
    enqueued_ns: int


@dataclass
class _ShardState:
    queue: ShardQueue
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    inflight: int = 0


class LedgerClient:
    def __init__(self, settings: Settings, nc: NATS) -> None:
        self.settings = settings
        self.nc = nc
        self.js = nc.jetstream()
        self.shards = settings.shards
        self.max_inflight = settings.ledger_inflight_batches
        self._batchers = [Batcher(1, settings.batch_max_commands, settings.batch_max_bytes,
                                  settings.batch_max_delay_ms * 1_000_000) for _ in range(settings.shards)]
        self._state = [
            _ShardState(ShardQueue(settings.queue_max_depth, settings.queue_target_ms * 1_000_000,
                                   settings.queue_interval_ms * 1_000_000))
            for _ in range(settings.shards)
        ]
        self._waiting: dict[str, _Pending] = {}
        self._batch_ids = itertools.count(1)
        # always unique per process: batch ids are JetStream dedup keys, so two replicas configured
        # with the same instance id must still never produce the same Nats-Msg-Id
        self._instance = f"{settings.instance_id or 'gw'}-{uuid.uuid4().hex[:12]}"
        self.reply_subject = f"{transport.subject_prefix(settings)}_GW.{self._instance}.results"
        self._tasks: list[asyncio.Task[None]] = []
        self._sub: Subscription | None = None
        #: JetStream acks of batch publishes: one wildcard subscription, ``<prefix>.<batch number>`` each
        self._ack_prefix = nc.new_inbox()
        self._ack_cut = len(self._ack_prefix) + 1
        self._acks: dict[str, asyncio.Future[None]] = {}
        self._ack_sub: Subscription | None = None
        self.published = 0
        self.timeouts = 0
        #: submit → result latency, cumulative counts per bucket upper bound (seconds)
        self.latency_buckets = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.0)
        self.latency_counts = [0] * (len(self.latency_buckets) + 1)
        self.latency_sum = 0.0
        #: exponentially weighted ledger round trip (s): the "ledger lag" degradation watches
        self.lag_ewma_s = 0.0
        self.closing = False
        #: pump crashes survived (each logged with its traceback and retried after a backoff)
        self.pump_failures = 0
        self._closed = False
        self._streams_checked = 0.0

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await transport.ensure_streams(self.js, self.settings)
        self._sub = await self.nc.subscribe(self.reply_subject, cb=self._on_results)
        self._ack_sub = await self.nc.subscribe(self._ack_prefix + ".*", cb=self._on_ack)
        for shard in range(self.shards):
            self._tasks.append(self._start_pump(shard))

    def _start_pump(self, shard: int) -> asyncio.Task[None]:
        task = asyncio.create_task(self._pump(shard), name=f"ledger-pump-{shard}")
        task.add_done_callback(functools.partial(self._pump_ended, shard))
        return task

    def _pump_ended(self, shard: int, task: asyncio.Task[None]) -> None:
        """A pump only ends when closed; otherwise its shard would silently stop sending: restart it."""
        if self._closed:
            return
        exc = None if task.cancelled() else task.exception()
        log.critical("ledger pump of shard %d ended unexpectedly; restarting it", shard, exc_info=exc)
        asyncio.get_running_loop().call_later(0.5, self._restart_pump, shard)  # never a restart spin

    def _restart_pump(self, shard: int) -> None:
        if not self._closed:
            self._tasks[shard] = self._start_pump(shard)

    async def drain(self, timeout_s: float) -> None:
        """Stop taking commands; wait for the queued and in-flight ones to be answered."""
        self.closing = True
        deadline = time.monotonic() + timeout_s
        while self._waiting and time.monotonic() < deadline:  # noqa: ASYNC110 - futures finish elsewhere
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for sub in (self._sub, self._ack_sub):
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    # ------------------------------------------------------------------ submit
    def shard_of(self, player_id: str) -> int:
        return shard_for(player_id, self.shards)

    def queue_state(self) -> list[dict[str, object]]:
        return [dict(st.queue.state(), inflight=st.inflight) for st in self._state]

    def shedding(self) -> bool:
        return any(st.queue.shedding for st in self._state)

    def stalled_shards(self, max_age_s: float) -> dict[int, float]:
        """Shard → age (s) of its oldest command still awaiting its result, where older than ``max_age_s``.
        Commands wait in arrival order, so when the oldest of all is young enough this costs one look."""
        now = time.monotonic_ns()
        limit = int(max_age_s * 1e9)
        first = next(iter(self._waiting.values()), None)
        if first is None or now - first.enqueued_ns <= limit:
            return {}
        out: dict[int, float] = {}
        for pending in list(self._waiting.values()):
            if now - pending.enqueued_ns <= limit:
                break
            out.setdefault(self.shard_of(pending.cmd.player_id), (now - pending.enqueued_ns) / 1e9)
        return out

    async def submit(self, cmd: Command) -> Result:
        """Send one command to its shard's writer and await its result (raises Retryable)."""
        shard = self.shard_of(cmd.player_id)
        st = self._state[shard]
        now = time.monotonic_ns()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Result] = loop.create_future()
        pending = _Pending(cmd, orjson.dumps(cmd.to_wire()), fut, now)
        lane = LANE_BET if cmd.kind in _SHEDDABLE else LANE_SETTLE
        if not st.queue.offer(lane, pending, now):
            raise Overloaded("ledger shard is behind; bet shed", retry_after_s=1.0)
        self._waiting[cmd.cmd_id] = pending
        if st.inflight < self.max_inflight:
            # with the window full the pump has nothing to do with a new command (no free slot to batch it
            # for, nothing to launch): the batch that frees a slot wakes it (``_release``)
            st.wake.set()
        # one timer handle on the future itself: ``wait_for(shield(...))`` cost two extra futures and
        # callbacks per command; the deadline fails the future (awaited right here, so always retrieved)
        timer = loop.call_later(self.settings.ledger_timeout_ms / 1000, _fail, fut, _Expired)
        try:
            return await fut
        except _Expired:
            self.timeouts += 1
            raise LedgerTimeout(retry_after_s=1.0) from None
        finally:
            timer.cancel()
            self._waiting.pop(cmd.cmd_id, None)
            if not fut.done():
                fut.cancel()
            done = time.monotonic_ns()
            st.queue.record_sojourn(done - now, done)
            self._observe((done - now) / 1e9)

    def _observe(self, seconds: float) -> None:
        self.latency_sum += seconds
        self.lag_ewma_s += (seconds - self.lag_ewma_s) * 0.05
        # the first bound at or above ``seconds`` (past the last one: the overflow count)
        self.latency_counts[bisect.bisect_left(self.latency_buckets, seconds)] += 1

    # ------------------------------------------------------------------ pump: queue → batcher → JetStream
    async def _pump(self, shard: int) -> None:
        """Queue → batcher → JetStream. Adaptive: with nothing in flight a command goes at once; while
        batches are in flight, commands gather (up to the delay, count and byte bounds); while the window
        is full they wait in the queue, where their sojourn time drives shedding."""
        st = self._state[shard]
        batcher = self._batchers[shard]
        backoff = Backoff(0.05, 2.0)
        while True:
            try:
                await self._pump_once(shard, st, batcher)
                backoff.reset()
            except Exception:
                self.pump_failures += 1
                delay = backoff.next()
                log.exception("ledger pump of shard %d failed; carrying on in %.2f s", shard, delay)
                await asyncio.sleep(delay)

    async def _pump_once(self, shard: int, st: _ShardState, batcher: Batcher) -> None:
        """One turn: hand queued commands to the batcher, launch what is due, wait for the next event."""
        st.wake.clear()
        now = time.monotonic_ns()
        free = (self.max_inflight - st.inflight) * self.settings.batch_max_commands - batcher.pending(0)
        if free > 0:
            # bulk hand-over (one C call each): never more than the free slots can carry, so what is
            # left keeps standing in the queue, where its sojourn time drives shedding
            taken = st.queue.take_many(now, free)
            if taken:
                self._to_batcher(shard, batcher, taken, now)
        if st.inflight == 0:
            for batch in batcher.flush_all():
                self._launch(shard, batch)
        elif st.inflight < self.max_inflight:
            for batch in batcher.due(now):
                self._launch(shard, batch)
        deadline = batcher.next_deadline_ns() if st.inflight < self.max_inflight else None
        if deadline is None:
            await st.wake.wait()
        else:
            # a timer that sets the wake event, not ``asyncio.timeout``: that one cancels the pump at the
            # deadline (an exception thrown through it, the usual end of a turn under load) and costs a
            # context object per turn
            timer = asyncio.get_running_loop().call_later(max(0.0, (deadline - time.monotonic_ns()) / 1e9),
                                                         st.wake.set)
            try:
                await st.wake.wait()
            finally:
                timer.cancel()

    def _to_batcher(self, shard: int, batcher: Batcher, items: list[object], now: int) -> None:
        live = [p for p in items if isinstance(p, _Pending)
                and not (p.future.done() and p.cmd.kind in _SHEDDABLE)]  # a bet its caller gave up on stays unsent
        while live:
            try:
                batches = batcher.add_many(0, [p.cmd.cmd_id for p in live], [p.payload for p in live], now)
            except PayloadTooLarge as exc:  # one command too big for any message: refuse it, keep the rest
                for batch in exc.batches:
                    self._launch(shard, batch)
                bad = live[exc.index]
                if not bad.future.done():
                    bad.future.set_exception(MalformedBody("command too large for a ledger message"))
                live = live[exc.index + 1:]
                continue
            for batch in batches:
                self._launch(shard, batch)
            return

    def _launch(self, shard: int, batch: Batch) -> None:
        st = self._state[shard]
        st.inflight += 1
        task = asyncio.create_task(self._publish(shard, batch))
        task.add_done_callback(functools.partial(self._release, st))

    def _release(self, st: _ShardState, _task: asyncio.Task[None]) -> None:
        st.inflight -= 1
        st.wake.set()

    async def _publish(self, shard: int, batch: Batch) -> None:
        """Publish (retrying with the same message id) then hold the slot until answered or timed out."""
        token = str(next(self._batch_ids))
        msg_id = f"{self._instance}-{token}"
        reply = f"{self._ack_prefix}.{token}"
        subject = transport.cmd_subject(self.settings, shard)
        body = batch.encode()
        pending = [p for c in batch.cmd_ids if (p := self._waiting.get(c)) is not None]
        futures = [p.future for p in pending if not p.future.done()]
        headers = {transport.MSG_ID_HEADER: msg_id, transport.REPLY_HEADER: self.reply_subject}
        if pending:
            headers[transport.TRACEPARENT_HEADER] = pending[0].cmd.traceparent
            headers[transport.TRACE_IDS_HEADER] = ",".join(p.cmd.traceparent[3:35] for p in pending)
            logs.bind(headers[transport.TRACE_IDS_HEADER], shard=shard)  # this task's log lines name them
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self.settings.ledger_timeout_ms / 1000
        for attempt in itertools.count():
            ack: asyncio.Future[None] = loop.create_future()
            self._acks[token] = ack
            timer = loop.call_later(max(0.05, deadline - time.monotonic()), _fail, ack,
                                    nats.errors.TimeoutError)
            try:
                await self.nc.publish(subject, body, reply=reply, headers=headers)
                await ack
                self.published += 1
                break
            except Exception as exc:  # timeouts, disconnected, stream gone, ...: same message id again
                if isinstance(exc, nats.errors.NoRespondersError):
                    await self._recreate_streams()
                elif not isinstance(exc, nats.errors.Error):
                    log.exception("batch %s to shard %d: unexpected publish failure", msg_id, shard)
                if time.monotonic() >= deadline:
                    log.warning("batch %s to shard %d not stored after %d attempts: %s: %s",
                                msg_id, shard, attempt + 1, type(exc).__name__, exc)
                    return
                await asyncio.sleep(min(0.05 * (attempt + 1), 0.25))
            finally:
                timer.cancel()
                self._acks.pop(token, None)
        if futures:
            remaining = max(0.0, deadline - time.monotonic())
            await asyncio.wait(futures, timeout=remaining)

    async def _on_ack(self, msg: Msg) -> None:
        """JetStream's answer to a batch's publish: a stored (or duplicate) ack, an API error, or an empty
        status message (503: nothing stores the subject, the stream is gone)."""
        ack = self._acks.get(msg.subject[self._ack_cut:])
        if ack is None or ack.done():
            return  # the answer to an attempt already given up on
        data = msg.data
        if not data:
            status = (msg.headers or {}).get("Status", "")
            ack.set_exception(nats.errors.NoRespondersError() if status == _NO_RESPONDERS
                              else nats.errors.Error(f"publish answered with status {status or 'none'}"))
            return
        try:
            answer = orjson.loads(data)
        except orjson.JSONDecodeError:
            ack.set_exception(nats.errors.Error(f"publish answered with {data[:100]!r}"))
            return
        err = answer.get("error") if isinstance(answer, dict) else "not an object"
        if err is None:
            ack.set_result(None)
        elif isinstance(err, dict):
            ack.set_exception(nats.js.errors.APIError(code=err.get("code"), err_code=err.get("err_code"),
                                                      description=err.get("description")))
        else:
            ack.set_exception(nats.errors.Error(f"publish answered with error {err!r}"))

    async def _recreate_streams(self) -> None:
        """Nobody stores the subject: NATS came back without its store. Recreate (at most once a second)."""
        now = time.monotonic()
        if now - self._streams_checked < 1.0:
            return
        self._streams_checked = now
        try:
            await transport.ensure_streams(self.js, self.settings)
            log.warning("ledger stream was missing on NATS; recreated it")
        except Exception as exc:
            log.warning("ledger stream missing and not recreated yet: %s: %s", type(exc).__name__, exc)

    async def _on_results(self, msg: Msg) -> None:
        for row in orjson.loads(msg.data):
            pending = self._waiting.get(row[0])
            if pending is not None and not pending.future.done():
                pending.future.set_result(Result.from_wire(row))
