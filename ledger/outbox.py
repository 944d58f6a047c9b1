"""Transactional outbox relay: events leave the ledger only from committed outbox rows.

Rows are published in ``seq`` order with the event id as ``Nats-Msg-Id``, then the cursor advances in
the database. A relay that dies after publishing and before moving the cursor publishes the same
events again, and the EVENTS stream's duplicate window drops them: at-least-once from the table,
exactly-once into the stream within the window. One relay is active per shard (an advisory lock);
it may run inside the writer process or as a process of its own (``gateway relay``), woken by the
writer's NOTIFY at commit, with a slow poll as the fallback.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence

import asyncpg
import orjson
from nats.js import JetStreamContext

from gateway.settings import Settings
from ledger import transport
from ledger.sharding import connect, schema_for

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

    def _notified(self, *_: object) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    async def run(self) -> None:
        poll = self.settings.outbox_poll_ms / 1000
        while not self._stop.is_set():
            try:
                conn = await connect(self.dsn, self.shard)
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("outbox %d: cannot connect (%s)", self.shard, exc)
                await asyncio.sleep(1.0)
                continue
            try:
                while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", relay_lock_key(self.settings,
                                                                                                  self.shard)):
                    try:
                        await asyncio.wait_for(self._stop.wait(), 1.0)
                    except TimeoutError:
                        continue
                    return
                await conn.add_listener(f"gw_outbox_{schema_for(self.shard)}", self._notified)
                while not self._stop.is_set():
                    self._wake.clear()  # before reading: a commit notified during relay_once is not lost
                    moved = await self.relay_once(conn)
                    if moved < self.batch:
                        try:
                            await asyncio.wait_for(self._wake.wait(), poll)
                        except TimeoutError:
                            pass
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("outbox %d: %s; retrying", self.shard, exc)
                await asyncio.sleep(0.5)
            finally:
                await conn.close()

    async def relay_once(self, conn: asyncpg.Connection) -> int:
        cursor = await conn.fetchval("SELECT last_seq FROM outbox_cursor WHERE id = 1")
        rows = await conn.fetch(
            "SELECT seq, event_id, subject, payload FROM outbox WHERE seq > $1 ORDER BY seq LIMIT $2",
            cursor, self.batch)
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
        await conn.execute("UPDATE outbox_cursor SET last_seq = $1 WHERE id = 1", rows[-1]["seq"])
        self.published += len(rows)
        return len(rows)


async def run_relays(settings: Settings, shards: Sequence[int], stop: asyncio.Event) -> None:
    """Run the outbox relays of ``shards`` in this process until ``stop`` is set."""
    import nats

    dsns = settings.shard_dsns()
    nc = await nats.connect(settings.nats_url, name=f"outbox-relay-{settings.instance_id}",
                            max_reconnect_attempts=-1)
    js = nc.jetstream()
    await transport.ensure_streams(js, settings)
    relays = [OutboxRelay(settings, shard, dsns[shard], js) for shard in shards]
    tasks = [asyncio.create_task(r.run(), name=f"outbox-{r.shard}") for r in relays]
    try:
        await stop.wait()
    finally:
        for r in relays:
            r.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        await nc.drain()
