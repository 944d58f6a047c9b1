"""Liveness and readiness.

``/healthz`` says the process runs (never touches a dependency, so a slow database can't get pods
killed). ``/readyz`` says this instance can take traffic: NATS connected and the ledger stream there,
Redis answering, every shard's database answering, no shard stalled, and not draining; its body
shows the degradation mode and per-shard queue state either way.

A shard is stalled while its oldest pending command is older than ``ready_max_pending_age_s``: one
this instance still awaits (it knows when each was queued), or one still in the shard's JetStream
subject (unacked, so not yet committed by any writer; found only while the stream's very oldest
message is over the bound). The ``ledger_pending`` check names the stalled shards.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from core.http import json_response
from gateway.state import STATE_KEY, GatewayState
from ledger import transport


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def _check(coro: Any) -> str:
    try:
        await asyncio.wait_for(coro, 1.0)
        return "ok"
    except Exception as exc:
        return f"failed: {type(exc).__name__}: {exc}"[:200]


async def _pending(st: GatewayState, bound: int) -> str:
    stalled = st.ledger.stalled_shards(bound)
    if st.nc.is_connected:
        try:
            queued = await asyncio.wait_for(
                transport.stalled_shards(st.nc.jetstream(), st.settings, range(st.settings.shards), bound), 1.0)
        except Exception as exc:
            return f"failed: {type(exc).__name__}: {exc}"[:200]
        for shard, age in queued.items():
            stalled[shard] = max(age, stalled.get(shard, 0.0))
    if not stalled:
        return "ok"
    ages = ", ".join(f"shard {shard} {age:.1f} s" for shard, age in sorted(stalled.items()))
    return f"failed: oldest pending command over {bound} s: {ages}"[:200]


async def readyz(request: web.Request) -> web.Response:
    st = request.app[STATE_KEY]
    checks: dict[str, str] = {}
    checks["nats"] = "ok" if st.nc.is_connected else "failed: not connected"
    checks["ledger_stream"] = await _check(
        st.nc.jetstream().stream_info(transport.stream_name(st.settings, st.settings.stream_name)))
    checks["redis"] = await _check(st.redis.ping())
    for shard, pool in sorted(st.pools.items()):
        checks[f"ledger_shard_{shard}"] = await _check(pool.fetchval("SELECT 1"))
    bound = st.settings.ready_max_pending_age_s
    if bound:
        checks["ledger_pending"] = await _pending(st, bound)
    if st.wallet.closing:
        checks["draining"] = "failed: shutting down"
    # one shard's database down fails only its players' calls: the instance stays in service while
    # at least one shard answers, so an outage never takes every healthy shard down with it
    shard_ok = [v == "ok" for k, v in checks.items() if k.startswith("ledger_shard_")]
    ready = all(v == "ok" for k, v in checks.items() if not k.startswith("ledger_shard_")) and any(shard_ok)
    body = {"status": "ready" if ready else "not ready", "checks": checks,
            "degradation": st.degradation.snapshot(), "queues": st.ledger.queue_state()}
    return json_response(body, 200 if ready else 503)
