"""Fixtures of the protocol tests: a wallet, and each protocol mounted as the gateway mounts it.

The test bodies only use the fixtures ``wallet`` (``WalletPort`` plus the test hooks ``add_player``,
``add_launch_token``, ``expire``, ``fail_next``, ``refuse_bets``) and ``hub88``/``pragmatic``/``evolution``
(a ``Provider``: ``send(call)`` and the matching client simulator as ``sim``), so running them against the
real gateway and ledger is a change of these fixtures only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from adapter_harness import FakeWallet, Provider, mount
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from adapters.base import ProviderConfig
from adapters.evolution import EvolutionAdapter, EvolutionClient
from adapters.hub88 import Hub88Adapter, Hub88Client
from adapters.pragmatic import PragmaticAdapter, PragmaticClient

PRAGMATIC_SECRET = "testKey"
EVOLUTION_TOKEN = "evo-auth-token-1"


@pytest.fixture
def wallet() -> FakeWallet:
    return FakeWallet()


@pytest.fixture(scope="session")
def rsa_keys() -> tuple[str, str]:
    """(private PEM, public PEM) of a key pair standing in for Hub88's."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


@pytest.fixture
def hub88_config(rsa_keys: tuple[str, str]) -> ProviderConfig:
    return ProviderConfig(id="hub88", protocol="hub88", public_key_pem=rsa_keys[1])


@pytest.fixture
def pragmatic_config() -> ProviderConfig:
    return ProviderConfig(id="pragmatic", protocol="pragmatic", secret=PRAGMATIC_SECRET,
                          options={"provider_id": "PragmaticPlay"})


@pytest.fixture
def evolution_config() -> ProviderConfig:
    return ProviderConfig(id="evolution", protocol="evolution", secret=EVOLUTION_TOKEN)


@pytest.fixture
async def hub88(wallet: FakeWallet, hub88_config: ProviderConfig,
                rsa_keys: tuple[str, str]) -> AsyncIterator[Provider]:
    base = f"/v1/providers/{hub88_config.id}"
    http = await mount(Hub88Adapter(hub88_config, wallet))
    yield Provider(http, Hub88Client(rsa_keys[0], base_path=base), hub88_config, base)
    await http.close()


@pytest.fixture
async def pragmatic(wallet: FakeWallet, pragmatic_config: ProviderConfig) -> AsyncIterator[Provider]:
    base = f"/v1/providers/{pragmatic_config.id}"
    http = await mount(PragmaticAdapter(pragmatic_config, wallet))
    yield Provider(http, PragmaticClient(PRAGMATIC_SECRET, base_path=base, clock=lambda: 1_700_000_000_000),
                   pragmatic_config, base)
    await http.close()


@pytest.fixture
async def evolution(wallet: FakeWallet, evolution_config: ProviderConfig) -> AsyncIterator[Provider]:
    base = f"/v1/providers/{evolution_config.id}"
    http = await mount(EvolutionAdapter(evolution_config, wallet))
    yield Provider(http, EvolutionClient(EVOLUTION_TOKEN, base_path=base), evolution_config, base)
    await http.close()
