"""How the code is put together: adapters reach the wallet through a typed port."""

from __future__ import annotations

from typing import Any, cast

import pytest

from adapters.base import PlayerSession, ProviderConfig, WalletPort
from gateway.app import WALLET_KEY, create_app, mount_providers
from gateway.settings import Settings
from gateway.wallet import LazyWallet, Wallet


class _Sessions:
    async def get(self, provider_id: str, token: str, *, allow_expired: bool = False) -> PlayerSession:
        return PlayerSession(token=token, provider_id=provider_id, tenant_id="t", brand_id="b", license="MGA",
                             player_id="p1", currency="EUR")


async def test_adapters_get_a_typed_wallet_bound_at_start_up() -> None:
    app = create_app(Settings(), [])
    mount_providers(app, [ProviderConfig(id="demo", protocol="native", secret="x" * 16)])
    lazy = app[WALLET_KEY]
    port: WalletPort = lazy  # structurally a WalletPort: mypy checks every method's signature
    with pytest.raises(RuntimeError, match="before the gateway has started"):
        await port.session("demo", "tok")
    lazy.bind(Wallet(cast(Any, _Sessions()), *[cast(Any, None)] * 4, max_amounts={}))
    session = await port.session("demo", "tok")
    assert (session.provider_id, session.token) == ("demo", "tok")
    assert isinstance(lazy, LazyWallet) and not hasattr(LazyWallet, "__getattr__")
