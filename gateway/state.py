"""Everything a running gateway process holds, in one object stored on the app."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import asyncpg
import redis.asyncio as redis
from aiohttp import web
from nats.aio.client import Client as NATS

from core.money import format_minor
from core.records import ProviderConfig
from core.settings import Settings
from gateway.degradation import Degradation
from gateway.guards import Guards
from gateway.ledger_client import LedgerClient
from gateway.wallet import Wallet
from ledger.rules import MONEY_LIMITS


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
        pool = self.pools[self.ledger.shard_of(player_id)]
        rows = await pool.fetch("SELECT * FROM rg_limits WHERE brand_id = $1 AND player_id = $2 "
                                "AND currency = ANY($3::text[])", brand_id, player_id, [currency or "", ""])
        return format_limits(list(rows), currency, self.wallet.now_ms())


STATE_KEY = web.AppKey("gateway_state", GatewayState)


def format_limits(rows: list[Any], currency: str | None, now_ms: int) -> dict[str, Any]:
    """The limits that hold for ``currency``: its own money limits (else one set before limits had a
    currency, which still applies to it) and the currency-independent ones; ``None``: only the latter."""
    chosen: dict[str, Any] = {}
    for r in rows:
        money = r["key"] in MONEY_LIMITS
        if money and (currency is None or r["currency"] not in (currency, "")):
            continue
        if not money and r["currency"] != "":
            continue
        if r["key"] not in chosen or r["currency"]:  # a currency's own row over the legacy one
            chosen[r["key"]] = r
    out: dict[str, Any] = {}
    for key in sorted(chosen):
        r = chosen[key]
        value, pending = r["value"], r["pending_value"]
        effective = pending if r["pending_set"] and now_ms >= (r["pending_from_ms"] or 0) else value
        fmt = (lambda v: None if v is None else format_minor(v, currency or "")) if r["key"] in MONEY_LIMITS else (
            lambda v: v)
        entry: dict[str, Any] = {"value": fmt(effective)}
        if r["pending_set"] and now_ms < (r["pending_from_ms"] or 0):
            entry["pending"] = {"value": fmt(pending), "from_ms": r["pending_from_ms"]}
        out[r["key"]] = entry
    return out

