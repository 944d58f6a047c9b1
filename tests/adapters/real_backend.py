"""The protocol tests' second backend: the real gateway, in front of real ledger writers on real NATS,
PostgreSQL and Redis (the session fixtures of ``tests/conftest.py``).

``RealBackend`` offers the test hooks ``FakeWallet`` offers, each done for real:

- ``add_player``: a deposit through the operator API (``/v1/wallet/deposit``, unique idempotency key) and a
  session launch (``/v1/sessions``, which stores the player's profile in Redis), whose launch token is
  exchanged for a provider session by the gateway's own session store (``Wallet.open_session``);
- ``add_launch_token``: ``/v1/sessions`` for that provider;
- ``expire``: the session's JSON in Redis rewritten with ``expires_ms`` in the past (then past the 50 ms
  session cache of the test settings);
- ``refuse_bets``: a real responsible-gaming decision of the ledger, set through the operator API
  (self-exclusion, ``max_stake`` 0, ``loss_day`` 0, or a one-minute session limit on a session whose
  ``started_ms`` is rewritten an hour back, like ``expire`` does for the expiry);
- ``fail_next``: a seam in the gateway's own code, ``Wallet.execute`` of the running gateway, wrapped for
  the test: the given ``Retryable`` is raised before the ledger call, or after the real ledger applied the
  command (a late answer). NATS, PostgreSQL and Redis are never mocked. The same seam records the
  commands the adapters built (``executed``, the operator's own deposits and limits left out), and a test
  that monkeypatches ``execute`` on the backend replaces what the gateway calls;
- ``balance``: ``/v1/wallet/balance`` of the operator API;
- ``mounted(config, sim)``: another real gateway (same servers, same namespace) with that provider
  configuration mounted, for tests of provider options (brands, networks, protocol options).

Keys: the ledger scopes every key a protocol test makes (idempotency key, bet, round, tombstone, limits,
usage) by brand, and the session store keeps profiles by provider, player id and brand, so each test gets
a brand and player ids prefixed with its own uuid and literal ids in tests (``"ref1"``, round ``"1001"``)
never collide in the session-wide key space.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import aiohttp
import orjson
import pytest

from core.commands import Command, Kind, Result, Status
from core.errors import GatewayError
from core.money import format_minor, to_minor
from core.records import PlayerSession, ProviderConfig
from core.settings import Settings
from gateway import embedded
from gateway.operator_api import OPERATOR_PROVIDER
from tests.adapters.adapter_harness import BRAND, FakeWallet, Provider, _Failure
from tests.support import Api, gateway_providers

Execute = Callable[..., Awaitable[Result]]


@dataclasses.dataclass
class Gateway:
    """A running gateway: its state (``GatewayState``) and its root URL (like ``tests.conftest.GatewayHandle``)."""

    state: Any
    base_url: str


@contextlib.asynccontextmanager
async def serve(settings: Settings, providers: list[ProviderConfig]) -> AsyncIterator[Gateway]:
    """A real gateway app with ``providers`` mounted, on a free loopback port."""
    from gateway.app import build_app
    from gateway.server import serving
    from gateway.state import STATE_KEY

    app = build_app(settings, providers)
    port = embedded.free_port()
    async with serving(app, settings, host="127.0.0.1", port=port):
        yield Gateway(app[STATE_KEY], f"http://127.0.0.1:{port}")


def unique_settings(settings: Settings, **changes: Any) -> Settings:
    """``settings`` for one more gateway process: its own instance id, so its reply subject and its
    JetStream message ids (deduplicated for minutes) never meet another gateway's."""
    return settings.replace(instance_id=f"{settings.instance_id}-{uuid.uuid4().hex[:8]}", **changes)


class RealBackend:
    def __init__(self, gateway: Any, http: aiohttp.ClientSession, settings: Settings) -> None:
        self.gateway = gateway
        self.http = http
        self.settings = settings
        #: this test's prefix for brands, players and idempotency keys
        self.tag = uuid.uuid4().hex[:10]
        self.api = Api(http, gateway.base_url)
        self.executed: list[Command] = []
        self.failures: list[_Failure] = []
        self.players: dict[str, PlayerSession] = {}
        self._launchers: dict[str, Api] = {}
        self._seams: list[Any] = []
        self.install(gateway)

    # --- the seam in the gateway's wallet -----------------------------------------------------------
    def install(self, gateway: Any) -> None:
        """Route ``gateway``'s ``Wallet.execute`` through ``self.execute`` (for adapter commands)."""
        wallet = gateway.state.wallet
        real: Execute = wallet.execute
        backend = self

        async def seam(command: Command, *, guard: bool = True) -> Result:
            if command.provider_id == OPERATOR_PROVIDER:  # the tests' own deposits and limits
                return await real(command, guard=guard)
            return await backend.execute(command, guard=guard, via=real)

        wallet.execute = seam
        self._seams.append(wallet)

    def close(self) -> None:
        for wallet in self._seams:
            wallet.__dict__.pop("execute", None)
        self._seams.clear()

    async def execute(self, command: Command, *, guard: bool = True, via: Execute) -> Result:
        """What the gateway's wallet runs for an adapter: the real ``Wallet.execute``, failing on demand."""
        self.executed.append(command)
        failure = next((f for f in self.failures if f.kinds is None or command.kind in f.kinds), None)
        if failure is not None:
            self.failures.remove(failure)
            if not failure.after_apply:
                raise failure.exc
        result = await via(command, guard=guard)
        if failure is not None:
            raise failure.exc
        return result

    # --- test hooks ---------------------------------------------------------------------------------
    @staticmethod
    def _keys(s: PlayerSession) -> dict[str, str]:
        return {"tenant_id": s.tenant_id, "brand_id": s.brand_id, "license": s.license,
                "player_id": s.player_id, "currency": s.currency}

    def _launcher(self, provider_id: str) -> Api:
        return self._launchers.get(provider_id, self.api)

    async def add_player(self, provider_id: str, *, balance: int = 100_00, currency: str = "EUR",
                         player_id: str | None = None, brand: str = BRAND,
                         beside: PlayerSession | None = None) -> PlayerSession:
        """A funded player with a live session token at ``provider_id``.

        The ledger keeps a player's bets and rounds on the player's shard; ``beside`` picks an id on the
        same shard as that player, so a test of one player's call on another's bet meets that bet.
        """
        pid = f"{self.tag}-{player_id or 'p' + uuid.uuid4().hex[:8]}"
        if beside is not None:
            shard_of = self.gateway.state.ledger.shard_of
            while shard_of(pid) != shard_of(beside.player_id):
                pid = f"{self.tag}-p{uuid.uuid4().hex[:8]}"
        template = PlayerSession(
            token="", provider_id=provider_id, tenant_id="tenant-1", brand_id=f"{brand}-{self.tag}",
            license="MGA", player_id=pid, currency=currency, country="MT",
        )
        if balance:
            status, body = await self.api.deposit(self._keys(template), format_minor(balance, currency),
                                                   key=f"{self.tag}-deposit-{uuid.uuid4().hex}")
            assert status == 200, body
        session = await self._opened(self.gateway, template,
                                     *await self._launch(self._launcher(provider_id), template))
        self.players[session.player_id] = session
        return session

    @staticmethod
    async def _launch(api: Api, session: PlayerSession) -> tuple[str, bool]:
        """``/v1/sessions``: (token, whether it is already the session, as for Hub88 and Evolution)."""
        status, body = await api.operator(
            "POST", "/v1/sessions", {**RealBackend._keys(session), "country": session.country,
                                     "provider_id": session.provider_id})
        assert status == 201, body
        return str(body["launch_token"]), "session_token" in body

    @staticmethod
    async def _opened(gateway: Any, template: PlayerSession, token: str, is_session: bool) -> PlayerSession:
        """The provider session: the launch's own for protocols without a token exchange, else exchanged."""
        wallet = gateway.state.wallet
        if is_session:
            session: PlayerSession = await wallet.session(template.provider_id, token)
        else:
            session = await wallet.open_session(template.provider_id, token)
        return session

    async def add_launch_token(self, session: PlayerSession) -> str:
        token, _ = await self._launch(self._launcher(session.provider_id), session)
        return token

    async def _rewrite(self, session: PlayerSession, **fields: int) -> None:
        state = self.gateway.state
        key = state.wallet.sessions._k("sess", session.provider_id, session.token)
        raw = await state.redis.get(key)
        assert raw is not None, "no such session in Redis"
        await state.redis.set(key, orjson.dumps({**orjson.loads(raw), **fields}), keepttl=True)
        await asyncio.sleep(0.1)  # past the test settings' 50 ms local session cache

    async def expire(self, session: PlayerSession) -> None:
        await self._rewrite(session, expires_ms=1)

    async def fail_next(self, exc: GatewayError, *, after_apply: bool = False,
                        kinds: Iterable[Kind] | None = None) -> None:
        self.failures.append(_Failure(exc, after_apply, frozenset(kinds) if kinds else None))

    async def refuse_bets(self, player_id: str, status: Status) -> None:
        """Make the ledger refuse the player's bets with ``status``, through the operator API."""
        s = self.players[player_id]
        body: dict[str, Any] = {**self._keys(s), "idempotency_key": f"{self.tag}-rg-{uuid.uuid4().hex}"}
        zero = format_minor(0, s.currency)
        if status is Status.SELF_EXCLUDED:
            code, reply = await self.api.operator("POST", "/v1/players/self-exclusion", {**body, "days": 1})
        elif status is Status.STAKE_LIMIT:
            code, reply = await self.api.operator("PUT", "/v1/players/limits", {**body, "limits": {"max_stake": zero}})
        elif status is Status.LOSS_LIMIT:
            code, reply = await self.api.operator("PUT", "/v1/players/limits", {**body, "limits": {"loss_day": zero}})
        elif status is Status.SESSION_LIMIT:
            code, reply = await self.api.operator("PUT", "/v1/players/limits",
                                                  {**body, "limits": {"session_minutes": 1}})
            # the player has played for an hour: the session started then
            await self._rewrite(s, started_ms=int(time.time() * 1000) - 3_600_000)
        else:
            pytest.skip(f"no real way to make the ledger answer {status}")
        assert code == 200, reply

    async def balance(self, session: PlayerSession) -> int:
        """The wallet's balance in minor units, as the operator API reports it."""
        return to_minor(await self.api.balance(self._keys(session)), session.currency)

    @contextlib.asynccontextmanager
    async def mounted(self, config: ProviderConfig, sim: Any) -> AsyncIterator[Provider]:
        """``config`` mounted on another real gateway (same servers and namespace) for the duration."""
        providers = [p for p in gateway_providers() if p.id != config.id] + [config]
        async with serve(unique_settings(self.settings), providers) as gw:
            self.install(gw)
            if config.id not in self.gateway.state.providers:
                # only that gateway can launch sessions at it; for a known id, the shared gateway launches
                # (a session launched at an unrestricted configuration, met by a restricted one)
                self._launchers[config.id] = Api(self.http, gw.base_url)
            try:
                yield Provider(self.http, sim, config, f"/v1/providers/{config.id}", gw.base_url)
            finally:
                self._launchers.pop(config.id, None)
                gw.state.wallet.__dict__.pop("execute", None)
                self._seams.remove(gw.state.wallet)

    # --- other gateways -----------------------------------------------------------------------------
    async def session_at(self, gateway: Any, session: PlayerSession) -> PlayerSession:
        """The player's session at the same provider, launched through ``gateway`` (its own namespace)."""
        return await self._opened(gateway, session, *await self._launch(Api(self.http, gateway.base_url), session))

    @staticmethod
    def provider_at(gateway: Any, provider: Provider) -> Provider:
        """``provider``'s simulator, sending to ``gateway``'s mount of it."""
        return dataclasses.replace(provider, url=gateway.base_url)


#: what the protocol tests' ``wallet`` fixture is
Backend = FakeWallet | RealBackend
