"""Players holding the websocket during the load: what their sockets pushed, checked against the provider.

A ``Watcher`` holds ``GET /v1/ws`` for one player (websocket-client; cooperative under Locust's gevent)
and a background greenlet reads it. After each round the player checks, waiting at most
``GW_WS_PUSH_WAIT_S``, that the last balance the socket told it equals the balance in the provider's
last definitive answer. Only the *final* balance is compared: a push may lag (hence the bounded wait)
and a slow client's queued balances are conflated into the newest. What must hold for every message:
``seq`` gap-free per connection, and event pushes in commit order (``cursor`` strictly increasing).

A socket the gateway drops (a slow client, a draining replica) is opened again without ``resume``:
the new ``hello`` carries the current balance, which is all the final-balance check needs.

Counts live in one ``Tally`` per process, written next to the journal (``ws-<pid>.json``) at exit;
``summarize`` adds them up for the reconciliation and the report.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gevent
import orjson
from gevent.event import Event
from websocket import WebSocket, WebSocketException, WebSocketTimeoutException, create_connection

PROTOCOL = "gateway.v1"
#: problems kept per process (the counts stay exact)
MAX_PROBLEMS = 20
#: lag samples kept per process: enough for percentiles, bounded for long runs
MAX_LAGS = 20_000


@dataclass
class Tally:
    """One process's websocket counts."""

    sockets: int = 0           # sockets opened (hello received), reconnects included
    reconnects: int = 0        # sockets the gateway closed that were opened again
    open_now: int = 0
    open_max: int = 0          # sockets held at once by this process at most
    messages: int = 0
    pushes: int = 0            # balance pushes
    conflated: int = 0         # balance pushes that folded earlier ones (a slow client)
    rounds_checked: int = 0
    mismatches: int = 0        # final balance not pushed within the bound
    order_errors: int = 0      # seq gap or a push out of commit order
    early: int = 0             # pushes read before the provider's answer to the same call
    lags_ms: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)

    def write(self, folder: str | os.PathLike[str]) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"ws-{os.getpid()}.json").write_text(json.dumps(asdict(self)))


def _pct(values: list[float], q: float) -> float:
    return round(values[min(len(values) - 1, int(q * len(values)))], 1) if values else 0.0


def summarize(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Every process's tally added up (``{}`` when no watcher ran); lag percentiles in ms."""
    tallies = []
    for path in sorted(Path(folder).glob("ws-*.json")):
        with contextlib.suppress(ValueError, OSError):
            tallies.append(json.loads(path.read_text()))
    if not tallies:
        return {}
    out: dict[str, Any] = {k: sum(t[k] for t in tallies) for k in (
        "sockets", "reconnects", "open_max", "messages", "pushes", "conflated", "rounds_checked", "mismatches",
        "order_errors", "early")}
    lags = sorted(x for t in tallies for x in t["lags_ms"])
    out["push_lag_ms"] = {"samples": len(lags), "p50": _pct(lags, 0.5), "p95": _pct(lags, 0.95),
                          "p99": _pct(lags, 0.99), "max": round(lags[-1], 1) if lags else 0.0}
    out["problems"] = [p for t in tallies for p in t["problems"]]
    return out


class Watcher:
    """One player's socket: a reader greenlet tracks the last balance it was told."""

    def __init__(self, url: str, tally: Tally, who: str, *, timeout_s: float = 10.0) -> None:
        self.url, self.tally, self.who, self.timeout_s = url, tally, who, timeout_s
        self.sock: WebSocket | None = None
        self.balance: int | None = None
        self.seq = 0           # last seq on this connection
        self.cursor = 0        # last event cursor on this connection
        self.changed = Event()
        self.stopping = False
        self._reader: gevent.Greenlet | None = None
        #: tx id → monotonic time of its definitive answer / of its balance push, whichever came first
        self._answered: dict[str, float] = {}
        self._pushed: dict[str, float] = {}

    # ------------------------------------------------------------------ socket
    def open(self) -> float:
        """Connect and wait for ``hello``; the seconds it took. Raises when the gateway refuses."""
        started = time.monotonic()
        self._connect()
        self._reader = gevent.spawn(self._read)
        return time.monotonic() - started

    def _connect(self) -> None:
        sock = create_connection(self.url, timeout=self.timeout_s, subprotocols=[PROTOCOL])
        self.seq = self.cursor = 0
        hello = orjson.loads(sock.recv())
        if hello.get("type") != "hello":
            sock.close()
            raise WebSocketException(f"expected hello, got {hello.get('type')}")
        self.sock = sock
        self.tally.sockets += 1
        self.tally.open_now += 1
        self.tally.open_max = max(self.tally.open_max, self.tally.open_now)
        self.on_message(hello, time.monotonic())

    def _read(self) -> None:
        """Read until closed; a socket the gateway ends is opened again (with backoff) until ``close``."""
        while not self.stopping:
            sock = self.sock
            try:
                if sock is None:
                    raise WebSocketException("not connected")
                data = sock.recv()
                if not data:  # a close frame
                    raise WebSocketException("closed by the gateway")
                self.on_message(orjson.loads(data), time.monotonic())
            except WebSocketTimeoutException:
                continue  # idle: the gateway's heartbeat pings are answered inside recv()
            except (WebSocketException, OSError, ValueError):
                if self.stopping:
                    return
                self._drop()
                gevent.sleep(random.uniform(0.2, 1.0))
                with contextlib.suppress(WebSocketException, OSError, ValueError):
                    self._connect()
                    self.tally.reconnects += 1

    def _drop(self) -> None:
        if self.sock is not None:
            self.tally.open_now -= 1
            with contextlib.suppress(Exception):
                self.sock.close()
            self.sock = None

    def close(self) -> None:
        self.stopping = True
        self._drop()
        if self._reader is not None:
            self._reader.kill(block=False)

    # ------------------------------------------------------------------ messages
    def on_message(self, msg: dict[str, Any], now: float) -> None:
        self.tally.messages += 1
        seq = msg.get("seq")
        if seq != self.seq + 1:
            self._order(f"seq {seq} after {self.seq}")
        if isinstance(seq, int):
            self.seq = seq
        kind = msg.get("type")
        cursor = msg.get("cursor")
        if kind != "hello" and isinstance(cursor, int):  # hello's cursor is the feed's position, not an event
            if cursor <= self.cursor:
                self._order(f"push with cursor {cursor} after cursor {self.cursor} (not commit order)")
            self.cursor = max(self.cursor, cursor)
        if kind in ("hello", "balance", "resumed") and isinstance(msg.get("balance"), int):
            self.balance = msg["balance"]
        if kind == "balance":
            self.tally.pushes += 1
            self.tally.conflated += bool(msg.get("conflated"))
            tx = str(msg.get("tx_id"))
            answered = self._answered.pop(tx, None)
            if answered is not None:
                self._lag(now - answered)
            else:
                self._pushed[tx] = now
        self.changed.set()

    def _order(self, what: str) -> None:
        self.tally.order_errors += 1
        self.tally.problem(f"ws {self.who}: {what}")

    def _lag(self, seconds: float) -> None:
        self.tally.early += seconds < 0
        if len(self.tally.lags_ms) < MAX_LAGS:
            self.tally.lags_ms.append(max(seconds, 0.0) * 1000)  # a push before the answer: no lag

    def answered(self, tx: str, now: float) -> None:
        """A money call got its definitive success (its push, if already here, gives the lag)."""
        pushed = self._pushed.pop(tx, None)
        if pushed is not None:
            self._lag(pushed - now)
        else:
            self._answered[tx] = now

    # ------------------------------------------------------------------ the check
    def expect(self, balance: int, within_s: float) -> bool:
        """Wait (bounded) until the socket's last balance is ``balance``; a miss is a mismatch."""
        deadline = time.monotonic() + within_s
        while True:
            self.changed.clear()
            if self.balance == balance:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                self.tally.mismatches += 1
                self.tally.problem(f"ws {self.who}: last pushed balance {self.balance}, the provider's last "
                                   f"answer said {balance} (waited {within_s:.0f} s)")
                return False
            self.changed.wait(min(left, 1.0))
        self.tally.rounds_checked += 1
        # a conflated push names only the newest tx: forget the others, so the maps stay small
        self._answered.clear()
        self._pushed.clear()
        return True
