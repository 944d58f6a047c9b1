"""``gateway events tail``: follow the committed-event stream, one JSON line per event.

Reads the EVENTS stream through an ordered (ephemeral, flow-controlled) consumer filtered on the
subject, so it never disturbs the relays or other readers and leaves nothing behind when it stops.
``--since`` replays from a point in the stream's history (a duration such as ``15m`` or a timestamp).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import sys
from typing import TextIO

import nats
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from core.settings import Settings
from ledger import transport
from ledger.rules import subject_token

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(value: str, now: dt.datetime | None = None) -> dt.datetime:
    """``90s``, ``15m``, ``2h``, ``7d`` ago, or an ISO 8601 timestamp (UTC when it names no zone)."""
    value = value.strip()
    m = _DURATION.match(value)
    now = now or dt.datetime.now(dt.UTC)
    if m:
        return now - dt.timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])
    try:
        ts = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"--since: {value!r} is neither a duration (30s, 15m, 2h, 7d) nor a timestamp") from None
    return ts if ts.tzinfo else ts.replace(tzinfo=dt.UTC)


def tail_subject(settings: Settings, brand: str | None, etype: str | None) -> str:
    """``events.<tenant>.<brand>.<type>`` with wildcards where not filtered (types hold one dot)."""
    brand_part = subject_token(brand) if brand else "*"
    if etype:
        kind, _, action = etype.partition(".")
        type_part = f"{subject_token(kind)}.{subject_token(action)}" if action else f"{subject_token(kind)}.*"
    else:
        type_part = ">"
    return f"{transport.subject_prefix(settings)}events.*.{brand_part}.{type_part}"


async def tail(settings: Settings, *, brand: str | None = None, etype: str | None = None,
               since: dt.datetime | None = None, out: TextIO = sys.stdout, stop: asyncio.Event | None = None,
               limit: int = 0) -> int:
    """Print events until ``stop`` is set (or ``limit`` events); returns how many were printed."""
    stop = stop or asyncio.Event()
    nc = await nats.connect(settings.nats_url, name=f"events-tail-{settings.instance_id}",
                            max_reconnect_attempts=-1)
    printed = 0
    done = asyncio.Event()

    async def on_msg(msg: Msg) -> None:
        nonlocal printed
        if done.is_set():
            return
        out.write(msg.data.decode() + "\n")
        out.flush()
        printed += 1
        if limit and printed >= limit:
            done.set()

    cfg = ConsumerConfig()
    if since is not None:
        cfg.deliver_policy = DeliverPolicy.BY_START_TIME
        cfg.opt_start_time = since.astimezone(dt.UTC)
    else:
        cfg.deliver_policy = DeliverPolicy.NEW
    try:
        sub = await nc.jetstream().subscribe(
            tail_subject(settings, brand, etype), cb=on_msg, ordered_consumer=True, config=cfg,
            stream=transport.stream_name(settings, settings.events_stream_name))
        waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(done.wait())]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for w in waiters:
            w.cancel()
        await sub.unsubscribe()
    finally:
        await nc.close()
    return printed
