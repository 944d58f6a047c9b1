"""W3C trace context from the provider's call to the writer (NATS headers), the ledger row and the event;
OpenTelemetry export only when configured."""

from __future__ import annotations

import asyncio
import secrets
import sys
import time
from typing import Any

import nats
import orjson
import pytest
from nats.aio.msg import Msg

from adapters.native import sign
from core import otel
from core.settings import Settings
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


def test_tracing_is_off_without_an_endpoint_or_the_extra(monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    otel.disable()
    assert not otel.configure("", "game-gateway") and otel.TRACER is None
    with otel.span("ledger.command", "00-" + "a" * 32 + "-" + "b" * 16 + "-01", {}):
        pass  # a no-op
    # the endpoint is set but the extra is not installed: a warning, and still off
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    assert not otel.configure("http://127.0.0.1:4318/v1/traces", "game-gateway")
    assert otel.TRACER is None and "pip install '.[otel]'" in caplog.text


async def test_command_span_joins_the_providers_trace(api: Api) -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    otel.use_processor(SimpleSpanProcessor(exporter), "game-gateway")
    try:
        trace_id = secrets.token_hex(16)
        _, token = await api.funded("10.00")
        body = orjson.dumps({"session_token": token, "transaction_id": api.ns + "span-bet",
                             "round_id": api.ns + "span-r", "amount": "1.00", "currency": "EUR"})
        status, answer = await api.raw("/v1/providers/demo/bet", body, {
            "X-Signature": sign(DEMO_SECRET, body), "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01",
            "Content-Type": "application/json"})
        assert status == 200, answer
    finally:
        otel.disable()
    spans = [s for s in exporter.get_finished_spans() if s.name == "ledger.command"]
    ours = [s for s in spans if f"{s.context.trace_id:032x}" == trace_id]
    assert len(ours) == 1 and (ours[0].attributes or {}).get("ledger.kind") == "bet", spans


def test_new_traceparent_is_well_formed_and_fresh() -> None:
    from gateway.wallet import new_traceparent, valid_traceparent

    made = {new_traceparent() for _ in range(1000)}
    assert len(made) == 1000
    assert all(valid_traceparent(tp) == tp for tp in made)  # what a caller could send back is kept


def test_command_ids_are_32_hex_and_never_repeat_in_a_forked_child() -> None:
    """The ledger tells a redelivery (same id) from a retry (new id): a forked worker must not replay
    its parent's sequence of ids."""
    import os

    from gateway.wallet import new_cmd_id

    ids = [new_cmd_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids go to the parent, then it leaves at once
        os.write(write, ",".join(new_cmd_id() for _ in range(3)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as pipe:
        child = pipe.read().decode().split(",")
    parent = [new_cmd_id() for _ in range(3)]
    assert not set(child) & set(parent)
    assert child[0][:20] != parent[0][:20]
