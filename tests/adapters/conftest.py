"""Fixtures of the protocol tests: a wallet backend, and each protocol mounted as the gateway mounts it.

The test bodies only use the fixtures ``wallet`` (the test hooks ``add_player``, ``add_launch_token``,
``expire``, ``fail_next``, ``refuse_bets``, ``mounted``, ``balance`` and the list ``executed``) and
``hub88``/``pragmatic``/``evolution`` (a ``Provider``: ``send(call)`` and the matching client simulator as
``sim``). ``wallet`` is parametrized over two backends:

- ``fake``: ``FakeWallet``, in memory, each protocol's adapter mounted on it in a test server;
- ``real``: ``RealBackend``, the shared test gateway (``tests/conftest.py``) with real ledger writers on
  real NATS, PostgreSQL and Redis; the simulators post to its provider mounts over HTTP.

A test that must run on one backend only overrides the parameter:
``@pytest.mark.parametrize("wallet", ["real"], indirect=True)``.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from adapters.evolution import EvolutionAdapter
from adapters.hub88 import Hub88Adapter
from adapters.pragmatic import PragmaticAdapter
from adapters.sim.evolution import EvolutionClient
from adapters.sim.hub88 import Hub88Client
from adapters.sim.pragmatic import PragmaticClient
from core.records import ProviderConfig
from ledger import transport
from tests.adapters.adapter_harness import FakeWallet, Provider, mount
from tests.adapters.real_backend import Backend, RealBackend
from tests.support import EVOLUTION_TOKEN, PRAGMATIC_SECRET, hub88_keys

BACKENDS = ["fake", "real"]


@pytest.fixture(params=BACKENDS)
def wallet(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "fake":
        yield FakeWallet()
        return
    backend = RealBackend(request.getfixturevalue("gateway"), request.getfixturevalue("http"),
                          request.getfixturevalue("writers"))
    try:
        yield backend
    finally:
        backend.close()


@pytest.fixture(scope="session")
def rsa_keys() -> tuple[str, str]:
    """(private PEM, public PEM) of the key pair standing in for Hub88's (the test gateway's too)."""
    return hub88_keys()


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


async def _provider(wallet: Backend, config: ProviderConfig, adapter: type, sim: object) -> AsyncIterator[Provider]:
    base = f"/v1/providers/{config.id}"
    if isinstance(wallet, RealBackend):
        mounted = wallet.gateway.state.providers[config.id]
        assert mounted == config, "the shared test gateway mounts this provider otherwise"
        yield Provider(wallet.http, sim, config, base, wallet.gateway.base_url)
        return
    http = await mount(adapter(config, wallet))
    try:
        yield Provider(http, sim, config, base)
    finally:
        await http.close()


@pytest.fixture
async def hub88(wallet: Backend, hub88_config: ProviderConfig, rsa_keys: tuple[str, str]) -> AsyncIterator[Provider]:
    sim = Hub88Client(rsa_keys[0], base_path=f"/v1/providers/{hub88_config.id}")
    async for p in _provider(wallet, hub88_config, Hub88Adapter, sim):
        yield p


@pytest.fixture
async def pragmatic(wallet: Backend, pragmatic_config: ProviderConfig) -> AsyncIterator[Provider]:
    sim = PragmaticClient(PRAGMATIC_SECRET, base_path=f"/v1/providers/{pragmatic_config.id}",
                          clock=lambda: 1_700_000_000_000)
    async for p in _provider(wallet, pragmatic_config, PragmaticAdapter, sim):
        yield p


@pytest.fixture
async def evolution(wallet: Backend, evolution_config: ProviderConfig) -> AsyncIterator[Provider]:
    sim = EvolutionClient(EVOLUTION_TOKEN, base_path=f"/v1/providers/{evolution_config.id}")
    async for p in _provider(wallet, evolution_config, EvolutionAdapter, sim):
        yield p


@pytest.fixture
async def unanswered_gateway(make_gateway: Any, namespace: str) -> AsyncIterator[Any]:
    """A real gateway (every test provider mounted) whose ledger namespace has no writer: nothing answers
    its commands, so each times out after 300 ms. Its streams exist (its ``LedgerClient.start`` creates
    them) and are deleted afterwards with the commands they hold; its sessions live in that namespace of
    Redis, its balances are the shared PostgreSQL ledger's."""
    silent = f"{namespace}x{uuid.uuid4().hex[:6]}"
    async with make_gateway(namespace=silent, ledger_timeout_ms=300, instance_id=f"silent-{silent}") as gateway:
        try:
            yield gateway
        finally:
            js = gateway.state.nc.jetstream()
            for name in (gateway.state.settings.stream_name, gateway.state.settings.events_stream_name):
                with contextlib.suppress(Exception):
                    await js.delete_stream(transport.stream_name(gateway.state.settings, name))
