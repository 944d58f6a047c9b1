"""``gateway`` command line: up, serve, ledger, migrate, reconcile, events tail.

Every command reads the one ``Settings`` object from ``GATEWAY_*`` variables first, so a bad or
unknown key stops it before anything starts, with one line per problem.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

from core.settings import Settings, SettingsError
from gateway.processes import StopRequested, stop_children


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from None


def _logging(settings: Settings) -> None:
    from core.logs import configure

    configure(settings.log_level, settings.log_format)


def _need(settings: Settings, *names: str) -> None:
    missing = [f"GATEWAY_{n.upper()}" for n in names if not getattr(settings, n)]
    if missing:
        print(f"missing configuration: {', '.join(missing)} (or use `gateway up`)", file=sys.stderr)
        raise SystemExit(2)


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a dependency, but the gateway still runs on asyncio
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _until_signal() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


# ---------------------------------------------------------------------- serve
def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings()
    _need(settings, "nats_url", "pg_dsns", "redis_url")
    workers = args.workers or settings.workers
    if workers > 1:
        return _serve_workers(settings, workers)
    _logging(settings)
    from gateway.app import build_app
    from gateway.providers import ProviderConfigError, load_providers
    from gateway.server import serve_until_signal

    try:
        providers = load_providers(settings.providers_file) if settings.providers_file else []
    except ProviderConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    _install_uvloop()
    from core import otel

    otel.configure(settings.otel_endpoint, "game-gateway")
    sock = socket.socket(socket.AF_INET6 if ":" in settings.http_host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((settings.http_host, settings.http_port))
    # the gateway's runner (connection deadlines, see gateway.server), drained on SIGINT/SIGTERM
    asyncio.run(serve_until_signal(build_app(settings, providers), settings, sock))
    return 0


def _serve_workers(settings: Settings, workers: int) -> int:
    """N processes, one event loop each, sharing the port through SO_REUSEPORT. They share a fresh
    Prometheus multi-process folder, so /metrics (whichever worker answers) sums all of them; it is
    removed when they have all stopped."""
    with tempfile.TemporaryDirectory(prefix="gateway-metrics-") as metrics_dir:
        env = {**os.environ, "GATEWAY_WORKERS": "1", "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
        procs = [subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--workers", "1"], env=env)
                 for _ in range(workers)]
        return _supervise(procs)


def _supervise(procs: list[subprocess.Popen[bytes]]) -> int:
    """Wait for the children; on SIGINT/SIGTERM (or one dying) stop them all and wait."""
    with StopRequested() as stop:
        while not stop.requested and all(p.poll() is None for p in procs):
            time.sleep(0.2)
        stop_children(procs, 20)
    return 0 if stop.requested else 1


# ---------------------------------------------------------------------- ledger
def cmd_ledger(args: argparse.Namespace) -> int:
    settings = _settings()
    _need(settings, "nats_url", "pg_dsns")
    _logging(settings)
    from ledger.sharding import parse_shard_range
    from ledger.writer import run_writers

    shards = parse_shard_range(args.shards, settings.shards)
    _install_uvloop()
    from core import otel

    otel.configure(settings.otel_endpoint, "game-gateway-ledger")

    async def main() -> None:
        stop = await _until_signal()
        await run_writers(settings, shards, stop, relay=not args.no_relay)

    asyncio.run(main())
    return 0


def cmd_relay(args: argparse.Namespace) -> int:
    settings = _settings()
    _need(settings, "nats_url", "pg_dsns")
    _logging(settings)
    from ledger.outbox import run_relays
    from ledger.sharding import parse_shard_range

    shards = parse_shard_range(args.shards, settings.shards)
    _install_uvloop()

    async def main() -> None:
        stop = await _until_signal()
        await run_relays(settings, shards, stop)

    asyncio.run(main())
    return 0


# ---------------------------------------------------------------------- migrate / reconcile
def cmd_migrate(args: argparse.Namespace) -> int:
    settings = _settings()
    _need(settings, "pg_dsns")
    from ledger.migrate import migrate_all
    from ledger.sharding import parse_shard_range

    dsns = settings.shard_dsns()
    shards = parse_shard_range(args.shards, settings.shards)
    applied = asyncio.run(migrate_all({s: dsns[s] for s in shards}))
    for shard, versions in applied.items():
        print(f"shard {shard}: " + (f"applied {versions}" if versions else "up to date"))
    return 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    settings = _settings()
    _need(settings, "pg_dsns")
    from ledger.reconcile import format_reports, reconcile

    reports = asyncio.run(reconcile(settings.shard_dsns()))
    print(format_reports(reports))
    return 0 if all(r.ok for r in reports) else 1


# ---------------------------------------------------------------------- events
def cmd_events_tail(args: argparse.Namespace) -> int:
    settings = _settings()
    _need(settings, "nats_url")
    from gateway.events import parse_since, tail

    try:
        since = parse_since(args.since) if args.since else None
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2

    async def main() -> None:
        stop = await _until_signal()
        await tail(settings, brand=args.brand, etype=args.type, since=since, stop=stop)

    asyncio.run(main())
    return 0


# ---------------------------------------------------------------------- up
def cmd_up(args: argparse.Namespace) -> int:
    from gateway.up import run_up

    return run_up(_settings(), workers=args.workers)


# ---------------------------------------------------------------------- top
def cmd_top(args: argparse.Namespace) -> int:
    from gateway.top import run

    url = args.url
    if not url:
        settings = _settings()
        host = "127.0.0.1" if settings.http_host in ("0.0.0.0", "::", "") else settings.http_host
        url = f"http://{host}:{settings.http_port}"
    if args.interval <= 0:
        print("--interval must be positive", file=sys.stderr)
        return 2
    return run(url, args.interval, args.once)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description="Game Gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("up", help="the whole stack on this machine (embedded NATS, PostgreSQL, Redis)")
    p.add_argument("--workers", type=int, default=0, help="gateway processes (default: GATEWAY_WORKERS)")
    p.set_defaults(func=cmd_up)
    p = sub.add_parser("serve", help="the gateway only")
    p.add_argument("--workers", type=int, default=0, help="processes sharing the port (SO_REUSEPORT)")
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("ledger", help="ledger writers only")
    p.add_argument("--shards", default="all", help="e.g. 0-3, 1,3 or all")
    p.add_argument("--no-relay", action="store_true", help="leave the outbox relays to `gateway relay`")
    p.set_defaults(func=cmd_ledger)
    p = sub.add_parser("relay", help="outbox relays only (events → NATS), one active per shard")
    p.add_argument("--shards", default="all", help="e.g. 0-3, 1,3 or all")
    p.set_defaults(func=cmd_relay)
    p = sub.add_parser("migrate", help="apply SQL migrations to the shards' schemas")
    p.add_argument("--shards", default="all", help="e.g. 0-1 (default: all)")
    p.set_defaults(func=cmd_migrate)
    sub.add_parser("reconcile", help="check every ledger invariant").set_defaults(func=cmd_reconcile)
    p = sub.add_parser("events", help="the committed-event stream")
    events = p.add_subparsers(dest="events_command", required=True)
    p = events.add_parser("tail", help="follow events, one JSON line each (Ctrl-C stops)")
    p.add_argument("--brand", help="only this brand")
    p.add_argument("--type", help="only this event type, e.g. bet.placed (or a family: bet)")
    p.add_argument("--since", help="replay from 15m / 2h / 7d ago or an ISO timestamp (default: new events)")
    p.set_defaults(func=cmd_events_tail)
    p = sub.add_parser("top", help="live view of a running gateway from its /metrics")
    p.add_argument("--url", default="", help="gateway base URL (default: GATEWAY_HTTP_HOST:GATEWAY_HTTP_PORT)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between frames (default 2)")
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    p.set_defaults(func=cmd_top)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
