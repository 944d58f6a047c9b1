"""``gateway up``: the whole Game Gateway on one machine, and nothing left running after it.

Starts NATS (JetStream), PostgreSQL and Redis from their PyPI wheels on free loopback ports in the
data folder (each unless its ``GATEWAY_*`` URL is set), applies migrations, then runs the ledger
writers, the outbox relay and the gateway as child processes with the same settings, and keeps them
all running (``gateway.supervisor``): a dead child or server is restarted with backoff, a crash loop
stops everything with a non-zero exit. Ctrl-C or SIGTERM stops the children first (the gateway
drains), then the servers it started.
"""

from __future__ import annotations

import asyncio
import functools
import os
import secrets
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from core.records import ProviderConfig
from core.settings import Settings
from gateway.processes import StopRequested
from gateway.supervisor import Backoff, Child, Server, Supervisor, supervise
from gateway.walkthrough import DEMO_PROVIDER, walkthrough


def _dev_file(path: Path, make: str) -> str:
    if not path.exists():
        path.write_text(make)
        path.chmod(0o600)
    return path.read_text().strip()


def dev_defaults(settings: Settings, data: Path) -> Settings:
    """API keys and a demo native provider for a laptop, generated once and kept in the data folder."""
    changes: dict[str, str] = {}
    if not settings.api_keys:
        op = _dev_file(data / "operator.key", secrets.token_urlsafe(18))
        admin = _dev_file(data / "admin.key", secrets.token_urlsafe(18))
        changes["api_keys"] = f"{op}:operator,{admin}:admin"
    if not settings.providers_file:
        _dev_file(data / "demo.secret", secrets.token_urlsafe(24))
        path = data / "providers.toml"
        path.write_text(
            "# Written by `gateway up` for local play; point GATEWAY_PROVIDERS_FILE at your own file.\n"
            f'[[providers]]\nid = "{DEMO_PROVIDER}"\nprotocol = "native"\nsecret_file = "demo.secret"\n')
        changes["providers_file"] = str(path)
    return settings.replace(**changes) if changes else settings


def run_up(settings: Settings, *, workers: int = 0) -> int:
    from gateway import serverproc
    from gateway.embedded import EmbeddedStack
    from ledger.migrate import migrate_all

    data = Path(settings.data_dir).resolve()
    data.mkdir(parents=True, exist_ok=True)
    settings = settings.replace(data_dir=str(data))
    print(f"gateway up: data folder {data}", flush=True)
    # the gateway (and a writer's health port) bind only once the servers run: keep the servers off them
    serverproc.RESERVED_PORTS.update(p for p in (settings.http_port, settings.writer_http_port) if p)
    stack = EmbeddedStack(data, nats_url=settings.nats_url or None, pg_dsn=settings.pg_dsns or None,
                          redis_url=settings.redis_url or None, database=None if settings.pg_dsns else "gateway")
    sup: Supervisor | None = None
    stop = StopRequested().__enter__()
    try:
        stack.start()
        settings = dev_defaults(settings.replace(nats_url=stack.nats_url, pg_dsns=settings.pg_dsns or stack.pg_dsn,
                                                 redis_url=stack.redis_url), data)
        for server in stack.servers:
            print(f"  {server.name:<10} {server.url}  (pid {server.pid}, started in {server.startup_s:.1f}s)")
        applied = asyncio.run(migrate_all(settings.shard_dsns()))
        print(f"  migrations {sum(len(v) for v in applied.values())} applied over {len(applied)} shard(s)")
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        env.update(settings.env())
        gateway = [sys.executable, "-m", "gateway"]
        children = [
            Child("ledger writers", [*gateway, "ledger", "--shards", "all", "--no-relay"], env),
            Child("outbox relay", [*gateway, "relay", "--shards", "all"], env),
            Child("gateway", [*gateway, "serve", "--workers", str(workers or settings.workers)], env),
        ]
        for child in children:
            child.start()
        sup = Supervisor([Server(stack, s) for s in stack.servers], list(children),
                         functools.partial(Backoff.from_settings, settings), _log)
        base = f"http://{settings.http_host}:{settings.http_port}"
        fatal = supervise(sup, lambda: stop.requested, _log, _Banner(settings, base))
        if fatal:
            _log(f"gateway up: {fatal}\ngateway up: giving up; stopping everything")
            return 1
        return 0
    finally:
        if sup is not None:
            sup.stop_children(settings.shutdown_drain_s + 10)
        stack.stop()
        stop.__exit__(None, None, None)
        print("gateway up: stopped", flush=True)


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class _Banner:
    """Prints the keys and the walk-through once the gateway first answers ``/readyz`` with 200."""

    def __init__(self, settings: Settings, base: str, patience_s: float = 60) -> None:
        self.settings, self.base = settings, base
        self.done, self.warn_at = False, time.monotonic() + patience_s

    def __call__(self) -> None:
        if self.done or not _ready(self.base):
            if not self.done and time.monotonic() > self.warn_at:
                self.warn_at = float("inf")
                _log("gateway up: the gateway is not ready yet; still waiting (see the lines above)")
            return
        self.done = True
        settings, base = self.settings, self.base
        print(f"\nGame Gateway ready on {base}  (ledger writers for {settings.shards} shards)")
        print(f"  operator API key   {next(k for k, r in settings.api_key_roles.items() if r == 'operator')}")
        print(f"  admin API key      {next(k for k, r in settings.api_key_roles.items() if r == 'admin')}")
        print(f"  providers file     {settings.providers_file}")
        print(f"  OpenAPI            {base}/openapi.json    readiness {base}/readyz")
        print(walkthrough(settings, base, _providers(settings)))
        print("Dead children and embedded servers are restarted. Ctrl-C stops everything.", flush=True)


def _providers(settings: Settings) -> list[ProviderConfig]:
    from gateway.providers import ProviderConfigError, load_providers

    try:
        return load_providers(settings.providers_file) if settings.providers_file else []
    except ProviderConfigError:
        return []  # the gateway child has refused it already, with the reason


def _ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/readyz", timeout=1) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False
