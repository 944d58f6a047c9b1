"""Synchronous guards in front of the ledger: rate limits and degradation.

The in-process GCRA limiter (compiled hot path) is the fast first tier: every provider call is
checked against its provider and brand, bets also against the player and the round, all-or-nothing
so a refused call consumes no quota anywhere. A refused call gets the exact retry-after.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from core.errors import RateLimited
from core.records import ProviderConfig
from core.settings import Settings
from hotpath.ratelimit import RateLimiter

PLAYER, ROUND, PROVIDER, BRAND = 1, 2, 3, 4
FIRST_PROVIDER_SCOPE = 16


class Guards:
    def __init__(self, settings: Settings, providers: Sequence[ProviderConfig] = ()) -> None:
        self.limiter = RateLimiter(settings.rl_max_keys, settings.rl_idle_expiry_s * 1_000_000_000)
        self.limiter.add_scope(PLAYER, settings.rl_player_per_s, settings.rl_player_burst)
        self.limiter.add_scope(ROUND, settings.rl_round_per_s, settings.rl_round_burst)
        self.limiter.add_scope(PROVIDER, settings.rl_provider_per_s, settings.rl_provider_burst)
        self.limiter.add_scope(BRAND, settings.rl_brand_per_s, settings.rl_brand_burst)
        #: providers with their own rate (``rate_per_s``/``burst`` in the providers file) get a scope each
        self._provider_scopes: dict[str, int] = {}
        for scope, p in enumerate((p for p in providers if p.rate_per_s > 0), start=FIRST_PROVIDER_SCOPE):
            self.limiter.add_scope(scope, p.rate_per_s, p.burst or p.rate_per_s)
            self._provider_scopes[p.id] = scope
        self.limited = 0

    def check(self, provider_id: str, brand_id: str, player_id: str = "", round_id: str = "") -> None:
        items: list[tuple[int, str]] = [(self._provider_scopes.get(provider_id, PROVIDER), provider_id),
                                        (BRAND, brand_id)]
        if player_id:
            items.append((PLAYER, f"{brand_id}\x1f{player_id}"))
        if round_id:
            items.append((ROUND, f"{provider_id}\x1f{round_id}"))
        wait_ns = self.limiter.check_many(items, time.monotonic_ns())
        if wait_ns:
            self.limited += 1
            raise RateLimited(retry_after_s=wait_ns / 1e9)
