"""Keeps the processes of ``gateway up`` running: a dead child or embedded server is started again.

Invariants:

* Every death is seen (each process is polled) and reported as one line on stderr naming the process, how
  it ended, the attempt and the delay before the next start; nothing dies silently, and the loop itself
  survives any error of its own (logged, then retried with backoff).
* Restarts back off exponentially (``up_restart_delay_ms`` doubling up to ``up_restart_delay_max_s``). A
  process that dies within ``up_restart_stable_s`` of its start ``up_restart_max_quick`` times in a row is
  crash-looping (bad configuration, a port someone else took): ``tick`` then returns the reason and ``up``
  stops everything and exits non-zero instead of restarting forever. One that ran stably starts over.
* A child is started again only while every server is up, and a child that died after a server did is not
  counted toward its own crash loop: it failed because the server went away.
* An embedded server comes back on the same port with the same data folder, so clients reconnect to the
  URL they already have.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from gateway.processes import exit_text, kill_group, stop_children

if TYPE_CHECKING:
    from core.settings import Settings
    from gateway.embedded import EmbeddedServer, EmbeddedStack

POLL_S = 0.2

Log = Callable[[str], None]


@dataclass
class Backoff:
    """Delays between restarts of one process, and when to give up on it."""

    first_s: float = 0.5
    max_s: float = 30.0
    stable_s: float = 30.0
    max_quick: int = 5
    #: deaths in a row, each soon after its start
    quick: int = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> Backoff:
        return cls(settings.up_restart_delay_ms / 1000, float(settings.up_restart_delay_max_s),
                   float(settings.up_restart_stable_s), settings.up_restart_max_quick)

    def next_delay(self, ran_s: float, *, own_fault: bool = True) -> float | None:
        """Seconds to wait before the next start after a run of ``ran_s``, or None: crash loop, give up."""
        if ran_s >= self.stable_s or not own_fault:
            self.quick = 0
        self.quick += 1
        if self.quick > self.max_quick:
            return None
        return float(min(self.max_s, self.first_s * 2 ** (self.quick - 1)))


class Unit(Protocol):
    """One supervised process."""

    name: str

    @property
    def pid(self) -> int: ...

    def returncode(self) -> int | None:
        """None while it runs."""

    def start(self) -> None:
        """Start (again); raises when it cannot."""

    def where(self) -> str:
        """Extra words for log lines, e.g. `` on port 4222``."""


class Child:
    """A ``gateway`` subcommand in a session of its own (Ctrl-C reaches ``up`` only, which stops it in order)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.name, self.argv, self.env = name, argv, env
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    def returncode(self) -> int | None:
        if self.proc is None:
            return 1
        code = self.proc.poll()
        if code is not None:
            kill_group(self.proc)  # its own children (serve workers) go with it
        return code

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, env=self.env, start_new_session=True)

    def where(self) -> str:
        return ""


class Server:
    """An embedded server of ``stack``; restarting it keeps its port and data folder."""

    def __init__(self, stack: EmbeddedStack, server: EmbeddedServer) -> None:
        self.stack, self.server, self.name = stack, server, server.name

    @property
    def pid(self) -> int:
        return self.server.pid

    def returncode(self) -> int | None:
        return self.server.process.poll()

    def start(self) -> None:
        self.server = self.stack.restart(self.server)

    def where(self) -> str:
        return f" on port {self.server.port}"


@dataclass
class _Entry:
    unit: Unit
    backoff: Backoff
    started_at: float
    #: when to start it again; None while it runs
    due: float | None = None
    last_exit: str = field(default="")


class Supervisor:
    """Polls servers, then children; restarts the dead with backoff. ``tick`` returns a reason to give up."""

    def __init__(self, servers: list[Unit], children: list[Unit], backoff: Callable[[], Backoff], log: Log,
                 clock: Callable[[], float] = time.monotonic) -> None:
        now = clock()
        self.servers = [_Entry(u, backoff(), now) for u in servers]
        self.children = [_Entry(u, backoff(), now) for u in children]
        self.log, self.clock = log, clock
        self._server_died_at = float("-inf")

    def tick(self) -> str | None:
        for entry in self.servers:
            fatal = self._check(entry, server=True)
            if fatal:
                return fatal
        servers_up = all(e.due is None for e in self.servers)
        for entry in self.children:
            fatal = self._check(entry, server=False, may_start=servers_up)
            if fatal:
                return fatal
        return None

    def _check(self, entry: _Entry, *, server: bool, may_start: bool = True) -> str | None:
        unit, now = entry.unit, self.clock()
        if entry.due is None:
            code = unit.returncode()
            if code is None:
                return None
            ran_s = now - entry.started_at
            entry.last_exit = exit_text(code)
            servers_trouble = any(e.due is not None for e in self.servers) or self._server_died_at >= entry.started_at
            if server:
                self._server_died_at = now
            delay = entry.backoff.next_delay(ran_s, own_fault=server or not servers_trouble)
            if delay is None:
                return (f"{unit.name}{unit.where()} keeps dying right after start: {entry.backoff.max_quick} "
                        f"restarts in a row, last one {entry.last_exit} after {ran_s:.1f} s")
            self.log(f"gateway up: {unit.name} (pid {unit.pid}){unit.where()} {entry.last_exit} after {ran_s:.1f} s;"
                     f" restart {entry.backoff.quick}/{entry.backoff.max_quick} in {delay:.1f} s")
            entry.due = now + delay
        if entry.due is None or now < entry.due or not may_start:
            return None
        try:
            unit.start()
        except Exception as exc:
            delay = entry.backoff.next_delay(0.0)
            if delay is None:
                return (f"{unit.name}{unit.where()} could not be restarted ({entry.backoff.max_quick} attempts):"
                        f" {exc}")
            self.log(f"gateway up: {unit.name}{unit.where()} did not start: {_summary(exc)}; "
                     f"restart {entry.backoff.quick}/{entry.backoff.max_quick} in {delay:.1f} s")
            entry.due = self.clock() + delay
            return None
        entry.due, entry.started_at = None, self.clock()
        self.log(f"gateway up: {unit.name} restarted (pid {unit.pid}){unit.where()}")
        return None

    def stop_children(self, timeout_s: float) -> None:
        """SIGTERM every running child (they drain), SIGKILL after ``timeout_s``, with their process groups."""
        procs = [e.unit.proc for e in self.children if isinstance(e.unit, Child) and e.unit.proc is not None]
        stop_children(procs, timeout_s, groups=True)


def _summary(exc: Exception) -> str:
    """First line of an error, plus its last one when it quotes a log (where the cause usually is)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return repr(exc)
    return lines[0] if len(lines) == 1 else f"{lines[0]} ({lines[-1]})"


def supervise(sup: Supervisor, stopping: Callable[[], bool], log: Log,
              on_tick: Callable[[], None] = lambda: None) -> str | None:
    """Tick until ``stopping()``; returns None then, or the reason to give up. Never dies of its own errors."""
    error_delay = 0.0
    while not stopping():
        try:
            fatal = sup.tick()
            if fatal:
                return fatal
            on_tick()
            error_delay = 0.0
        except Exception as exc:
            error_delay = min(max(error_delay * 2, 0.5), 30.0)
            log(f"gateway up: supervisor error {exc!r}; carrying on in {error_delay:.1f} s")
            _sleep(stopping, error_delay)
            continue
        _sleep(stopping, POLL_S)
    return None


def _sleep(stopping: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not stopping() and time.monotonic() < deadline:
        time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
