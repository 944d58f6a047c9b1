"""Launch tokens and provider sessions in Redis (the truth), with a local single-flight cache.

A launch token is one-time (GETDEL) and short-lived. The provider session it becomes records its
own expiry but outlives it in Redis for ``SETTLEMENT_GRACE_S``, so an expired token can still be told
apart from an unknown one: bets on it are refused as expired, while wins and rollbacks — owed to the
player, possibly long after the session — are accepted. The player's keys are also kept as a
profile per (provider, player) and brand, so protocols that settle by player id (no token) can build
complete commands; ``pick_profile`` says which brand such a call belongs to, and refuses to guess.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import TypeVar

import orjson
import redis.asyncio as redis

from core.errors import AmbiguousPlayer, InvalidToken, TokenExpired, UnknownPlayer
from core.records import PlayerSession
from core.settings import Settings
from gateway.cache import SingleFlightCache

SETTLEMENT_GRACE_S = 7 * 24 * 3600
PROFILE_TTL_S = 400 * 24 * 3600


T = TypeVar("T")


def pick_profile(profiles: Mapping[str, T], served: Sequence[str]) -> T:
    """The profile a token-less call means, from the player's profiles by brand at the provider.

    A provider configured for exactly one brand means that brand; otherwise the player must be known
    under exactly one brand the provider serves (any brand when it is not restricted). Several brands
    are refused, never one of them picked: money must not land in another brand's wallet.
    """
    if len(served) == 1:
        found = profiles.get(served[0])
        if found is None:
            raise UnknownPlayer()
        return found
    candidates = [p for brand, p in profiles.items() if not served or brand in served]
    if not candidates:
        raise UnknownPlayer()
    if len(candidates) > 1:
        raise AmbiguousPlayer(f"player is known under {len(candidates)} brands at this provider; "
                              "a call without a session token cannot say which")
    return candidates[0]


def _now_ms() -> int:
    return int(time.time() * 1000)


def _dump(s: PlayerSession) -> bytes:
    return orjson.dumps(dataclasses.asdict(s))


def _load(raw: bytes | str) -> PlayerSession:
    return PlayerSession(**orjson.loads(raw))


class SessionStore:
    def __init__(self, settings: Settings, client: redis.Redis) -> None:
        self.settings = settings
        self.r = client
        self.ns = f"{settings.namespace}:gw:" if settings.namespace else "gw:"
        self.cache: SingleFlightCache[tuple[str, str], PlayerSession | None] = SingleFlightCache(
            settings.session_cache_ttl_ms, settings.session_cache_jitter_pct, settings.session_cache_max)

    def _k(self, *parts: str) -> str:
        return self.ns + ":".join(parts)

    async def launch(self, provider_id: str, template: PlayerSession) -> tuple[str, int]:
        """Create a one-time launch token for a player at a provider; returns (token, ttl_s)."""
        token = secrets.token_urlsafe(24)
        ttl = self.settings.launch_token_ttl_s
        launch = dataclasses.replace(template, token=token, provider_id=provider_id,
                                     expires_ms=_now_ms() + ttl * 1000)
        pipe = self.r.pipeline(transaction=False)
        pipe.set(self._k("launch", provider_id, token), _dump(launch), ex=ttl)
        profiles = self._k("profiles", provider_id, template.player_id)
        pipe.hset(profiles, template.brand_id, _dump(launch))
        pipe.expire(profiles, PROFILE_TTL_S)
        await pipe.execute()
        return token, ttl

    async def open(self, provider_id: str, launch_token: str) -> PlayerSession:
        raw = await self.r.getdel(self._k("launch", provider_id, launch_token))
        if raw is None:
            raise InvalidToken("launch token unknown, used or expired")
        launch = _load(raw)
        return await self._new_session(launch)

    async def _new_session(self, base: PlayerSession) -> PlayerSession:
        now = _now_ms()
        ttl = self.settings.session_ttl_s
        sess = dataclasses.replace(base, token=secrets.token_urlsafe(24), started_ms=base.started_ms or now,
                                   expires_ms=now + ttl * 1000)
        await self.r.set(self._k("sess", sess.provider_id, sess.token), _dump(sess), ex=ttl + SETTLEMENT_GRACE_S)
        return sess

    async def get(self, provider_id: str, token: str, *, allow_expired: bool = False) -> PlayerSession:
        if not token or len(token) > 200:
            raise InvalidToken()

        async def load() -> PlayerSession | None:
            raw = await self.r.get(self._k("sess", provider_id, token))
            return _load(raw) if raw is not None else None

        sess = await self.cache.get((provider_id, token), load)
        if sess is None:
            self.cache.drop((provider_id, token))
            raise InvalidToken()
        if not allow_expired and sess.expires_ms <= _now_ms():
            raise TokenExpired()
        return sess

    async def rotate(self, sess: PlayerSession) -> PlayerSession:
        new = await self._new_session(sess)
        await self.r.delete(self._k("sess", sess.provider_id, sess.token))
        self.cache.drop((sess.provider_id, sess.token))
        return new

    async def profile(self, provider_id: str, player_id: str, brands: Sequence[str] = ()) -> PlayerSession:
        """The player's keys for a call without a token; ``brands``: those the provider serves."""
        key = self._k("profiles", provider_id, player_id)
        found: dict[str, bytes | str]
        if len(brands) == 1:
            raw = await self.r.hget(key, brands[0])
            found = {brands[0]: raw} if raw is not None else await self._legacy(provider_id, player_id)
        else:
            found = {(b.decode() if isinstance(b, bytes) else b): v for b, v in (await self.r.hgetall(key)).items()}
        return _load(pick_profile(found, brands))

    async def _legacy(self, provider_id: str, player_id: str) -> dict[str, bytes | str]:
        """A profile stored before profiles had a brand (one per player, the last launch's): only ever
        used by a provider that serves exactly that one brand, where it cannot be another's."""
        raw = await self.r.get(self._k("player", provider_id, player_id))
        if raw is None:
            return {}
        return {_load(raw).brand_id: raw}

    async def ping(self) -> bool:
        return bool(await self.r.ping())
