"""The floor: the least a settlement can cost in this design's shape, measured beside the gateway.

DESIGN fixes the path of every bet and win: an aiohttp edge answers only after the ledger committed,
the command crosses NATS JetStream (stored, so a queued win survives a crash) to a pull consumer, which
commits to PostgreSQL and replies. This module is that path and nothing else: no validation, session,
rules, idempotency lookup, hash chain, events or metrics. The edge batches the requests of one loop
turn into one JetStream message (as the gateway does per shard); the writer commits each message's
ids with one ``unnest`` INSERT and answers with one message. Its CPU per call is what any
implementation of the design in Python pays on this machine before doing the ledger's work.

    python -m benchmarks.floor edge PORT NATS_URL
    python -m benchmarks.floor writer NATS_URL PG_DSN
"""

from __future__ import annotations

import asyncio
import itertools
import sys

import asyncpg
import nats
import orjson
import uvloop
from aiohttp import web
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig

STREAM, SUBJECT, DURABLE = "FLOOR", "floor.cmd", "floor-writer"


async def ensure_stream(nc: nats.NATS) -> None:
    """Stored like the gateway's LEDGER stream: file storage, work-queue retention, a dedup window."""
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=STREAM, subjects=[SUBJECT], retention=RetentionPolicy.WORK_QUEUE,
                                     storage=StorageType.FILE, duplicate_window=120.0))
    await js.add_consumer(STREAM, ConsumerConfig(durable_name=DURABLE, ack_policy=AckPolicy.EXPLICIT,
                                                 ack_wait=10.0, max_ack_pending=10_000))


async def edge(port: int, nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    await ensure_stream(nc)
    loop = asyncio.get_running_loop()
    pending: list[tuple[str, asyncio.Future[int]]] = []
    waiting: dict[str, asyncio.Future[int]] = {}
    inbox, acks = nc.new_inbox(), nc.new_inbox()
    batch_ids = itertools.count()
    wake = asyncio.Event()

    async def on_reply(msg: Msg) -> None:
        for tx_id, balance in orjson.loads(msg.data):
            fut = waiting.pop(tx_id, None)
            if fut is not None and not fut.done():
                fut.set_result(balance)

    async def on_ack(msg: Msg) -> None:
        if b'"error"' in msg.data:
            print("floor: a batch was not stored:", msg.data.decode(), file=sys.stderr)

    await nc.subscribe(inbox, cb=on_reply)
    await nc.subscribe(acks + ".*", cb=on_ack)

    async def flusher() -> None:
        """One JetStream message for the requests of each loop turn (the handlers ran before this)."""
        while True:
            await wake.wait()
            wake.clear()
            batch = pending[:]
            pending.clear()
            waiting.update(batch)
            await nc.publish(SUBJECT, orjson.dumps([t for t, _ in batch]), reply=f"{acks}.x",
                             headers={"Nats-Msg-Id": f"{inbox}.{next(batch_ids)}", "Gw-Reply": inbox})

    async def handle(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        fut: asyncio.Future[int] = loop.create_future()
        pending.append((body["transaction_id"], fut))
        wake.set()
        balance = await asyncio.wait_for(fut, 10)
        return web.Response(body=orjson.dumps({"status": "OK", "balance": balance,
                                               "transaction_id": body["transaction_id"]}),
                            content_type="application/json")

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await flusher()


async def writer(nats_url: str, dsn: str) -> None:
    nc = await nats.connect(nats_url)
    await ensure_stream(nc)
    pg = await asyncpg.connect(dsn)
    await pg.execute("CREATE TABLE IF NOT EXISTS floor_tx (tx_id text PRIMARY KEY, amount bigint NOT NULL)")
    sub = await nc.jetstream().pull_subscribe(SUBJECT, durable=DURABLE, stream=STREAM)
    while True:
        try:
            msgs = await sub.fetch(batch=16, timeout=1)
        except nats.errors.TimeoutError:
            continue
        for msg in msgs:
            ids = orjson.loads(msg.data)
            await pg.execute("INSERT INTO floor_tx SELECT * FROM unnest($1::text[], $2::bigint[]) "
                             "ON CONFLICT DO NOTHING", ids, [100] * len(ids))
            await nc.publish((msg.headers or {})["Gw-Reply"], orjson.dumps([[t, 100] for t in ids]))
            await msg.ack()


def main() -> None:
    uvloop.install()
    role, *args = sys.argv[1:]
    if role == "edge":
        asyncio.run(edge(int(args[0]), args[1]))
    else:
        asyncio.run(writer(args[0], args[1]))


if __name__ == "__main__":
    main()
