"""A continuous JetStream pull: messages are handed over the moment they arrive.

A plain ``fetch(batch, timeout)`` keeps waiting until the whole batch has arrived or the timeout has
passed, which would add up to the timeout to every settlement at low load. Here one pull request for
up to ``batch`` messages is kept outstanding; messages land in a local queue as the server delivers
them, and ``next()`` returns everything queued as soon as there is anything. A new request is sent
when the previous one is used up or expires, so the writer never idles while batches wait.

A request can also vanish without a word: the server restarts (pending requests live only in its
memory), or its closing status is lost. So a request is also taken as over once the client has
reconnected since sending it, or once it is older than its own expiry plus a grace period; then the
next ``next()`` sends a new one. A ``503`` status means nobody serves the consumer (the stream or the
durable consumer is gone, e.g. a server that came back without its store): ``missing`` tells the
caller to recreate them, and the request is retried at ``next()``'s pace, never in a tight loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

log = logging.getLogger(__name__)

#: how long past its expiry a request may stay silent before it is taken as lost
_GRACE_S = 1.0


class Puller:
    def __init__(self, nc: NATS, stream: str, durable: str, batch: int, expires_s: float = 1.0) -> None:
        self.nc = nc
        self.subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self.batch = batch
        self.expires_s = expires_s
        self.inbox = nc.new_inbox()
        self._queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._owed = 0  # messages the outstanding request may still deliver
        self._sent_at = 0.0  # monotonic time the outstanding request was sent
        self._sent_epoch = -1  # the client's reconnect count when it was sent
        self._sub: Subscription | None = None
        self._renew: asyncio.Future[None] | None = None
        #: set by a 503 answer (no consumer behind the subject); the owner recreates it and clears this
        self.missing = False
        #: requests taken as lost (reconnect or silent expiry), for logs and tests
        self.lost_requests = 0

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(self.inbox, cb=self._on_msg)

    async def stop(self) -> None:
        """Unsubscribe; what was delivered but not handed out is NAKed so it comes back at once
        (instead of after the ack wait) to whoever pulls next."""
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        while not self._queue.empty():
            with contextlib.suppress(Exception):
                await self._queue.get_nowait().nak()

    async def _on_msg(self, msg: Msg) -> None:
        status = msg.headers.get("Status") if msg.headers else None
        if status is None:
            self._owed = max(0, self._owed - 1)
            self._queue.put_nowait(msg)
        elif status == "100":
            pass  # idle heartbeat
        elif status in ("404", "408"):
            # no messages / request expired: this request is over; keep one outstanding even while
            # next() is waiting, or arrivals would sit unpulled until its wait ran out
            self._owed = 0
            self._renew = asyncio.ensure_future(self._ensure_request())
        else:
            # 503 no responders (consumer or stream gone), 409 consumer deleted / leadership change /
            # too many waiting: over too, but renewed at next()'s pace so a persistent refusal cannot
            # turn into a request storm
            self._owed = 0
            if status == "503":
                self.missing = True
            log.warning("pull request on %s ended: %s %s", self.subject, status,
                        msg.headers.get("Description", "") if msg.headers else "")

    def _request_lost(self) -> bool:
        if self.nc.stats["reconnects"] != self._sent_epoch:
            return True  # the server that held it may be gone, or it reached a server with no state
        return time.monotonic() - self._sent_at > self.expires_s + _GRACE_S

    async def _ensure_request(self) -> None:
        if self._owed and not self._request_lost():
            return
        if self._owed:
            self.lost_requests += 1
            log.info("pull request on %s lost (reconnected or silent past its expiry); sending a new one",
                     self.subject)
        self._owed = self.batch
        self._sent_at = time.monotonic()
        self._sent_epoch = self.nc.stats["reconnects"]
        try:
            await self.nc.publish(self.subject, orjson.dumps({"batch": self.batch,
                                                               "expires": int(self.expires_s * 1e9)}),
                                  reply=self.inbox)
        except Exception as exc:  # disconnected with a full buffer, closing, ...: next() tries again
            self._owed = 0
            log.warning("pull request on %s not sent: %s: %s", self.subject, type(exc).__name__, exc)

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
