"""The writer publishes each committed batch's events itself; the outbox relay only recovers the tail."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import nats
import orjson
import pytest
from nats.aio.msg import Msg

from core.commands import Command, Kind
from core.settings import Settings
from gateway import embedded
from ledger import transport
from ledger.eventpub import EventPublisher, EventsNotStored
from ledger.outbox import OutboxRelay
from ledger.sharding import connect
from ledger.writer import ShardWriter
from tests.test_ledger import applier_on, command, own_db  # noqa: F401  (fixture)


async def _stream_events(js: nats.js.JetStreamContext, s: Settings) -> Counter[str]:
    """Event id → how many messages of the EVENTS stream carry it (each must also be its Nats-Msg-Id)."""
    stream = transport.stream_name(s, s.events_stream_name)
    info = await js.stream_info(stream)
    seen: Counter[str] = Counter()
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(stream, seq)
        event = orjson.loads(msg.data or b"")
        assert msg.headers and msg.headers.get(transport.MSG_ID_HEADER) == event["id"]
        assert msg.subject == f"{transport.subject_prefix(s)}events.t1.b1.{event['type']}"
        seen[event["id"]] += 1
    return seen


async def _until(check: object, what: str, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not await check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.1)


async def test_writer_publishes_events_once_and_a_restart_republishes_only_the_tail(
        own_db: Settings) -> None:  # noqa: F811
    s = own_db.replace(outbox_grace_ms=0)
    dsn = s.shard_dsns()[0]
    nc = await nats.connect(s.nats_url)
    js = nc.jetstream()
    await transport.ensure_streams(js, s)
    await transport.ensure_consumer(js, s, 0)
    answered: list[dict[str, object]] = []
    reply = f"{transport.subject_prefix(s)}test.results"

    async def on_results(msg: Msg) -> None:
        answered.extend(orjson.loads(msg.data))

    await nc.subscribe(reply, cb=on_results)
    cmds: list[Command] = [command(Kind.DEPOSIT, "ida", "d1", 1000, provider_id="operator")]
    for i in range(5):
        cmds += [command(Kind.BET, "ida", f"b{i}", 100), command(Kind.WIN, "ida", f"w{i}", 50, ref_tx_id=f"b{i}")]
    for i in range(0, len(cmds), 3):  # several JetStream messages, so several batches
        body = orjson.dumps([c.to_wire() for c in cmds[i:i + 3]])
        await js.publish(transport.cmd_subject(s, 0), body,
                         headers={transport.MSG_ID_HEADER: f"m{i}", transport.REPLY_HEADER: reply})
    writer = ShardWriter(s, 0, dsn, nc, relay=False)
    task = asyncio.create_task(writer.run())
    db = await connect(dsn, 0)
    try:
        async def all_answered() -> bool:
            return len(answered) == len(cmds)
        await _until(all_answered, "every command answered")
        # 1 credit for the deposit; each bet: placed + debited; each win: settled + credited
        expected = 1 + 5 * 4

        async def all_events() -> bool:
            return sum((await _stream_events(js, s)).values()) >= expected
        await _until(all_events, "every event in the EVENTS stream")
        seen = await _stream_events(js, s)
        assert len(seen) == expected and set(seen.values()) == {1}  # exactly once each
        assert writer.events_published == expected and writer.event_failures == 0

        # the watermark follows: the outbox cursor reaches the last row (moved when the writer went idle)
        async def cursor_at_end() -> bool:
            return bool(await db.fetchval(
                "SELECT last_seq = (SELECT max(seq) FROM outbox) FROM outbox_cursor WHERE id = 1"))
        await _until(cursor_at_end, "the outbox cursor at the last published row")
    finally:
        writer.stop()
        await asyncio.wait_for(task, 30)

    try:
        # a writer that committed and died before publishing: its batch is past the cursor
        async with applier_on(s, 0) as applier:
            tail = await applier.apply([command(Kind.BET, "ida", "b-tail", 10)])
        assert len(tail.events) == 2
        relay = OutboxRelay(s, 0, dsn, js)
        assert await relay.relay_once(db) == 1  # only the one row past the watermark
        assert await relay.relay_once(db) == 0
        seen = await _stream_events(js, s)
        assert len(seen) == expected + 2 and set(seen.values()) == {1}
        assert await cursor_at_end()
    finally:
        await db.close()
        await nc.drain()


async def test_a_failed_publish_leaves_the_cursor_to_the_relay(own_db: Settings) -> None:  # noqa: F811
    s = own_db.replace(outbox_grace_ms=0)
    dsn = s.shard_dsns()[0]
    nc = await nats.connect(s.nats_url)
    js = nc.jetstream()
    await transport.ensure_streams(js, s)
    db = await connect(dsn, 0)
    try:
        # no stream captures this subject: the server answers "no responders", never an ack
        lost = EventPublisher(nc, transport.stream_name(s, s.events_stream_name))
        with pytest.raises(EventsNotStored):
            await lost.publish([("1:x", f"{s.namespace}.nowhere.x", b"{}")], 5.0)
        async with applier_on(s, 0) as applier:
            await applier.apply([command(Kind.DEPOSIT, "jo", "d1", 1000, provider_id="operator")])
            first = await applier.apply([command(Kind.BET, "jo", "b1", 10)])
            applier.mark_published(first, False)  # its events did not reach the stream
            second = await applier.apply([command(Kind.BET, "jo", "b2", 10)])
            applier.mark_published(second, True)
            await applier.flush_watermark()
            cursor = await db.fetchval("SELECT last_seq FROM outbox_cursor WHERE id = 1")
            assert cursor < first.outbox_seq  # not past the unpublished row
            relay = OutboxRelay(s, 0, dsn, js)
            assert await relay.relay_once(db) >= 2  # the failed row and everything after it
            assert await db.fetchval("SELECT last_seq FROM outbox_cursor WHERE id = 1") == second.outbox_seq
            seen = await _stream_events(js, s)
            assert {f"{first.events[0][0]}", f"{second.events[0][0]}"} <= set(seen) and set(seen.values()) == {1}
            # once the relay passed the failed row, the writer's watermark moves the cursor again
            third = await applier.apply([command(Kind.BET, "jo", "b3", 10)])
            applier.mark_published(third, True)
            await applier.flush_watermark()
            assert await db.fetchval("SELECT last_seq FROM outbox_cursor WHERE id = 1") == third.outbox_seq
    finally:
        await db.close()
        await nc.drain()


async def test_a_publish_waiting_for_acks_gives_up_when_the_connection_drops(tmp_path: Path) -> None:
    """Acks of events a killed server never stored will not come: after a reconnect the writer leaves the
    batch to the relay at once instead of sitting out the whole ack wait, with its shard stalled."""
    server = await asyncio.to_thread(embedded.start_nats, tmp_path)
    nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    try:
        # a plain subscriber that never answers: no "no responders" status, so no ack ever comes
        async def silent(msg: Msg) -> None:
            return None

        await nc.subscribe("events.t.b.bet.placed", cb=silent)
        publisher = EventPublisher(nc, "EVENTS")
        attempt = asyncio.create_task(publisher.publish([("1:bet.placed", "events.t.b.bet.placed", b"{}")], 120.0))
        await asyncio.sleep(0.3)
        assert not attempt.done()
        server.process.kill()
        await asyncio.to_thread(server.process.wait, 10)
        await asyncio.to_thread(server.stop)
        server = await asyncio.to_thread(embedded.start_nats, tmp_path, port=server.port)
        with pytest.raises(EventsNotStored, match="connection lost"):
            await asyncio.wait_for(attempt, 60)
        with pytest.raises(EventsNotStored, match="not connected"):  # and nothing is sent while it is down
            server.process.kill()
            await asyncio.to_thread(server.process.wait, 10)
            for _ in range(100):
                if not nc.is_connected:
                    break
                await asyncio.sleep(0.05)
            await publisher.publish([("2:bet.placed", "events.t.b.bet.placed", b"{}")], 120.0)
    finally:
        await nc.close()
        await asyncio.to_thread(server.stop)
