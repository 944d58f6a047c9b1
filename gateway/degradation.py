"""Managed degradation: which calls the gateway refuses on purpose, and why.

Modes: ``normal``, ``no_new_sessions`` (launches refused, open sessions keep playing) and
``bets_paused`` (bets refused with a retryable error; wins, rollbacks and deposits still flow), each
global or scoped to a provider or a brand, and each set by a named source (``admin``, ``auto`` for
ledger lag or shedding, ``health`` for a failing provider). A mode holds while any source holds it,
so an admin clearing their own entry never lifts a health-check block. Every change is logged and
counted, and ``snapshot()`` feeds ``/readyz`` and the metrics.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

from core.errors import BadInput, BetsPaused, NoNewSessions

log = logging.getLogger(__name__)

NORMAL, NO_NEW_SESSIONS, BETS_PAUSED = "normal", "no_new_sessions", "bets_paused"
MODES = (NORMAL, NO_NEW_SESSIONS, BETS_PAUSED)
SOURCES = ("admin", "auto", "health")


@dataclass(frozen=True, slots=True)
class ModeEntry:
    scope: str
    mode: str
    source: str
    reason: str
    since_ms: int


def scope_name(kind: str, ident: str = "") -> str:
    if kind == "global":
        return "global"
    if kind not in ("provider", "brand") or not ident:
        raise BadInput("scope must be global, provider:<id> or brand:<id>")
    return f"{kind}:{ident}"


class Degradation:
    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], ModeEntry] = {}
        self.changes = 0

    def set_mode(self, scope: str, mode: str, source: str, reason: str = "") -> bool:
        """Set (or with ``normal`` clear) one source's mode for a scope; True when something changed."""
        if mode not in MODES or source not in SOURCES:
            raise BadInput(f"mode must be one of {MODES}, source one of {SOURCES}")
        key = (scope, source)
        old = self._entries.get(key)
        if mode == NORMAL:
            if old is None:
                return False
            del self._entries[key]
        else:
            if old is not None and old.mode == mode:
                return False
            self._entries[key] = ModeEntry(scope, mode, source, reason, int(time.time() * 1000))
        self.changes += 1
        log.warning("degradation: %s set %s to %s (%s)", source, scope, mode, reason or "no reason given")
        return True

    def _modes(self, provider_id: str, brand_id: str) -> set[str]:
        scopes = {"global", f"provider:{provider_id}", f"brand:{brand_id}"}
        return {e.mode for e in self._entries.values() if e.scope in scopes}

    def check_session(self, provider_id: str, brand_id: str) -> None:
        modes = self._modes(provider_id, brand_id)
        if NO_NEW_SESSIONS in modes or BETS_PAUSED in modes:
            raise NoNewSessions(retry_after_s=30.0)

    def check_bet(self, provider_id: str, brand_id: str) -> None:
        if BETS_PAUSED in self._modes(provider_id, brand_id):
            raise BetsPaused(retry_after_s=5.0)

    def mode_of(self, scope: str) -> str:
        modes = {e.mode for e in self._entries.values() if e.scope == scope}
        return BETS_PAUSED if BETS_PAUSED in modes else NO_NEW_SESSIONS if NO_NEW_SESSIONS in modes else NORMAL

    def snapshot(self) -> dict[str, object]:
        return {"global": self.mode_of("global"), "changes": self.changes,
                "entries": [asdict(e) for e in self._entries.values()]}
