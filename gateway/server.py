"""The HTTP server under the app: aiohttp's, with a deadline on every phase a client controls.

A connection costs a socket and a task however little its client sends, so a client must never be able
to hold one open by sending slowly or not at all:

- idle (``GATEWAY_HTTP_IDLE_TIMEOUT_S``): no request in progress, before the first one or between
  keep-alive requests: aiohttp's keep-alive timer between requests; before the first, a timer of ours
  (older aiohttp versions have none there);
- headers (``GATEWAY_HTTP_HEADER_TIMEOUT_S``): from a request's first byte until its headers are
  complete (a "slowloris" trickling header bytes); aiohttp has no such deadline, so ``GatewayRequestHandler``
  adds it;
- body (``GATEWAY_HTTP_BODY_TIMEOUT_S``): enforced where bodies are read (``core.http.read_body``),
  so the caller gets its protocol's retryable answer.

A request that is not even valid HTTP (a control byte in a header, a bad request line, a body that
cannot be decoded) gets aiohttp's plain 400 (or, once routed, the protocol's bad-syntax answer) and is
counted in ``gateway_http_malformed_total``, logged at debug level only: a client's garbage must not
write a traceback per request into the error log.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from core.http import REJECTED, TIMEOUTS
from core.settings import Settings


class GatewayRequestHandler(RequestHandler):
    """aiohttp's connection handler plus the header and first-request deadlines."""

    __slots__ = ("_deadline", "_header_timeout_s", "_idle_timeout_s", "_phase")

    def __init__(self, manager: web.Server, *, header_timeout_s: float, idle_timeout_s: float,
                 **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout_s = header_timeout_s
        self._idle_timeout_s = idle_timeout_s
        self._deadline: asyncio.TimerHandle | None = None
        #: what the armed deadline waits for: "" the first request's first byte (idle), "header" its headers
        self._phase = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm(self._idle_timeout_s, "")

    def data_received(self, data: bytes) -> None:
        count = self._request_count
        super().data_received(data)
        if self._request_count != count:  # a request's headers are complete: it is being handled
            self._disarm()
        elif data and self._idle() and (self._deadline is None or self._phase == ""):
            self._arm(self._header_timeout_s, "header")

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def log_exception(self, *args: Any, **kw: Any) -> None:
        # the client's malformed HTTP or body (framing, encoding), not a fault of ours
        if isinstance(kw.get("exc_info"), HttpProcessingError | RequestPayloadError):
            REJECTED["malformed"] += 1
            self.logger.debug(*args, **kw)
            return
        super().log_exception(*args, **kw)

    def _idle(self) -> bool:
        """No request is being handled or waiting to be: bytes now belong to the next request's headers."""
        return not self._request_in_progress and not self._messages

    def _arm(self, delay_s: float, phase: str) -> None:
        self._disarm()
        self._phase = phase
        self._deadline = self._loop.call_later(delay_s, self._expired, phase, self._request_count)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self, phase: str, count: int) -> None:
        self._deadline = None
        if self._request_count == count and self._idle() and self.transport is not None:
            if phase:
                TIMEOUTS[phase] += 1
            self.force_close()


class _Server(web.Server):
    """aiohttp's low-level server, making ``GatewayRequestHandler``s."""

    def __init__(self, base: web.Server, header_timeout_s: float, idle_timeout_s: float) -> None:
        super().__init__(base.request_handler, request_factory=base.request_factory,
                         handler_cancellation=base.handler_cancellation, **base._kwargs)
        self._header_timeout_s = header_timeout_s
        self._idle_timeout_s = idle_timeout_s

    def __call__(self) -> RequestHandler:
        return GatewayRequestHandler(self, loop=self._loop, header_timeout_s=self._header_timeout_s,
                                     idle_timeout_s=self._idle_timeout_s, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """``AppRunner`` with the gateway's connection deadlines from ``settings``."""

    __slots__ = ("_header_timeout_s", "_idle_timeout_s")

    def __init__(self, app: web.Application, settings: Settings, **kwargs: Any) -> None:
        kwargs.setdefault("access_log", None)
        super().__init__(app, keepalive_timeout=float(settings.http_idle_timeout_s), handler_cancellation=False,
                         shutdown_timeout=float(settings.shutdown_drain_s), **kwargs)
        self._header_timeout_s = float(settings.http_header_timeout_s)
        self._idle_timeout_s = float(settings.http_idle_timeout_s)

    async def _make_server(self) -> web.Server:
        return _Server(await super()._make_server(), self._header_timeout_s, self._idle_timeout_s)


@contextlib.asynccontextmanager
async def serving(app: web.Application, settings: Settings, *, sock: socket.socket | None = None,
                  host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[GatewayRunner]:
    """``app`` served on ``sock`` (or ``host:port``) until the block ends; then a graceful shutdown."""
    runner = GatewayRunner(app, settings)
    await runner.setup()
    try:
        site: web.BaseSite = web.SockSite(runner, sock) if sock is not None else web.TCPSite(runner, host, port)
        await site.start()
        yield runner
    finally:
        await runner.cleanup()


async def serve_until_signal(app: web.Application, settings: Settings, sock: socket.socket) -> None:
    """``gateway serve``: one worker until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with serving(app, settings, sock=sock):
        await stop.wait()
