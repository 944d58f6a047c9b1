"""The writer's publisher of committed events: one JetStream message per event, acks counted, not parsed.

Each event goes out as its own message on ``events.<tenant>.<brand>.<type>`` with the event id as
``Nats-Msg-Id`` (the EVENTS stream's consumers read exactly that; the relay sends the same), all of a
batch's publishes before any ack is awaited. Their acks come back on one reply subscription that only
counts them: a stored or duplicate ack is fine, an error or a no-responders status (the stream gone)
fails the batch, and so does an ack missing at the timeout. A failed batch is not retried here: its
rows stay in the outbox past the writer's watermark, for the relay. Leaner per event than
``publish_async`` (no future, no parsed ack object per message), which is the point.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ledger import transport

_EXPECTED_STREAM = "Nats-Expected-Stream"
#: how often a wait for acks looks at the connection
_CHECK_S = 0.1


class EventsNotStored(Exception):
    """Some of a batch's events were refused by JetStream, or not acked in time."""


@dataclass(slots=True)
class _Wait:
    left: int
    done: asyncio.Future[None]
    errors: int = 0
    detail: list[bytes] = field(default_factory=list)


class EventPublisher:
    def __init__(self, nc: NATS, stream: str) -> None:
        self.nc = nc
        self.stream = stream
        self._sub: Subscription | None = None
        self._prefix = ""
        self._next = 0
        self._pending: dict[str, _Wait] = {}

    async def _subscription(self) -> None:
        if self._sub is None:  # resubscribed by the client after a reconnect
            self._prefix = self.nc.new_inbox()
            self._sub = await self.nc.subscribe(self._prefix + ".*.*", cb=self._on_ack)

    async def _on_ack(self, msg: Msg) -> None:
        wait = self._pending.get(msg.subject.split(".")[-2])
        if wait is None:
            return  # a late ack of a batch that timed out
        data = msg.data
        if not data or b'"error"' in data:  # empty: a status (503 no responders) instead of an ack
            wait.errors += 1
            if len(wait.detail) < 3:
                wait.detail.append(data or str((msg.headers or {}).get("Status", "no ack")).encode())
        wait.left -= 1
        if wait.left <= 0 and not wait.done.done():
            wait.done.set_result(None)

    async def publish(self, events: Sequence[tuple[str, str, bytes]], ack_wait_s: float) -> None:
        """All of ``events`` stored (or already there), else ``EventsNotStored`` / a NATS error."""
        if not events:
            return
        if not self.nc.is_connected:
            raise EventsNotStored("NATS is not connected")
        await self._subscription()
        self._next += 1
        token = str(self._next)
        wait = _Wait(len(events), asyncio.get_running_loop().create_future())
        self._pending[token] = wait
        reply = f"{self._prefix}.{token}."
        epoch = self.nc.stats["reconnects"]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ack_wait_s
        try:
            for i, (event_id, subject, payload) in enumerate(events):
                await self.nc.publish(subject, payload, reply=f"{reply}{i}",
                                      headers={transport.MSG_ID_HEADER: event_id, _EXPECTED_STREAM: self.stream})
            while not wait.done.done():
                # acks of publishes a restarted server never stored will not come: after a disconnect the
                # relay recovers these rows, and the writer must not sit out the whole ack wait
                if self.nc.stats["reconnects"] != epoch or not self.nc.is_connected:
                    raise EventsNotStored(f"NATS connection lost with {wait.left} of {len(events)} acks missing")
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise EventsNotStored(f"{wait.left} of {len(events)} events not acked in {ack_wait_s:g}s")
                await asyncio.wait((wait.done,), timeout=min(_CHECK_S, remaining))
        finally:
            self._pending.pop(token, None)
        if wait.errors:
            raise EventsNotStored(f"{wait.errors} of {len(events)} events refused: "
                                  + "; ".join(d.decode(errors="replace")[:200] for d in wait.detail))
