"""Everything a running gateway process holds, in one object stored on the app."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import asyncpg
import redis.asyncio as redis
from aiohttp import web
from nats.aio.client import Client as NATS

from adapters.base import ProviderConfig
from gateway.degradation import Degradation
from gateway.guards import Guards
from gateway.ledger_client import LedgerClient
from gateway.settings import Settings
from gateway.wallet import Wallet


@dataclass
class GatewayState:
    settings: Settings
    providers: dict[str, ProviderConfig]
    nc: NATS
    redis: redis.Redis
    pools: dict[int, asyncpg.Pool]
    ledger: LedgerClient
    wallet: Wallet
    guards: Guards
    degradation: Degradation
    started_ms: int = 0
    counters: dict[str, int] = field(default_factory=dict)
    #: the player websocket hub (gateway/ws.py), set when the app starts
    ws_hub: Any = None

    async def limits(self, brand_id: str, player_id: str, currency: str | None) -> dict[str, Any]:
        """The player's limits for ``currency`` (money ones are per currency), or only those that hold
        for every currency."""
        from gateway.operator_api import format_limits

        pool = self.pools[self.ledger.shard_of(player_id)]
        rows = await pool.fetch("SELECT * FROM rg_limits WHERE brand_id = $1 AND player_id = $2 "
                                "AND currency = ANY($3::text[])", brand_id, player_id, [currency or "", ""])
        return format_limits(list(rows), currency, self.wallet.now_ms())


STATE_KEY = web.AppKey("gateway_state", GatewayState)
