"""The shard writer: one active per shard, one PostgreSQL transaction per batch, ack after commit.

A writer holds a session advisory lock on its shard's database before it pulls anything, so a second
writer for the same shard waits as a hot standby. It pulls whatever batches have queued on
``ledger.cmd.<shard>``, decides every command against state loaded set-based, writes all rows and the
batch's hash-chain link in ONE transaction, commits, publishes one result per command to the reply
subject each batch names, and only then acks. A writer killed between commit and ack is harmless:
JetStream redelivers the batch and every command meets its own idempotency row, answering the
original outcome.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import nats
import orjson
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from gateway.settings import Settings
from ledger import chain, store, transport
from ledger.commands import Command, InvalidCommand, Result, Status
from ledger.outbox import OutboxRelay
from ledger.puller import Puller
from ledger.rules import Engine, utc_day
from ledger.sharding import connect

log = logging.getLogger(__name__)

_CONNECTION_ERRORS = (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError, ConnectionError)


def writer_lock_key(settings: Settings, shard: int) -> int:
    digest = hashlib.sha256(f"ledger-writer:{settings.namespace}:{shard}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@dataclass(slots=True)
class BatchOutcome:
    results: list[Result]
    batch_seq: int
    events: int


class BatchApplier:
    """Applies lists of commands to one shard's database; owns the chain head between batches."""

    def __init__(self, conn: asyncpg.Connection, shard: int, settings: Settings) -> None:
        self.conn = conn
        self.shard = shard
        self.settings = settings
        self.cooling_off_ms = settings.rg_cooling_off_s * 1000
        self.events_prefix = transport.subject_prefix(settings)
        self._head: tuple[int, bytes] | None = None

    async def _chain_head(self) -> tuple[int, bytes]:
        if self._head is None:
            row = await self.conn.fetchrow("SELECT batch_seq, hash FROM batches ORDER BY batch_seq DESC LIMIT 1")
            self._head = (row["batch_seq"], bytes(row["hash"])) if row else (0, chain.GENESIS)
        return self._head

    async def apply(self, cmds: Sequence[Command]) -> BatchOutcome:
        """One transaction for the whole list; on a data error, each command alone (poison isolation)."""
        failure: BaseException | None = None
        for attempt in (1, 2):
            try:
                return await self._apply_once(cmds)
            except _CONNECTION_ERRORS:
                self._head = None
                raise
            except asyncpg.UniqueViolationError as exc:
                failure = exc
                self._head = None  # re-read the chain head: someone wrote to this shard behind our back
                if attempt == 1 and exc.constraint_name == "batches_pkey":
                    log.error("shard %d: the batch chain moved under this writer; retrying on the new head",
                              self.shard)
                    continue
                break
            except asyncpg.PostgresError as exc:
                failure = exc
                self._head = None
                break
        if len(cmds) == 1:
            log.error("shard %d: command %s refused by the database", self.shard, cmds[0].cmd_id, exc_info=failure)
            return BatchOutcome([_bad(cmds[0], "refused by the ledger database")], 0, 0)
        log.warning("shard %d: batch of %d failed, applying one by one", self.shard, len(cmds))
        results: list[Result] = []
        for cmd in cmds:
            results.extend((await self.apply([cmd])).results)
        return BatchOutcome(results, 0, 0)

    async def _apply_once(self, cmds: Sequence[Command]) -> BatchOutcome:
        now_ms = int(time.time() * 1000)
        seq, prev_hash = await self._chain_head()
        batch_seq = seq + 1
        # Two round trips: the load (which may create empty accounts and draws transaction numbers,
        # both harmless if the batch then fails) and the write, ONE statement and so one atomic
        # transaction with one commit. Nothing changes the shard in between: this writer holds the
        # shard's lock, and the database's own constraints still guard every row it writes.
        state, tx_ids = await store.load_state(self.conn, cmds, utc_day(now_ms), self.shard, len(cmds))
        engine = Engine(state, batch_seq=batch_seq, now_ms=now_ms, tx_ids=tx_ids,
                        cooling_off_ms=self.cooling_off_ms, events_prefix=self.events_prefix)
        results = [engine.apply(cmd) for cmd in cmds]
        m = engine.m
        digest = chain.batch_digest((chain.digest_fields(t) for t in m.txs), m.entries)
        new_hash = chain.chain_hash(prev_hash, batch_seq, digest)
        await store.write_mutations(self.conn, m, batch_seq, prev_hash, digest, new_hash)
        self._head = (batch_seq, new_hash)
        return BatchOutcome(results, batch_seq, len(m.events))


def _bad(cmd: Command, detail: str) -> Result:
    return Result(cmd.cmd_id, Status.BAD_COMMAND, 0, cmd.currency, 0, False, detail)


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
    """Pull loop of one shard: lock, fetch, apply, reply, ack."""

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
        self._stop = asyncio.Event()
        self.relay: OutboxRelay | None = None
        self.with_relay = relay

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                await self._run_once()
            except _CONNECTION_ERRORS as exc:
                self.active = False
                log.warning("shard %d writer lost its database (%s); reconnecting", self.shard, exc)
                await self._sleep(1.0)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            pass

    async def _run_once(self) -> None:
        conn = await connect(self.dsn, self.shard)
        try:
            key = writer_lock_key(self.settings, self.shard)
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
                if not self.active:
                    log.info("shard %d: another writer is active; standing by", self.shard)
                await self._sleep(1.0)
                if self._stop.is_set():
                    return
            self.active = True
            log.info("shard %d: writer active", self.shard)
            applier = BatchApplier(conn, self.shard, self.settings)
            relay_task = None
            if self.with_relay:
                self.relay = OutboxRelay(self.settings, self.shard, self.dsn, self.js)
                relay_task = asyncio.create_task(self.relay.run(), name=f"outbox-{self.shard}")
            try:
                await self._pull_loop(applier)
            finally:
                if self.relay is not None and relay_task is not None:
                    self.relay.stop()
                    await asyncio.gather(relay_task, return_exceptions=True)
        finally:
            self.active = False
            await conn.close()

    async def _pull_loop(self, applier: BatchApplier) -> None:
        puller = Puller(self.nc, transport.stream_name(self.settings, self.settings.stream_name),
                        transport.durable_name(self.settings, self.shard), self.settings.writer_fetch_msgs)
        await puller.start()
        try:
            while not self._stop.is_set():
                msgs = await puller.next(0.5)
                if msgs:
                    await self.process(applier, msgs)
        finally:
            await puller.stop()

    async def process(self, applier: BatchApplier, msgs: Sequence[Msg]) -> None:
        cmds: list[Command] = []
        replies: dict[str, str] = {}
        answers: defaultdict[str, list[list[Any]]] = defaultdict(list)
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
            outcome = await applier.apply(cmds)
            self.apply_seconds += time.perf_counter() - started
            for result in outcome.results:
                reply = replies.get(result.cmd_id, "")
                if reply:
                    answers[reply].append(result.to_wire())
            self.applied += len(cmds)
            self.batches += 1
            if outcome.events and self.relay is not None:
                self.relay.wake()
        for reply, rows in answers.items():
            await self.nc.publish(reply, orjson.dumps(rows))
        for msg in msgs:
            await msg.ack()
        await self.nc.flush()


async def run_writers(settings: Settings, shards: Sequence[int], stop: asyncio.Event, *, relay: bool = True) -> None:
    """Run the writers of ``shards`` in this process until ``stop`` is set (with their outbox relays
    unless ``relay`` is off, for when ``gateway relay`` runs them in a process of their own)."""
    dsns = settings.shard_dsns()
    nc = await nats.connect(settings.nats_url, name=f"ledger-writer-{settings.instance_id}",
                            max_reconnect_attempts=-1)
    js = nc.jetstream()
    await transport.ensure_streams(js, settings)
    for shard in shards:
        await js.add_consumer(transport.stream_name(settings, settings.stream_name),
                              transport.consumer_config(settings, shard))
    writers = [ShardWriter(settings, shard, dsns[shard], nc, relay=relay) for shard in shards]
    tasks = [asyncio.create_task(w.run(), name=f"writer-{w.shard}") for w in writers]
    runner = await serve_health(settings, nc, writers) if settings.writer_http_port else None
    try:
        await stop.wait()
    finally:
        for w in writers:
            w.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        if runner is not None:
            await runner.cleanup()
        await nc.drain()


async def serve_health(settings: Settings, nc: NATS, writers: Sequence[ShardWriter]) -> web.AppRunner:
    """/healthz (alive), /readyz (NATS up and every shard's writer holding its lock) and /metrics."""

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        shards = {str(w.shard): "active" if w.active else "standby" for w in writers}
        ready = nc.is_connected and all(w.active for w in writers)
        return web.json_response({"status": "ready" if ready else "not ready", "nats": nc.is_connected,
                                  "shards": shards}, status=200 if ready else 503)

    async def metrics(request: web.Request) -> web.Response:
        lines = ["# TYPE ledger_writer_applied_total counter"]
        for w in writers:
            lines.append(f'ledger_writer_applied_total{{shard="{w.shard}"}} {w.applied}')
            lines.append(f'ledger_writer_batches_total{{shard="{w.shard}"}} {w.batches}')
            lines.append(f'ledger_writer_apply_seconds_total{{shard="{w.shard}"}} {w.apply_seconds:.6f}')
            lines.append(f'ledger_writer_active{{shard="{w.shard}"}} {int(w.active)}')
            published = w.relay.published if w.relay else 0
            lines.append(f'ledger_outbox_published_total{{shard="{w.shard}"}} {published}')
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.http_host, settings.writer_http_port).start()
    return runner
