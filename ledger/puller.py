"""A continuous JetStream pull: messages are handed over the moment they arrive.

A plain ``fetch(batch, timeout)`` keeps waiting until the whole batch has arrived or the timeout has
passed, which would add up to the timeout to every settlement at low load. Here one pull request for
up to ``batch`` messages is kept outstanding; messages land in a local queue as the server delivers
them, and ``next()`` returns everything queued as soon as there is anything. A new request is sent
when the previous one is used up or expires, so the writer never idles while batches wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

log = logging.getLogger(__name__)


class Puller:
    def __init__(self, nc: NATS, stream: str, durable: str, batch: int, expires_s: float = 1.0) -> None:
        self.nc = nc
        self.subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self.batch = batch
        self.expires_ns = int(expires_s * 1e9)
        self.inbox = nc.new_inbox()
        self._queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._owed = 0  # messages the outstanding request may still deliver
        self._sub: Subscription | None = None
        self._renew: asyncio.Future[None] | None = None

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(self.inbox, cb=self._on_msg)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def _on_msg(self, msg: Msg) -> None:
        status = msg.headers.get("Status") if msg.headers else None
        if status is None:
            self._owed = max(0, self._owed - 1)
            self._queue.put_nowait(msg)
        elif status == "100":
            pass  # idle heartbeat
        else:
            # 404 no messages / 408 request expired / 409 consumer changed: this request is over
            if status not in ("404", "408"):
                log.warning("pull request on %s ended: %s %s", self.subject, status,
                            msg.headers.get("Description", "") if msg.headers else "")
            self._owed = 0
            # keep a request outstanding even while next() is waiting, or arrivals would sit unpulled
            # until its wait ran out
            self._renew = asyncio.ensure_future(self._ensure_request())

    async def _ensure_request(self) -> None:
        if self._owed == 0:
            self._owed = self.batch
            await self.nc.publish(self.subject, orjson.dumps({"batch": self.batch, "expires": self.expires_ns}),
                                  reply=self.inbox)

    async def next(self, wait_s: float) -> list[Msg]:
        """Everything delivered so far, waiting up to ``wait_s`` for the first message."""
        await self._ensure_request()
        try:
            first = await asyncio.wait_for(self._queue.get(), wait_s)
        except TimeoutError:
            return []
        msgs = [first]
        while not self._queue.empty() and len(msgs) < self.batch * 4:
            msgs.append(self._queue.get_nowait())
        await self._ensure_request()
        return msgs
