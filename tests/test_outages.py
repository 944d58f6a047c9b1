"""A backing service down is an outage, not a bug: every protocol answers its retryable error, never a 5xx.

The gateway here points at a Redis nobody listens on (sessions live there), as it does for the seconds
Redis takes to restart. Whatever the call needed from it, the caller is told to retry; nothing was done.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from adapters.sim import Call
from adapters.sim.evolution import EvolutionClient
from adapters.sim.native import NativeClient
from adapters.sim.pragmatic import PragmaticClient
from gateway.embedded import free_port
from tests.support import DEMO_SECRET, EVOLUTION_TOKEN, OPERATOR_KEY, PRAGMATIC_SECRET, Api


async def _send(http: aiohttp.ClientSession, base: str, call: Call) -> tuple[int, Any]:
    async with http.post(base + call.path, data=call.body, headers=call.headers) as resp:
        return resp.status, orjson.loads(await resp.read())


async def test_redis_down_is_answered_retryable_in_every_protocol(make_gateway: Any,
                                                                  http: aiohttp.ClientSession) -> None:
    nobody = f"redis://127.0.0.1:{free_port()}/0"
    async with make_gateway(redis_url=nobody) as gw:
        base = gw.base_url
        player = Api.player()

        async with http.post(base + "/v1/sessions", json={**player, "provider_id": "demo"},
                             headers={"Authorization": f"Bearer {OPERATOR_KEY}"}) as resp:
            body = await resp.json()
            assert resp.status == 503 and body["error"]["retryable"] is True, body
            assert resp.headers["Retry-After"] == "1"

        status, body = await _send(http, base, NativeClient("demo", DEMO_SECRET).bet(
            "some-session-token", "tx-outage-1", "r-outage-1", "1.00", "EUR"))
        assert status == 503 and body["retryable"] is True and body["code"] == "retryable", body

        pragmatic = PragmaticClient(PRAGMATIC_SECRET, base_path="/v1/providers/pragmatic")
        status, body = await _send(http, base, pragmatic.bet(player["player_id"], token="some-token",
                                                             round_id="5001", amount=100, currency="EUR"))
        assert status == 200 and body["error"] == 100, body  # Pragmatic's "retry" code

        evolution = EvolutionClient(EVOLUTION_TOKEN, base_path="/v1/providers/evolution")
        status, body = await _send(http, base, evolution.debit(player["player_id"], "some-sid", currency="EUR",
                                                               amount=100))
        assert status == 200 and body["status"] == "TEMPORARY_ERROR", body
