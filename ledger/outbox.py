"""Transactional outbox relay: the recovery path for events the writer could not publish.

Every committed batch's events are in the outbox (one row per batch, or per ledger transaction for rows
of earlier releases, each a JSON array of [event id, subject, event]). The writer publishes them itself
right after its commit and moves the outbox cursor past what it published. The relay only publishes
rows the cursor has not passed ``outbox_grace_ms`` after their commit (a writer that died, lost NATS
or met a missing EVENTS stream), in ``seq`` order with the event id as ``Nats-Msg-Id``, then moves the
cursor (never back). Whatever both of them publish, or a relay that dies before moving the cursor
publishes again, the EVENTS stream's duplicate window drops: exactly-once into the stream within the
window. One relay is active per shard (an advisory lock); it may run inside the writer process or as a
process of its own (``gateway relay``), polling every ``outbox_poll_ms``. Any failure (database or NATS
gone, the EVENTS stream missing after NATS lost its store, anything unexpected) is logged and retried
after a capped backoff; the loop ends only when told to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Sequence

import asyncpg
import nats.errors
import nats.js.errors
import orjson
from nats.js import JetStreamContext

from core.settings import Settings
from ledger import transport
from ledger.backoff import Backoff
from ledger.sharding import connect
from ledger.tasks import Supervisor

log = logging.getLogger(__name__)


def relay_lock_key(settings: Settings, shard: int) -> int:
    digest = hashlib.sha256(f"outbox-relay:{settings.namespace}:{shard}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class OutboxRelay:
    def __init__(self, settings: Settings, shard: int, dsn: str, js: JetStreamContext, batch: int = 500) -> None:
        self.settings = settings
        self.shard = shard
        self.dsn = dsn
        self.js = js
        self.batch = batch
        self.published = 0
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    async def run(self) -> None:
        backoff = Backoff(0.1, 5.0)
        while not self._stop.is_set():
            try:
                await self._run_once(backoff)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("outbox %d: database unreachable (%s: %s); retrying", self.shard, type(exc).__name__, exc)
            except (nats.errors.NoRespondersError, nats.js.errors.NotFoundError) as exc:
                log.warning("outbox %d: EVENTS stream missing (%s); recreating it", self.shard, type(exc).__name__)
                with contextlib.suppress(Exception):
                    await transport.ensure_streams(self.js, self.settings)
            except nats.errors.Error as exc:
                log.warning("outbox %d: NATS unavailable (%s: %s); retrying", self.shard, type(exc).__name__, exc)
            except Exception:
                log.exception("outbox %d: unexpected failure; retrying", self.shard)
            await self._sleep(backoff.next())

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _run_once(self, backoff: Backoff) -> None:
        poll = self.settings.outbox_poll_ms / 1000
        conn = await connect(self.dsn, self.shard)
        try:
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", relay_lock_key(self.settings,
                                                                                              self.shard)):
                await self._sleep(1.0)
                if self._stop.is_set():
                    return
            while not self._stop.is_set():
                self._wake.clear()  # before reading: a commit notified during relay_once is not lost
                moved = await self.relay_once(conn)
                backoff.reset()
                if moved < self.batch:
                    try:
                        await asyncio.wait_for(self._wake.wait(), poll)
                    except TimeoutError:
                        pass
        finally:
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)

    async def relay_once(self, conn: asyncpg.Connection) -> int:
        cursor = await conn.fetchval("SELECT last_seq FROM outbox_cursor WHERE id = 1")
        rows = await conn.fetch(
            "SELECT seq, event_id, subject, payload FROM outbox WHERE seq > $1"
            " AND created_at < now() - make_interval(secs => $3) ORDER BY seq LIMIT $2",
            cursor, self.batch, self.settings.outbox_grace_ms / 1000)
        if not rows:
            return 0
        stream = transport.stream_name(self.settings, self.settings.events_stream_name)
        # pipelined: every publish goes out before the first ack is awaited; a row holds all the events
        # of one ledger transaction as [event id, subject, event] triples
        acks = []
        for r in rows:
            for event_id, subject, event in orjson.loads(bytes(r["payload"])):
                acks.append(await self.js.publish_async(subject, orjson.dumps(event), stream=stream,
                                                        headers={transport.MSG_ID_HEADER: event_id}))
        await asyncio.wait_for(asyncio.gather(*acks), 10.0)
        # the writer may have moved it further meanwhile
        await conn.execute("UPDATE outbox_cursor SET last_seq = greatest(last_seq, $1) WHERE id = 1", rows[-1]["seq"])
        self.published += len(rows)
        return len(rows)


async def run_relays(settings: Settings, shards: Sequence[int], stop: asyncio.Event) -> None:
    """Run the outbox relays of ``shards`` in this process until ``stop`` is set; one that ends before
    is a crash, logged at CRITICAL and restarted."""
    dsns = settings.shard_dsns()
    nc = await nats.connect(settings.nats_url, name=f"outbox-relay-{settings.instance_id}",
                            max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                            **transport.connection_callbacks("outbox relay"))
    js = nc.jetstream()
    await transport.ensure_streams(js, settings)
    relays = [OutboxRelay(settings, shard, dsns[shard], js) for shard in shards]
    supervisor = Supervisor({f"outbox-{r.shard}": r.run for r in relays})
    supervisor.start()
    try:
        await supervisor.run_until(stop)
    finally:
        for r in relays:
            r.stop()
        await supervisor.join()
        await nc.drain()
