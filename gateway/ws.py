"""The player session websocket, ``GET /v1/ws``: authentication before the upgrade, ``hello``, client
messages (``ping``, ``resume``) and the app lifecycle. Routing, queues and timers: ``gateway.ws_hub``.

A socket authenticates with the provider session token (query ``token`` or subprotocol
``token.<token>``) and the provider it belongs to (``provider``): tokens are per provider. Anything
wrong is answered with the JSON error before the upgrade, so no socket exists for a bad token.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import AsyncIterator

import orjson
from aiohttp import WSMsgType, web

from core import errors as E
from gateway.state import STATE_KEY, GatewayState
from gateway.ws_hub import CLOSE_SESSION_TIME, Conn, Hub, mode_for

__all__ = ["CLOSE_SESSION_TIME", "HUB_KEY", "PROTOCOL", "TOKEN_PROTOCOL_PREFIX", "Conn", "Hub", "install"]

log = logging.getLogger(__name__)

PROTOCOL = "gateway.v1"
TOKEN_PROTOCOL_PREFIX = "token."
MAX_IN_BYTES = 4096

HUB_KEY = web.AppKey("ws_hub", Hub)


def _credentials(request: web.Request) -> tuple[str, str]:
    """(provider id, session token) from the query, or the token as a ``token.<t>`` subprotocol."""
    provider = request.query.get("provider", "")
    token = request.query.get("token", "")
    if not token:
        for proto in request.headers.get("Sec-WebSocket-Protocol", "").split(","):
            proto = proto.strip()
            if proto.startswith(TOKEN_PROTOCOL_PREFIX):
                token = proto[len(TOKEN_PROTOCOL_PREFIX):]
    if not provider or not token:
        raise E.InvalidToken("provider and session token are required (?provider=…&token=…)")
    return provider, token


async def ws_handler(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    hub = request.app[HUB_KEY]
    settings = state.settings
    ws = web.WebSocketResponse(protocols=(PROTOCOL,), heartbeat=float(settings.ws_heartbeat_s),
                               max_msg_size=MAX_IN_BYTES, writer_limit=settings.ws_send_buffer_bytes or 65536)
    if not ws.can_prepare(request).ok:
        raise E.BadInput("GET /v1/ws is a websocket endpoint: send the upgrade headers")
    provider, token = _credentials(request)
    if provider not in state.providers:
        raise E.InvalidToken()
    session = await state.wallet.session(provider, token)  # 401 before the upgrade when bad or expired
    if hub.closing:
        raise E.Retryable("gateway is shutting down", retry_after_s=2.0)
    if hub.count >= settings.ws_max_connections:
        raise E.Retryable("too many player sockets on this gateway", retry_after_s=5.0)
    await ws.prepare(request)
    tr = request.transport
    if tr is not None and settings.ws_send_buffer_bytes:
        tr.set_write_buffer_limits(high=settings.ws_send_buffer_bytes)
        sock = tr.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, settings.ws_send_buffer_bytes)
    conn = Conn(hub, ws, session, tr)
    hub.add(conn)  # registered before the balance read: no commit can fall between the two
    try:
        await hub.prime()  # the feed's start pinned before that read too (a no-op while the feed runs)
        await _hello(state, hub, conn)
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                break
            await _client_message(state, hub, conn, msg.data)
            if conn.closed:
                break
    except Exception:  # after the upgrade there is no HTTP answer left to give: log and close
        log.exception("ws: session %s failed", conn.key)
        conn.abort()
    finally:
        hub.remove(conn)
        if conn.flusher is not None:
            conn.flusher.cancel()
    return ws


async def _hello(state: GatewayState, hub: Hub, conn: Conn) -> None:
    s = conn.session
    cursor = hub.cursor
    balance = await state.wallet.balance(s)
    limits = await state.limits(s.brand_id, s.player_id, s.currency)
    now = int(time.time() * 1000)
    minutes = (limits.get("session_minutes") or {}).get("value")
    if isinstance(minutes, int) and s.started_ms:
        conn.session_end_ms = s.started_ms + minutes * 60_000
        hub.schedule(conn, conn.session_end_ms, "session_end")
    every = state.settings.ws_reality_check_min * 60_000
    if every:
        hub.schedule(conn, now + every, "reality")
    conn.mode = mode_for(state.degradation, s.provider_id, s.brand_id)
    conn.push({"type": "hello", "session": {"provider_id": s.provider_id, "tenant_id": s.tenant_id,
                                           "brand_id": s.brand_id, "player_id": s.player_id,
                                           "started_ms": s.started_ms, "expires_ms": s.expires_ms},
               "balance": balance, "currency": s.currency, "limits": limits, "mode": conn.mode,
               "cursor": cursor, "heartbeat_s": state.settings.ws_heartbeat_s,
               "reality_check_min": state.settings.ws_reality_check_min})
    conn.end_resume(0)  # live events that arrived during the reads follow the hello


async def _client_message(state: GatewayState, hub: Hub, conn: Conn, data: str) -> None:
    try:
        msg = orjson.loads(data)
        kind = msg.get("type") if isinstance(msg, dict) else None
    except orjson.JSONDecodeError:
        kind = None
    if kind == "ping":
        conn.push({"type": "pong"})
    elif kind == "resume":
        cursor = msg.get("cursor")
        if not isinstance(cursor, int) or isinstance(cursor, bool) or cursor < 0:
            conn.push({"type": "error", "code": "bad_message", "message": "resume needs an integer cursor"})
            return
        if conn.resuming:
            return  # one resume at a time
        conn.resuming = True
        last = cursor
        try:
            replayed, last, complete = await hub.replay(conn, cursor)
            balance = await state.wallet.balance(conn.session)
            conn.push({"type": "resumed", "balance": balance, "currency": conn.session.currency,
                       "replayed": replayed, "cursor": max(last, cursor), "complete": complete})
        finally:
            conn.end_resume(last)  # then the live events that arrived meanwhile, minus those replayed
    else:
        conn.push({"type": "error", "code": "bad_message", "message": "expected {\"type\": \"ping\"|\"resume\"}"})


def install(app: web.Application) -> None:
    """Mount ``/v1/ws`` and tie the hub to the app's lifecycle (after the gateway state exists)."""
    app.router.add_get("/v1/ws", ws_handler)

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        hub = Hub(app[STATE_KEY])
        app[HUB_KEY] = hub
        app[STATE_KEY].ws_hub = hub
        hub.start()
        try:
            yield
        finally:
            await hub.shutdown(0.5)  # normally done in on_shutdown already
            await hub.stop()

    async def on_shutdown(app: web.Application) -> None:
        hub = app.get(HUB_KEY)
        if hub is not None:
            await hub.shutdown(float(app[STATE_KEY].settings.shutdown_drain_s))

    app.cleanup_ctx.append(ctx)
    app.on_shutdown.append(on_shutdown)
