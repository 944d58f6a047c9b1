"""The application factory: wiring edge → guards → hot path → adapters → ledger client.

Start-up connects NATS, Redis and a small read pool per shard, starts the ledger client and mounts
each enabled provider at ``/v1/providers/<id>``. Shutdown is graceful: stop taking money calls
(answered retryable), drain queued and in-flight commands, then close connections.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from importlib import resources

import nats
import redis.asyncio as redis
from aiohttp import web
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from core import errors as E
from core.http import error_response, json_response
from core.records import ProviderConfig
from core.settings import SETTINGS_KEY, Settings
from core.unexpected import answer_for
from gateway import ws
from gateway.degradation import Degradation
from gateway.guards import Guards
from gateway.health import healthz, readyz
from gateway.ledger_client import LedgerClient
from gateway.metrics import EXPORTER_KEY, Exporter, edge_middleware, metrics_handler
from gateway.monitor import Monitor
from gateway.operator_api import routes as operator_routes
from gateway.providers import adapter_class
from gateway.quota import RedisQuota
from gateway.sessions import SessionStore
from gateway.state import STATE_KEY, GatewayState
from gateway.wallet import LazyWallet, Wallet
from ledger import transport
from ledger.sharding import pools_for

log = logging.getLogger(__name__)
#: the wallet every mounted adapter is given, bound to the real one at start-up
WALLET_KEY = web.AppKey("wallet", LazyWallet)


def error_answer(request: web.Request, exc: Exception) -> web.StreamResponse:
    """The answer to what a handler raised: a ``GatewayError`` as itself, aiohttp's 413/404/405 in the
    gateway's JSON, anything else through ``answer_for``; any other HTTP exception (a redirect) raised on."""
    if isinstance(exc, E.GatewayError):
        return error_response(exc)
    if isinstance(exc, web.HTTPException):
        if exc.status == 413:
            return error_response(E.PayloadTooLarge())
        if exc.status in (404, 405):
            return json_response({"error": {"code": "not_found" if exc.status == 404 else "method_not_allowed",
                                             "message": exc.reason, "retryable": False}}, exc.status)
        raise exc
    return error_response(answer_for(exc, f"{request.method} {request.path}", log))


async def openapi(request: web.Request) -> web.Response:
    text = resources.files("gateway").joinpath("openapi.json").read_bytes()
    return web.Response(body=text, content_type="application/json")


def create_app(settings: Settings, providers: list[ProviderConfig]) -> web.Application:
    # one middleware: aiohttp wraps every request of an app with middlewares in each of them plus one of
    # its own (``_fix_request_current_app``), so error answers and metrics share one layer
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[edge_middleware(error_answer)])
    app[SETTINGS_KEY] = settings
    app[WALLET_KEY] = LazyWallet()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/openapi.json", openapi)
    app.add_routes(operator_routes())
    app.cleanup_ctx.append(_lifecycle(settings, providers))
    ws.install(app)  # after the lifecycle: its hub needs the gateway state
    return app


def _lifecycle(settings: Settings, providers: list[ProviderConfig]):  # type: ignore[no-untyped-def]
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        nc = await nats.connect(settings.nats_url, name=f"gateway-{settings.instance_id}",
                                max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                                **transport.connection_callbacks("gateway"))
        # one immediate retry on a fresh connection: after Redis restarts (``gateway up`` brings it back on
        # the same port) the pooled connections are dead, and the first command on each would fail
        rds = redis.Redis.from_url(settings.redis_url,
                                   retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)))
        dsns = settings.shard_dsns()
        pools = await pools_for(dsns, range(settings.shards), max_size=settings.writer_pool_size + 2)
        ledger = LedgerClient(settings, nc)
        await ledger.start()
        guards = Guards(settings, providers)
        degradation = Degradation()
        quota = None
        if settings.redis_quota_enabled:
            prefix = f"{settings.namespace}:gw:" if settings.namespace else "gw:"
            quota = RedisQuota(rds, prefix, settings.redis_quota_per_s, settings.redis_quota_burst)
        wallet = Wallet(SessionStore(settings, rds), ledger, pools, guards, degradation, quota,
                        max_amounts=settings.max_amounts_minor)
        state = GatewayState(settings, {p.id: p for p in providers}, nc, rds, pools, ledger, wallet, guards,
                             degradation, started_ms=int(time.time() * 1000))
        app[STATE_KEY] = state
        app[WALLET_KEY].bind(wallet)
        monitor = Monitor(state)
        monitor_task = asyncio.create_task(monitor.run(), name="gateway-monitor")
        exporter = app[EXPORTER_KEY] = Exporter(state)
        metrics_stop = asyncio.Event()
        metrics_task = asyncio.create_task(exporter.run(metrics_stop), name="gateway-metrics")
        try:
            yield
        finally:
            wallet.closing = True
            monitor.stop()
            await ledger.drain(settings.shutdown_drain_s)
            metrics_stop.set()
            await asyncio.gather(monitor_task, metrics_task, return_exceptions=True)
            await ledger.close()
            await nc.drain()
            for pool in pools.values():
                await pool.close()
            await rds.aclose()

    return ctx


def mount_providers(app: web.Application, providers: list[ProviderConfig]) -> None:
    """Mount each enabled provider's routes under ``/v1/providers/<id>``; adapters reach the wallet once the
    app has started.

    The routes go straight into the main router (same paths, same route names for the metrics): a
    sub-app per provider cost every call a second URL resolution and an extra middleware wrapper.
    """
    for cfg in providers:
        if not cfg.enabled:
            continue
        prefix = f"/v1/providers/{cfg.id}"
        adapter = adapter_class(cfg.protocol)(cfg, app[WALLET_KEY])
        for route in adapter.routes():
            if not isinstance(route, web.RouteDef):
                raise TypeError(f"{cfg.protocol} route {route!r} is not a plain route")
            app.router.add_route(route.method, prefix + route.path, route.handler, **route.kwargs)


def build_app(settings: Settings, providers: list[ProviderConfig]) -> web.Application:
    app = create_app(settings, providers)
    mount_providers(app, providers)
    return app
