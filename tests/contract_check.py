"""Reads back every event a test session published and checks each against its versioned contract."""

from __future__ import annotations

from collections import Counter

import nats
import orjson
from nats.js.api import DeliverPolicy

from contracts import event_problems
from core.settings import Settings
from ledger import transport


async def stream_problems(settings: Settings, max_problems: int = 20) -> tuple[Counter[str], list[str]]:
    """(events seen per type, contract violations) over the namespace's whole EVENTS stream."""
    nc = await nats.connect(settings.nats_url, name="contract-check")
    seen: Counter[str] = Counter()
    problems: list[str] = []
    try:
        js = nc.jetstream()
        stream = transport.stream_name(settings, settings.events_stream_name)
        if (await js.stream_info(stream)).state.messages == 0:
            return seen, problems
        sub = await js.subscribe(f"{transport.subject_prefix(settings)}events.>", stream=stream,
                                 ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
        try:
            while True:
                msg = await sub.next_msg(timeout=10)
                event = orjson.loads(msg.data)
                seen[str(event.get("type"))] += 1
                if len(problems) < max_problems:
                    problems.extend(event_problems(event))
                if msg.metadata.num_pending == 0:
                    break
        finally:
            await sub.unsubscribe()
    finally:
        await nc.close()
    return seen, problems
