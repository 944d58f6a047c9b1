"""Session fixtures for the real servers the tests talk to: NATS (JetStream), PostgreSQL and Redis.

A configured URL replaces a fixture's server: ``GATEWAY_NATS_URL``, ``GATEWAY_PG_DSNS`` (its first DSN when
it is the per-shard form), ``GATEWAY_REDIS_URL``. Otherwise the server is started from the wheels on a free
loopback port in a pytest temp dir and stopped in the fixture's finalizer. A shared configured server is
never polluted: PostgreSQL gets a fresh database per session (dropped again at the end), and every NATS
subject/stream and Redis key a test makes starts with the session's ``namespace``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

if importlib.util.find_spec("gateway") is None:  # run from a checkout that is not pip-installed
    sys.path.append(str(Path(__file__).resolve().parents[1]))

from gateway import embedded

# --- real servers -----------------------------------------------------------------------------------------


def _configured(name: str) -> str:
    return os.environ.get(name, "").strip()


def _first_dsn(pg_dsns: str) -> str:
    """The DSN of ``GATEWAY_PG_DSNS``, or of its first shard range when written as ``0=dsn;1-3=dsn``."""
    first = pg_dsns.split(";")[0].strip()
    spec, sep, dsn = first.partition("=")
    return dsn.strip() if sep and "://" not in spec else first


@pytest.fixture(scope="session")
def namespace() -> str:
    """Prefix for this session's NATS subjects and streams and Redis keys."""
    return "t" + secrets.token_hex(3)


@pytest.fixture(scope="session")
def embedded_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Data folder of the servers this session starts itself."""
    return tmp_path_factory.mktemp("embedded")


@pytest.fixture(scope="session")
def nats_url(embedded_dir: Path) -> Iterator[str]:
    configured = _configured("GATEWAY_NATS_URL")
    if configured:
        yield configured
        return
    server = embedded.start_nats(embedded_dir)
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_server_dsn(embedded_dir: Path) -> Iterator[str]:
    """A DSN to the server's maintenance database; tests use ``pg_dsn``."""
    configured = _first_dsn(_configured("GATEWAY_PG_DSNS"))
    if configured:
        yield configured
        return
    server = embedded.start_postgres(embedded_dir, fast=True)
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
async def pg_dsn(pg_server_dsn: str, namespace: str) -> AsyncIterator[str]:
    """A DSN to a database created for this session."""
    name = f"gateway_{namespace}"
    dsn = await embedded.create_database(pg_server_dsn, name, exist_ok=False)
    try:
        yield dsn
    finally:
        if _configured("GATEWAY_PG_DSNS"):
            await embedded.drop_database(pg_server_dsn, name)


@pytest.fixture(scope="session")
def redis_url(embedded_dir: Path) -> Iterator[str]:
    configured = _configured("GATEWAY_REDIS_URL")
    if configured:
        yield configured
        return
    server = embedded.start_redis(embedded_dir)
    try:
        yield server.url
    finally:
        server.stop()


# --- application fixtures (built on the server fixtures above) ---------------------------------------------

from core.settings import Settings  # noqa: E402
from tests.support import ADMIN_KEY, OPERATOR_KEY, Api, gateway_providers  # noqa: E402


@pytest.fixture(scope="session")
def settings(nats_url: str, pg_dsn: str, redis_url: str, namespace: str) -> Settings:
    return Settings(
        nats_url=nats_url, pg_dsns=pg_dsn, redis_url=redis_url, namespace=namespace, shards=4,
        api_keys=f"{OPERATOR_KEY}:operator,{ADMIN_KEY}:admin", ledger_timeout_ms=5000,
        session_cache_ttl_ms=50, rg_cooling_off_s=2, instance_id=f"test-{namespace}",
        rl_player_per_s=1000, rl_player_burst=1000, rl_round_per_s=1000, rl_round_burst=1000,
        degrade_persist_s=3600,
    )


@pytest.fixture(scope="session")
async def migrated(settings: Settings) -> Settings:
    from ledger.migrate import migrate_all

    await migrate_all(settings.shard_dsns())
    return settings


@pytest.fixture(scope="session")
async def event_contracts(migrated: Settings) -> AsyncIterator[None]:
    """Once the writers (and their relays) have stopped: every event the session published matches its
    versioned contract in ``contracts/events/``."""
    yield
    from tests.contract_check import stream_problems

    seen, problems = await stream_problems(migrated)
    assert not problems, f"events breaking their contracts (of {sum(seen.values())}):\n" + "\n".join(problems)


@pytest.fixture(scope="session")
async def writers(migrated: Settings, event_contracts: None) -> AsyncIterator[Settings]:
    """Ledger writers for every shard, in this event loop."""
    import asyncio

    from ledger.writer import run_writers

    stop = asyncio.Event()
    task = asyncio.create_task(run_writers(migrated, range(migrated.shards), stop))
    await asyncio.sleep(0.3)
    if task.done():
        task.result()
    try:
        yield migrated
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


class GatewayHandle:
    """A running test gateway: its state and where it listens."""

    def __init__(self, state: Any, base_url: str) -> None:
        self.state = state
        self.base_url = base_url


@contextlib.asynccontextmanager
async def running_gateway(settings: Settings, providers: list[Any] | None = None) -> AsyncIterator[GatewayHandle]:
    """A real gateway app on a free loopback port, with every test provider mounted, served the way
    ``gateway serve`` serves it (``gateway.server``: the same connection deadlines)."""
    from gateway.app import build_app
    from gateway.server import serving
    from gateway.state import STATE_KEY

    app = build_app(settings, gateway_providers() + (providers or []))
    port = embedded.free_port()
    async with serving(app, settings, host="127.0.0.1", port=port):
        yield GatewayHandle(app[STATE_KEY], f"http://127.0.0.1:{port}")


@pytest.fixture(scope="session")
async def gateway(writers: Settings) -> AsyncIterator[GatewayHandle]:
    """The shared gateway, in front of the real writers."""
    async with running_gateway(writers) as handle:
        yield handle


@pytest.fixture
def make_gateway(writers: Settings) -> Any:
    """Another gateway with changed settings (e.g. tight limits), same servers: ``async with make_gateway(...)``."""
    def make(providers: list[Any] | None = None, **changes: Any) -> Any:
        return running_gateway(writers.replace(**changes), providers)

    return make


@pytest.fixture(scope="session")
async def http() -> AsyncIterator[Any]:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def api(gateway: GatewayHandle, http: Any) -> Api:
    return Api(http, gateway.base_url)
