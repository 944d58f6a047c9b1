"""In-process supervision of the ledger's long-running tasks (shard writers, outbox relays).

Every such loop already survives any exception on its own (backoff and a log line). A task that
still ends before it was told to stop is therefore a bug or an outside cancellation, and a dead
writer is the worst failure there is: its shard silently stops settling while the process looks
alive. So it is treated as a crash: logged at CRITICAL with its traceback, counted, and restarted
after a capped backoff; the count is exported so an alert can fire on it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from ledger.backoff import Backoff

log = logging.getLogger(__name__)


class Supervisor:
    def __init__(self, factories: dict[str, Callable[[], Coroutine[Any, Any, None]]]) -> None:
        self._factories = factories
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._backoff = {name: Backoff(0.1, 5.0) for name in factories}
        #: unexpected ends per task name
        self.restarts: dict[str, int] = dict.fromkeys(factories, 0)

    def start(self) -> None:
        for name, factory in self._factories.items():
            self._tasks[name] = asyncio.create_task(factory(), name=name)

    def alive(self) -> dict[str, bool]:
        return {name: not task.done() for name, task in self._tasks.items()}

    async def run_until(self, stop: asyncio.Event) -> None:
        """Watch the tasks until ``stop`` is set; restart any that ends before."""
        stopping = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                await asyncio.wait([stopping, *self._tasks.values()], return_when=asyncio.FIRST_COMPLETED)
                if stop.is_set():
                    break
                for name, task in list(self._tasks.items()):
                    if task.done():
                        self._crashed(name, task)
        finally:
            stopping.cancel()

    def _crashed(self, name: str, task: asyncio.Task[None]) -> None:
        exc: BaseException | None = asyncio.CancelledError() if task.cancelled() else task.exception()
        self.restarts[name] += 1
        delay = self._backoff[name].next()
        log.critical("task %s ended unexpectedly (%s); restarting it in %.1f s (restart #%d)", name,
                     type(exc).__name__ if exc else "returned", delay, self.restarts[name], exc_info=exc)
        self._tasks[name] = asyncio.create_task(self._later(delay, self._factories[name]), name=name)

    @staticmethod
    async def _later(delay: float, factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
        await asyncio.sleep(delay)
        await factory()

    async def join(self) -> None:
        """Wait for every task after the loops were told to stop (their errors are not raised here)."""
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
