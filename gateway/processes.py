"""Child processes that must never outlive their parent: ``gateway up`` and ``serve --workers``."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from types import FrameType, TracebackType


class StopRequested:
    """While active, SIGINT and SIGTERM only set ``requested``; the caller stops in its own order."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, object] = {}

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    def __enter__(self) -> StopRequested:
        self._old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)  # type: ignore[arg-type]


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL what is left of the process group of ``proc`` (started with ``start_new_session``), e.g. the
    workers of a ``serve --workers N`` whose parent was killed; the kernel keeps the group id reserved while
    any member lives, so this never hits a stranger."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def exit_text(returncode: int) -> str:
    """``exited with code 2`` or ``killed by SIGKILL``, for log lines."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"


def stop_children(procs: Sequence[subprocess.Popen[bytes]], timeout_s: float, *, groups: bool = False) -> None:
    """SIGTERM (they drain), wait up to ``timeout_s`` for all, then SIGKILL whatever is left; last first.
    With ``groups`` (children started in sessions of their own) their leftover descendants are killed too."""
    for p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for p in reversed(procs):
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        if groups:
            kill_group(p)
