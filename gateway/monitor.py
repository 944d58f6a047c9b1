"""Background watchers that move the gateway between degradation modes on their own.

Ledger pressure: when any shard's queue keeps shedding, commands time out, or the ledger's smoothed
round trip stays over ``degrade_lag_budget_ms``, for longer than ``degrade_persist_s``, new sessions
are refused globally until it has been calm as long again.
Provider health: each provider with a ``health_url`` is polled; ``health_fail_threshold`` failures
in a row put that provider in ``no_new_sessions``, ``health_ok_threshold`` successes lift it
(hysteresis, so a flapping endpoint doesn't flap the mode).
Both loops survive any error (logged with its traceback, retried after a capped backoff): a dead
watcher would leave the modes frozen without anyone noticing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import aiohttp

from gateway.degradation import NO_NEW_SESSIONS, NORMAL
from gateway.metrics import PROVIDER_UP
from ledger.backoff import Backoff

if TYPE_CHECKING:
    from gateway.state import GatewayState

log = logging.getLogger(__name__)


class Monitor:
    def __init__(self, state: GatewayState) -> None:
        self.state = state
        self._stop = asyncio.Event()
        self._pressure_since: float | None = None
        self._calm_since: float | None = None
        self._last_timeouts = 0
        self.health: dict[str, tuple[int, int]] = {}  # provider → (consecutive fails, consecutive oks)

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        tasks = [asyncio.create_task(self._pressure_loop())]
        s = self.state.settings
        polled = [p for p in self.state.providers.values() if p.health_url and p.enabled]
        if polled:
            tasks.append(asyncio.create_task(self._health_loop(polled, s.health_poll_ms / 1000)))
        await self._stop.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _pressure_loop(self) -> None:
        backoff = Backoff(0.25, 5.0)
        while True:
            try:
                self.check_pressure(time.monotonic())
                backoff.reset()
                await asyncio.sleep(0.25)
            except Exception:
                log.exception("ledger pressure watcher failed; carrying on")
                await asyncio.sleep(backoff.next())

    def check_pressure(self, now: float) -> None:
        st = self.state
        timeouts = st.ledger.timeouts
        lagging = st.ledger.lag_ewma_s * 1000 > st.settings.degrade_lag_budget_ms
        under = st.ledger.shedding() or timeouts > self._last_timeouts or lagging
        self._last_timeouts = timeouts
        persist = st.settings.degrade_persist_s
        if under:
            self._calm_since = None
            self._pressure_since = self._pressure_since or now
            if now - self._pressure_since >= persist:
                st.degradation.set_mode("global", NO_NEW_SESSIONS, "auto", "ledger lag or shedding persisted")
        else:
            self._pressure_since = None
            self._calm_since = self._calm_since or now
            if now - self._calm_since >= persist:
                st.degradation.set_mode("global", NORMAL, "auto")

    async def _health_loop(self, providers: list, interval: float) -> None:  # type: ignore[type-arg]
        timeout = aiohttp.ClientTimeout(total=max(1.0, interval / 2))
        backoff = Backoff(interval, max(interval, 60.0))
        while True:
            try:
                async with aiohttp.ClientSession(timeout=timeout) as http:
                    while True:
                        await asyncio.gather(*(self._poll(http, p) for p in providers))
                        backoff.reset()
                        await asyncio.sleep(interval)
            except Exception:
                log.exception("provider health watcher failed; carrying on")
                await asyncio.sleep(backoff.next())

    async def _poll(self, http: aiohttp.ClientSession, provider) -> None:  # type: ignore[no-untyped-def]
        try:
            async with http.get(provider.health_url) as resp:
                ok = 200 <= resp.status < 300
        except (aiohttp.ClientError, TimeoutError, OSError):
            ok = False
        self.record_health(provider.id, ok)

    def record_health(self, provider_id: str, ok: bool) -> None:
        s = self.state.settings
        fails, oks = self.health.get(provider_id, (0, 0))
        fails, oks = (0, oks + 1) if ok else (fails + 1, 0)
        self.health[provider_id] = (fails, oks)
        PROVIDER_UP.labels(provider_id).set(int(ok))
        scope = f"provider:{provider_id}"
        if fails >= s.health_fail_threshold:
            self.state.degradation.set_mode(scope, NO_NEW_SESSIONS, "health", f"{fails} failed health checks")
        elif oks >= s.health_ok_threshold:
            self.state.degradation.set_mode(scope, NORMAL, "health")
