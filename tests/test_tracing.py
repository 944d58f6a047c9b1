"""W3C trace context from the provider's call to the writer (NATS headers), the ledger row and the event;
OpenTelemetry export only when configured."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import nats
import orjson
from nats.aio.msg import Msg

from adapters.native import sign
from gateway.settings import Settings
from hotpath.shard import shard_for
from ledger import transport
from ledger.sharding import connect
from tests.support import DEMO_SECRET, Api


async def test_traceparent_reaches_the_writer_headers_the_ledger_row_and_the_event(api: Api,
                                                                                   writers: Settings) -> None:
    trace_id = secrets.token_hex(16)
    trace = f"00-{trace_id}-{secrets.token_hex(8)}-01"
    prefix = transport.subject_prefix(writers)
    batches: list[Msg] = []
    events: list[dict[str, Any]] = []

    async def on_batch(msg: Msg) -> None:
        batches.append(msg)

    async def on_event(msg: Msg) -> None:
        events.append(orjson.loads(msg.data))

    nc = await nats.connect(writers.nats_url)
    try:
        await nc.subscribe(prefix + "ledger.cmd.>", cb=on_batch)
        await nc.subscribe(prefix + "events.>", cb=on_event)
        await nc.flush()
        player, token = await api.funded("10.00")
        tx = api.ns + "traced-bet"
        body = orjson.dumps({"session_token": token, "transaction_id": tx, "round_id": api.ns + "traced-round",
                             "amount": "1.00", "currency": "EUR"})
        status, answer = await api.raw("/v1/providers/demo/bet", body, {
            "X-Signature": sign(DEMO_SECRET, body), "traceparent": trace, "Content-Type": "application/json"})
        assert status == 200, answer
        deadline = time.monotonic() + 10
        while not any(e.get("traceparent") == trace for e in events):
            assert time.monotonic() < deadline, events
            await asyncio.sleep(0.05)
    finally:
        await nc.drain()
    ours = [m for m in batches if trace_id in (m.headers or {}).get(transport.TRACE_IDS_HEADER, "").split(",")]
    assert len(ours) == 1, [m.headers for m in batches]
    assert (ours[0].headers or {})[transport.TRACEPARENT_HEADER].startswith("00-")
    shard = shard_for(player["player_id"], writers.shards)
    conn = await connect(writers.shard_dsns()[shard], shard)
    try:
        row = await conn.fetchval("SELECT traceparent FROM transactions WHERE tx_id = $1", tx)
    finally:
        await conn.close()
    assert row == trace
