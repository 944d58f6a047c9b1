"""The shard writer: one active per shard, one PostgreSQL transaction per batch, ack after commit.

A writer holds a session advisory lock on its shard's database before it pulls anything, so a second
writer for the same shard waits as a hot standby. It pulls whatever batches have queued on
``ledger.cmd.<shard>``, decides every command against state loaded set-based, writes all rows and the
batch's hash-chain link in ONE transaction, commits, publishes one result per command to the reply
subject each batch names, and only then acks. A writer killed between commit and ack is harmless:
JetStream redelivers the batch and every command meets its own idempotency row, answering the
original outcome. Then it publishes the batch's events (``ledger.outbox`` recovers what it could not).
Between batches it keeps the shard's hot state in memory (``ledger.hotstate``), dropped on any error.

Faults heal in place. A writer that loses its database or NATS mid-batch neither acks nor answers:
it NAKs what it holds (so the batch comes straight back, to be reapplied idempotently), reconnects
with capped exponential backoff and carries on; so does any unexpected exception (logged with its
traceback). Pull requests are renewed after a NATS reconnect, and the stream and consumer are
recreated when a server came back without them. A writer task that still ends is a crash that
``run_writers`` logs loudly and restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import nats
import nats.errors
import orjson
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from core import logs, otel
from core.commands import Command, InvalidCommand, Result, Status
from core.settings import Settings
from ledger import chain, store, transport
from ledger import metrics as ledger_metrics
from ledger.backoff import Backoff
from ledger.eventpub import EventPublisher
from ledger.hotstate import HotState
from ledger.outbox import OutboxRelay
from ledger.puller import Puller
from ledger.rules import BatchState, Engine, utc_day, window_starts
from ledger.sharding import connect_writer
from ledger.tasks import Supervisor

log = logging.getLogger(__name__)

#: the database is unreachable, restarting or out of resources: nothing about the batch itself, so it is
#: retried on a new connection and never refused (57P01-03 "terminating connection due to
#: administrator command" / "the database system is starting up", 53xxx too many connections)
_CONNECTION_ERRORS = (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError, ConnectionError,
                      asyncpg.exceptions.OperatorInterventionError, asyncpg.exceptions.InsufficientResourcesError)

_BALANCE_SQL = """SELECT b.balance FROM accounts a JOIN balances b USING (account_id)
                   WHERE a.kind = 'player' AND a.brand_id = $1 AND a.player_id = $2 AND a.currency = $3"""


_CURSOR_SQL = "UPDATE outbox_cursor SET last_seq = $1 WHERE id = 1 AND last_seq >= $2 AND last_seq < $1"


def writer_lock_key(settings: Settings, shard: int) -> int:
    digest = hashlib.sha256(f"ledger-writer:{settings.namespace}:{shard}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


Event = tuple[str, str, bytes]  # event id, subject, payload


@dataclass(slots=True)
class BatchOutcome:
    results: list[Result]
    batch_seq: int
    #: the committed events, for the writer to publish, and the highest outbox seq holding them (0: none)
    events: list[Event] = field(default_factory=list)
    outbox_seq: int = 0


class BatchApplier:
    """Applies lists of commands to one shard's database; owns the chain head between batches."""

    def __init__(self, conn: asyncpg.Connection, shard: int, settings: Settings) -> None:
        self.conn = conn
        self.shard = shard
        self.settings = settings
        self.cooling_off_ms = settings.rg_cooling_off_s * 1000
        self.events_prefix = transport.subject_prefix(settings)
        self._head: tuple[int, bytes] | None = None
        #: this connection's view of the shard (a new connection, e.g. after a takeover, starts empty)
        self.hot = HotState(settings.writer_cache_keys)
        #: whether the attempt under way presumed keys absent instead of loading them, and how often such
        #: a presumption met a key that existed (the batch was then decided again on a load)
        self._presumed = False
        self.presumed_misses = 0
        #: the outbox watermark: every row in (floor, published] was published by this writer; the cursor
        #: moves there inside the next batch's statement (or ``flush_watermark`` when idle), and only once
        #: it has reached ``floor`` (rows before this writer's first, or a failed publish, are the relay's)
        self.published = 0
        self.floor = -1
        self.flushed = 0

    async def _chain_head(self) -> tuple[int, bytes]:
        if self._head is None:
            row = await self.conn.fetchrow("SELECT batch_seq, hash FROM batches ORDER BY batch_seq DESC LIMIT 1")
            self._head = (row["batch_seq"], bytes(row["hash"])) if row else (0, chain.GENESIS)
        return self._head

    async def apply(self, cmds: Sequence[Command]) -> BatchOutcome:
        """One transaction for the whole list; on a data error, each command alone (poison isolation).
        A batch that presumed its new keys absent and met one that exists is decided again on a load."""
        failure: BaseException | None = None
        presume, chain_moved = True, False
        while True:
            try:
                return await self._apply_once(cmds, presume)
            except _CONNECTION_ERRORS:
                self._head = None
                self.hot.drop()
                raise
            except asyncpg.UniqueViolationError as exc:
                failure = exc
                self._head = None
                self.hot.drop()  # re-read the chain head: someone wrote to this shard behind our back
                if self._presumed:  # at most once: the next attempt loads every key it lacks
                    self.presumed_misses += 1
                    log.info("shard %d: a key presumed new exists (%s); deciding the batch again on a load",
                             self.shard, exc.constraint_name)
                    presume = False
                    continue
                if not chain_moved and exc.constraint_name == "batches_pkey":
                    log.error("shard %d: the batch chain moved under this writer; retrying on the new head",
                              self.shard)
                    chain_moved = True
                    continue
                break
            except asyncpg.PostgresError as exc:
                failure = exc
                self._head = None
                self.hot.drop()
                break
            except BaseException:
                self.hot.drop()  # the engine may have changed it before whatever this was
                raise
        if len(cmds) == 1:
            cmd = cmds[0]
            logs.bind(logs.trace_id_of(cmd.traceparent), cmd.brand_id, cmd.provider_id, self.shard)
            log.error("shard %d: command %s refused by the database", self.shard, cmd.cmd_id, exc_info=failure)
            # the balance now (the failed transaction left it as it was), never a made-up zero
            balance = await self.conn.fetchval(_BALANCE_SQL, cmd.brand_id, cmd.player_id, cmd.currency)
            return BatchOutcome([Result(cmd.cmd_id, Status.BAD_COMMAND, int(balance or 0), cmd.currency, 0, False,
                                        "refused by the ledger database")], 0)
        log.warning("shard %d: batch of %d failed, applying one by one", self.shard, len(cmds))
        whole = BatchOutcome([], 0)
        for cmd in cmds:
            one = await self.apply([cmd])
            whole.results.extend(one.results)
            whole.events.extend(one.events)  # every row written here is in this list: no gap for the watermark
            whole.outbox_seq = max(whole.outbox_seq, one.outbox_seq)
        return whole

    async def _apply_once(self, cmds: Sequence[Command], presume: bool = True) -> BatchOutcome:
        self._presumed = False  # until ``_state`` says otherwise: an earlier failure is never taken for a miss
        now_ms = int(time.time() * 1000)
        seq, prev_hash = await self._chain_head()
        batch_seq = seq + 1
        # At most two round trips: the load of what the hot state lacks (which may create empty accounts
        # and draws transaction numbers, both harmless if the batch then fails; none when warm) and the
        # write, ONE statement and so one atomic transaction with one commit. Nothing changes the shard
        # in between: this writer holds the shard's lock, and the database's own constraints still
        # guard every row it writes.
        state, tx_ids, presumed = await self._state(cmds, utc_day(now_ms), presume)
        engine = Engine(state, batch_seq=batch_seq, now_ms=now_ms, tx_ids=tx_ids,
                        cooling_off_ms=self.cooling_off_ms, events_prefix=self.events_prefix)
        results = [engine.apply(cmd) for cmd in cmds]
        m = engine.m
        digest = chain.batch_digest((chain.digest_fields(t) for t in m.txs), m.entries)
        new_hash = chain.chain_hash(prev_hash, batch_seq, digest)
        published = self.published if self.floor >= 0 else 0
        outbox_seq = await store.write_mutations(self.conn, m, batch_seq, prev_hash, digest, new_hash,
                                                 published, self.floor, presumed)
        self._head = (batch_seq, new_hash)
        self.flushed = max(self.flushed, published)
        if outbox_seq and self.floor < 0:
            self.floor = outbox_seq - 1  # this writer's first row: what came before is not its to vouch for
        return BatchOutcome(results, batch_seq, m.events, outbox_seq)

    def mark_published(self, outcome: BatchOutcome, ok: bool) -> None:
        """After publishing ``outcome``'s events: extend the watermark, or (on failure) leave everything up
        to its rows to the relay, the cursor moving on only after it recovered them."""
        if not outcome.outbox_seq:
            return
        if ok:
            self.published = max(self.published, outcome.outbox_seq)
        else:
            self.floor = max(self.floor, outcome.outbox_seq)

    async def flush_watermark(self) -> None:
        """When idle: move the cursor to what was published since the last batch's statement."""
        if self.floor >= 0 and self.published > self.flushed:
            await self.conn.execute(_CURSOR_SQL, self.published, self.floor)
            self.flushed = self.published

    async def _state(self, cmds: Sequence[Command], today: dt.date, presume: bool
                     ) -> tuple[BatchState, list[int], store.BatchKeys | None]:
        """The batch's state from memory, loading what is missing, and the keys presumed absent instead
        of loaded (``store.presumable``; the write fails where one exists), if any."""
        hot = self.hot
        missing = hot.missing(store.batch_keys(cmds), min(window_starts(today).values()))
        short = len(cmds) - len(hot.ids)
        # numbers are drawn a block ahead, so a warm batch rarely needs even that round trip
        n_ids = max(short, self.settings.batch_max_commands) if short > 0 and hot.limit > 0 else max(short, 0)
        self._presumed = presumed = bool(missing) and presume and hot.limit > 0 and store.presumable(cmds, missing)
        if missing and not presumed:
            hot.ids.extend(await store.load_into(self.conn, hot.state, missing, hot.since or today, self.shard,
                                                 n_ids))
        else:
            if presumed:
                store.mark_absent(hot.state, missing)
            if n_ids:
                hot.ids.extend(await store.draw_ids(self.conn, self.shard, n_ids))
        if missing:
            hot.loaded(missing)
        return hot.state, hot.take_ids(len(cmds)), missing if presumed else None


def decode_batch(data: bytes) -> tuple[list[Command], list[Result]]:
    """A batch body is a JSON array of command objects; bad ones are answered, never applied."""
    good: list[Command] = []
    bad: list[Result] = []
    try:
        items = orjson.loads(data)
    except orjson.JSONDecodeError:
        return good, bad
    if not isinstance(items, list):
        return good, bad
    for item in items:
        try:
            good.append(Command.from_wire(item))
        except (InvalidCommand, AttributeError) as exc:
            cmd_id = item.get("id", "") if isinstance(item, dict) else ""
            bad.append(Result(str(cmd_id), Status.BAD_COMMAND, 0, "", 0, False, str(exc)))
    return good, bad


class ShardWriter:
    """Pull loop of one shard: lock, fetch, apply, reply, ack; reconnects after any failure."""

    def __init__(self, settings: Settings, shard: int, dsn: str, nc: NATS, *, relay: bool = True) -> None:
        self.settings = settings
        self.shard = shard
        self.dsn = dsn
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.applied = 0
        self.batches = 0
        self.apply_seconds = 0.0
        self.active = False
        #: failures the loop survived (database or NATS lost, unexpected errors), for /metrics
        self.failures = 0
        self._stop = asyncio.Event()
        self.relay: OutboxRelay | None = None
        self.with_relay = relay
        self._relay_task: asyncio.Task[None] | None = None
        self._backoff = Backoff(0.1, 5.0)
        self._active_since = float("inf")
        self._events = EventPublisher(nc, transport.stream_name(settings, settings.events_stream_name))
        #: events this writer published itself after commit, and batches whose events it could not
        self.events_published = 0
        self.event_failures = 0

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Until stopped, whatever happens: every failure is logged and retried after a backoff."""
        logs.bind(shard=self.shard)
        while not self._stop.is_set():
            try:
                await self._run_once()
            except _CONNECTION_ERRORS as exc:
                self.failures += 1
                log.warning("shard %d writer lost its database (%s: %s); reconnecting", self.shard,
                            type(exc).__name__, exc)
            except nats.errors.Error as exc:
                self.failures += 1
                log.warning("shard %d writer lost NATS (%s: %s); restarting its loop", self.shard,
                            type(exc).__name__, exc)
            except Exception:
                self.failures += 1
                log.exception("shard %d writer failed unexpectedly; restarting its loop", self.shard)
            finally:
                self.active = False
            if time.monotonic() - self._active_since > 10.0:
                self._backoff.reset()  # it ran well for a while: this is a new fault, retry fast again
            self._active_since = float("inf")
            if not self._stop.is_set():
                await self._sleep(self._backoff.next())

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            pass

    async def _run_once(self) -> None:
        conn = await connect_writer(self.dsn, self.shard)
        try:
            key = writer_lock_key(self.settings, self.shard)
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
                if not self.active:
                    log.info("shard %d: another writer is active; standing by", self.shard)
                await self._sleep(1.0)
                if self._stop.is_set():
                    return
            self.active = True
            self._active_since = time.monotonic()
            log.info("shard %d: writer active", self.shard)
            applier = BatchApplier(conn, self.shard, self.settings)
            self._start_relay()
            try:
                await self._pull_loop(applier)
            finally:
                if self.relay is not None and self._relay_task is not None:
                    self.relay.stop()
                    await asyncio.gather(self._relay_task, return_exceptions=True)
                    self._relay_task = None
        finally:
            self.active = False
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)

    def _start_relay(self) -> None:
        if self.with_relay:
            self.relay = OutboxRelay(self.settings, self.shard, self.dsn, self.js)
            self._relay_task = asyncio.create_task(self.relay.run(), name=f"outbox-{self.shard}")

    def _check_relay(self) -> None:
        """The relay loop survives errors by itself; one that still ended is a crash: say so, restart."""
        task = self._relay_task
        if task is not None and task.done():
            exc = None if task.cancelled() else task.exception()
            log.critical("shard %d: outbox relay task ended unexpectedly; restarting it", self.shard, exc_info=exc)
            self._start_relay()

    async def _ensure_transport(self) -> None:
        """Recreate the stream and this shard's consumer (idempotent), e.g. after NATS lost its store."""
        await transport.ensure_streams(self.js, self.settings)
        await transport.ensure_consumer(self.js, self.settings, self.shard)

    async def _pull_loop(self, applier: BatchApplier) -> None:
        puller = Puller(self.nc, transport.stream_name(self.settings, self.settings.stream_name),
                        transport.durable_name(self.settings, self.shard), self.settings.writer_fetch_msgs)
        await puller.start()
        epoch = self.nc.stats["reconnects"]
        try:
            while not self._stop.is_set():
                if puller.missing or self.nc.stats["reconnects"] != epoch:
                    # after a reconnect the server may have come back without its store
                    epoch = self.nc.stats["reconnects"]
                    try:
                        await self._ensure_transport()
                        puller.missing = False
                    except Exception as exc:
                        log.warning("shard %d: cannot recreate the stream and consumer yet (%s: %s)", self.shard,
                                    type(exc).__name__, exc)
                        await self._sleep(self._backoff.next())
                        continue
                self._check_relay()
                logs.bind(shard=self.shard)  # the last batch's traces are done with
                msgs = await puller.next(0.5)
                if msgs:
                    await self.process(applier, msgs)
                else:
                    await applier.flush_watermark()
        finally:
            await puller.stop()

    async def process(self, applier: BatchApplier, msgs: Sequence[Msg]) -> None:
        """Apply, answer, ack; if anything fails before the acks, NAK the lot so it comes back at once
        (reapplying it is idempotent) and let the error restart the loop. Answers and acks leave with the
        client's own flusher: no PING round trip per batch (an ack lost with the connection only means
        a redelivery, answered from the idempotency rows)."""
        try:
            await self._process(applier, msgs)
        except BaseException:
            for msg in msgs:
                with contextlib.suppress(Exception):
                    await msg.nak()
            raise

    async def _process(self, applier: BatchApplier, msgs: Sequence[Msg]) -> None:
        cmds: list[Command] = []
        outcome = BatchOutcome([], 0)
        replies: dict[str, str] = {}
        answers: defaultdict[str, list[list[Any]]] = defaultdict(list)
        trace_ids = ",".join(t for m in msgs if (t := (m.headers or {}).get(transport.TRACE_IDS_HEADER)))
        logs.bind(trace_ids, shard=self.shard)  # this batch's log lines name every trace in it
        for msg in msgs:
            good, bad = decode_batch(msg.data)
            reply = (msg.headers or {}).get(transport.REPLY_HEADER, "")
            if not good and not bad:
                log.error("shard %d: dropping a message that is not a command batch", self.shard)
            for cmd in good:
                replies[cmd.cmd_id] = reply
            cmds.extend(good)
            if reply:
                answers[reply].extend(r.to_wire() for r in bad)
        if cmds:
            started = time.perf_counter()
            with otel.span("ledger.batch", cmds[0].traceparent, {"ledger.shard": self.shard,
                                                                 "ledger.commands": len(cmds)}):
                outcome = await applier.apply(cmds)
            took = time.perf_counter() - started
            self.apply_seconds += took
            ledger_metrics.observe_batch(self.shard, len(cmds), took, msgs)
            for result in outcome.results:
                reply = replies.get(result.cmd_id, "")
                if reply:
                    answers[reply].append(result.to_wire())
            self.applied += len(cmds)
            self.batches += 1
        for reply, rows in answers.items():
            await self.nc.publish(reply, orjson.dumps(rows))
        for msg in msgs:
            await msg.ack()
        if cmds and outcome.events:
            applier.mark_published(outcome, await self._publish_events(outcome.events))

    async def _publish_events(self, events: Sequence[Event]) -> bool:
        """The committed batch's events (``ledger.eventpub``). A failure is only logged: the rows stay in
        the outbox past the watermark, and the relay publishes them after its grace."""
        try:
            await self._events.publish(events, 10.0)
        except Exception as exc:  # NATS down, the EVENTS stream missing, an ack timeout: the relay recovers
            self.event_failures += 1
            log.warning("shard %d: %d events not published (%s: %s); the outbox relay will", self.shard,
                        len(events), type(exc).__name__, exc)
            return False
        self.events_published += len(events)
        return True


async def run_writers(settings: Settings, shards: Sequence[int], stop: asyncio.Event, *, relay: bool = True) -> None:
    """Run the writers of ``shards`` in this process until ``stop`` is set (with their outbox relays
    unless ``relay`` is off, for when ``gateway relay`` runs them in a process of their own). A writer
    task that ends before ``stop`` is a crash: logged at CRITICAL and restarted (``tasks.Supervisor``)."""
    dsns = settings.shard_dsns()
    nc = await nats.connect(settings.nats_url, name=f"ledger-writer-{settings.instance_id}",
                            max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                            **transport.connection_callbacks("ledger writer"))
    js = nc.jetstream()
    await transport.ensure_streams(js, settings)
    for shard in shards:
        await transport.ensure_consumer(js, settings, shard)
    writers = [ShardWriter(settings, shard, dsns[shard], nc, relay=relay) for shard in shards]
    supervisor = Supervisor({f"writer-{w.shard}": w.run for w in writers})
    supervisor.start()
    runner = await serve_health(settings, nc, writers, supervisor) if settings.writer_http_port else None
    try:
        await supervisor.run_until(stop)
    finally:
        for w in writers:
            w.stop()
        await supervisor.join()
        if runner is not None:
            await runner.cleanup()
        await nc.drain()


async def serve_health(settings: Settings, nc: NATS, writers: Sequence[ShardWriter],
                       supervisor: Supervisor | None = None) -> web.AppRunner:
    """/healthz (alive), /readyz (NATS up, every shard's writer holding its lock, and no shard's oldest
    command older than ``ready_max_pending_age_s``) and /metrics."""
    js = nc.jetstream()

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        shards = {str(w.shard): "active" if w.active else "standby" for w in writers}
        ready = nc.is_connected and all(w.active for w in writers)
        body: dict[str, Any] = {"nats": nc.is_connected, "shards": shards}
        bound = settings.ready_max_pending_age_s
        if bound and nc.is_connected:
            try:
                stalled = await asyncio.wait_for(
                    transport.stalled_shards(js, settings, [w.shard for w in writers], bound), 2.0)
            except Exception as exc:
                ready = False
                body["pending"] = f"unknown: {type(exc).__name__}: {exc}"[:200]
            else:
                body["stalled"] = {str(s): round(age, 1) for s, age in stalled.items()}
                ready = ready and not stalled
        body["status"] = "ready" if ready else "not ready"
        return web.json_response(body, status=200 if ready else 503)

    registry = ledger_metrics.registry_for(writers, lambda: supervisor.restarts if supervisor is not None else {})

    async def metrics(request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(registry))
        response.content_type, response.charset = CONTENT_TYPE_LATEST.split(";")[0], "utf-8"
        return response

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.http_host, settings.writer_http_port).start()
    return runner
