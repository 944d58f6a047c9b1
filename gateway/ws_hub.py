"""The player websocket's per-process hub: sockets by player, fed by the committed-event stream.

Fan-out: a gateway process holding sockets has ONE JetStream ordered consumer on ``<prefix>events.>``
(dropped a minute after its last socket closes) and routes every committed event in-process to the
sockets of its player (a dict lookup; events of players with no socket here end there). Any replica
therefore serves any player, a commit reaches every replica once, and the cost is one decode per event
per process, not per socket. The event's stream sequence travels with each push as ``cursor``: it is
global, so a client that reconnects to another replica resumes from JetStream itself (``resume``),
not from a replica's memory.

Memory per connection is bounded: outgoing messages wait in a queue of at most ``ws_queue_max``
entries where a newer ``balance`` replaces a queued one (conflation); a client whose queue is full, or
whose send stalls for ``ws_send_timeout_s``, has its connection dropped (a close frame could not reach
it anyway). The transport's write buffer and the kernel send buffer are capped by
``ws_send_buffer_bytes``. Idle sockets own no task: a writer task exists only while a queue is
non-empty, and one ticker per process runs the due reality checks and session-time ends from a heap
of weak references, and visits the sockets only when a degradation mode changes.
"""
from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import random
import time
import weakref
from typing import Any

import nats.errors
import nats.js.errors
import orjson
from aiohttp import web
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from core.records import PlayerSession
from core.settings import Settings
from gateway.degradation import BETS_PAUSED, NO_NEW_SESSIONS, NORMAL, Degradation
from gateway.state import GatewayState
from ledger import transport
from ledger.rules import subject_token

log = logging.getLogger(__name__)

CLOSE_SESSION_TIME = 4002
#: a process whose last socket closed this long ago stops receiving the event feed
FEED_IDLE_S = 60.0
BALANCE_TYPES = frozenset({"wallet.debited", "wallet.credited"})
ROUND_TYPES = frozenset({"bet.placed", "bet.settled", "bet.rolled_back", "round.closed"})
_SEVERITY = {NORMAL: 0, NO_NEW_SESSIONS: 1, BETS_PAUSED: 2}

PlayerKey = tuple[str, str, str]  # tenant, brand, player


def message_for(event: dict[str, Any], cursor: int) -> dict[str, Any] | None:
    """The push a committed event becomes (``None``: nothing to tell the player)."""
    etype = event.get("type")
    if etype in BALANCE_TYPES:
        sign = -1 if etype == "wallet.debited" else 1
        return {"type": "balance", "balance": event["balance"], "currency": event["currency"],
                "change": sign * event["amount"], "tx_id": event["tx_id"], "event": event["id"], "cursor": cursor}
    if etype in ROUND_TYPES:
        return {"type": "round", "event": etype, "round_id": event["round_id"], "tx_id": event["tx_id"],
                "provider_id": event["provider_id"], "amount": event["amount"], "balance": event["balance"],
                "currency": event["currency"], "cursor": cursor}
    if etype == "rg.limit_reached":
        return {"type": "rg", "kind": "limit_reached", "limit": event["limit"], "amount": event["amount"],
                "currency": event["currency"], "cursor": cursor}
    return None


def mode_for(d: Degradation, provider_id: str, brand_id: str) -> str:
    """The strongest degradation mode over the scopes a session lives in."""
    found = (d.mode_of("global"), d.mode_of(f"provider:{provider_id}"), d.mode_of(f"brand:{brand_id}"))
    return max(found, key=_SEVERITY.__getitem__)


class Conn:
    """One socket: its session, its bounded outgoing queue and the state of its timers."""

    __slots__ = ("__weakref__", "_balance", "closed", "flusher", "hub", "key", "last_cursor", "mode",
                 "next_reality_ms", "pending", "queue", "resuming", "seq", "session", "session_end_ms", "transport",
                 "ws")

    def __init__(self, hub: Hub, ws: web.WebSocketResponse, session: PlayerSession, transport: Any) -> None:
        self.hub = hub
        self.ws = ws
        self.session = session
        self.transport = transport
        self.key: PlayerKey = (session.tenant_id, session.brand_id, session.player_id)
        self.seq = 0
        #: a list, not a deque: 56 bytes empty instead of ~600, and it never holds more than ws_queue_max
        self.queue: list[dict[str, Any]] = []
        self._balance: dict[str, Any] | None = None  # the queued, not yet sent, balance message
        self.flusher: asyncio.Task[None] | None = None
        self.closed = False
        #: while a resume replays from JetStream, live pushes wait here (same bound as the queue)
        self.resuming = True
        self.pending: list[dict[str, Any]] = []
        self.last_cursor = 0
        self.mode = NORMAL
        self.next_reality_ms = 0
        self.session_end_ms = 0

    def push(self, msg: dict[str, Any], *, live: bool = False) -> None:
        """Queue a message (never blocks); conflates balances, disconnects a client that stays behind."""
        if self.closed:
            return
        if live and self.resuming:
            if len(self.pending) >= self.hub.settings.ws_queue_max:
                self.hub.slow(self)
                return
            self.pending.append(msg)
            return
        old = self._balance
        if msg["type"] == "balance" and old is not None and old["currency"] == msg["currency"]:
            # the newest balance replaces the unsent one, at the end: the client never sees a state older
            # than a message it already has, and a backlog of balances costs one slot
            self.queue.remove(old)
            msg["change"] += old["change"]
            msg["conflated"] = True
            self.hub.conflated += 1
        elif len(self.queue) >= self.hub.settings.ws_queue_max:
            self.hub.slow(self)
            return
        self.queue.append(msg)
        if msg["type"] == "balance":
            self._balance = msg
        self.hub.high_water = max(self.hub.high_water, len(self.queue))
        if self.flusher is None:
            self.flusher = asyncio.create_task(self._flush())

    def deliver(self, msg: dict[str, Any]) -> None:
        """A live event push: skips what a resume already replayed."""
        cursor = msg.get("cursor", 0)
        if self.resuming:
            self.push(msg, live=True)
            return
        if cursor and cursor <= self.last_cursor:
            return
        self.push(msg)
        self.last_cursor = max(self.last_cursor, cursor)

    def end_resume(self, replayed_to: int) -> None:
        self.resuming = False
        self.last_cursor = max(self.last_cursor, replayed_to)
        pending, self.pending = self.pending, []
        for msg in pending:
            self.deliver(msg)

    async def _flush(self) -> None:
        timeout = self.hub.settings.ws_send_timeout_s
        try:
            while self.queue and not self.closed:
                msg = self.queue.pop(0)
                if msg is self._balance:
                    self._balance = None
                self.seq += 1
                msg["seq"] = self.seq
                async with asyncio.timeout(timeout):
                    await self.ws.send_str(orjson.dumps(msg).decode())
                self.hub.sent += 1
        except TimeoutError:
            self.hub.slow(self)
        except (ConnectionError, RuntimeError) as exc:  # peer gone mid-send: the read loop ends the socket
            log.debug("ws send to %s failed: %s", self.key, exc)
            self.closed = True
        except Exception:
            log.exception("ws: send to %s failed; closing the socket", self.key)
            self.abort()
        finally:
            self.flusher = None

    async def drained(self, within_s: float) -> None:
        """Wait (bounded) until everything queued has been handed to the transport."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within_s):
                while self.flusher is not None and not self.closed:
                    await asyncio.wait({self.flusher})

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class Hub:
    """Per-process registry of sockets by player, fed by one ordered consumer on the event stream."""

    def __init__(self, state: GatewayState) -> None:
        self.state = state
        self.settings: Settings = state.settings
        self.by_player: dict[PlayerKey, list[Conn]] = {}
        self.count = 0
        self.cursor = 0  # stream sequence of the newest event seen
        self.sent = self.conflated = self.slow_disconnects = self.high_water = 0
        self.closing = False
        self.live = asyncio.Event()  # set while the event feed is subscribed
        self._wanted = asyncio.Event()  # set while sockets exist (or did within FEED_IDLE_S)
        self._idle_since = 0.0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._degradation_changes = -1
        self._timers: list[tuple[int, int, str, weakref.ref[Conn]]] = []
        self._timer_seq = itertools.count()

    # ------------------------------------------------------------------ lifecycle
    async def prime(self) -> None:
        """Pin the feed's start to the stream's tip before the first socket's balance is read: however
        long the subscription then takes, no event committed after that read is missed."""
        if self.cursor:
            return
        try:
            async with asyncio.timeout(5):
                self.cursor = (await self.state.nc.jetstream().stream_info(self._stream())).state.last_seq
        except Exception as exc:
            log.warning("ws: cannot read the event stream's position yet (%s); starting from its tip later", exc)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._consume(), name="ws-events"),
                       asyncio.create_task(self._ticker(), name="ws-ticker")]

    async def stop(self) -> None:
        self._stop.set()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def shutdown(self, drain_s: float) -> None:
        """Every socket gets ``bye`` (with a jittered reconnect hint) and is closed within ``drain_s``."""
        self.closing = True
        conns = [c for cs in self.by_player.values() for c in cs]
        jitter = self.settings.ws_reconnect_jitter_ms
        for c in conns:
            c.resuming = False
            c.push({"type": "bye", "reason": "draining", "reconnect_after_ms": random.randint(0, jitter)})

        async def close(c: Conn) -> None:
            await c.drained(drain_s)
            with contextlib.suppress(Exception):
                await c.ws.close(code=1001, message=b"draining")

        if conns:
            _, not_done = await asyncio.wait([asyncio.create_task(close(c)) for c in conns], timeout=drain_s)
            for t in not_done:
                t.cancel()
            for c in conns:
                if not c.ws.closed:
                    c.abort()

    # ------------------------------------------------------------------ registry
    def add(self, conn: Conn) -> None:
        self.by_player.setdefault(conn.key, []).append(conn)
        self.count += 1
        self._wanted.set()

    def remove(self, conn: Conn) -> None:
        conn.closed = True
        conns = self.by_player.get(conn.key)
        if conns and conn in conns:
            conns.remove(conn)
            self.count -= 1
            if not conns:
                del self.by_player[conn.key]
            if not self.count:
                self._idle_since = time.monotonic()

    def slow(self, conn: Conn) -> None:
        """A client that does not keep up is cut off: its memory stays bounded, it resumes on reconnect."""
        if conn.closed:
            return
        self.slow_disconnects += 1
        log.info("ws: disconnecting slow client %s (queue %d)", conn.key, len(conn.queue))
        conn.queue.clear()
        conn.pending.clear()
        conn.abort()

    # ------------------------------------------------------------------ live events
    def _subject(self) -> str:
        return f"{transport.subject_prefix(self.settings)}events.>"

    def _stream(self) -> str:
        return transport.stream_name(self.settings, self.settings.events_stream_name)

    async def _consume(self) -> None:
        """Keep one ordered consumer subscribed while this process holds sockets; resubscribe with
        backoff after any failure. A process without sockets (e.g. one serving only providers) drops
        the feed after FEED_IDLE_S and so pays nothing per event."""
        js = self.state.nc.jetstream()
        delay = 0.2
        while not self._stop.is_set():
            await self._wanted.wait()
            try:
                # from where this process left off (or the tip pinned before the first hello): a
                # resubscription after a failure loses nothing
                if not self.cursor:
                    self.cursor = (await js.stream_info(self._stream())).state.last_seq
                cfg = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=self.cursor + 1)
                sub = await js.subscribe(self._subject(), stream=self._stream(), cb=self._on_msg,
                                         ordered_consumer=True, config=cfg, pending_msgs_limit=100_000)
                delay = 0.2
                self.live.set()
                try:
                    while not self._stop.is_set():
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(FEED_IDLE_S / 4):
                                await self._stop.wait()
                        if not self.count and time.monotonic() - self._idle_since >= FEED_IDLE_S:
                            self._wanted.clear()
                            self.cursor = 0  # the next first socket starts from the tip again
                            break
                finally:
                    self.live.clear()
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("ws: event subscription failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _on_msg(self, msg: Msg) -> None:
        try:
            cursor = msg.metadata.sequence.stream
            self.cursor = max(self.cursor, cursor)
            event = orjson.loads(msg.data)
            conns = self.by_player.get((event["tenant_id"], event["brand_id"], event["player_id"]))
            if not conns:
                return
            out = message_for(event, cursor)
            if out is None:
                return
            for c in list(conns):
                c.deliver(dict(out))
                if out["type"] == "rg" and out["limit"] == "session_limit":
                    self._end_session(c)
        except Exception:  # one bad event must not stop the fan-out
            log.exception("ws: could not route event on %s", msg.subject)

    # ------------------------------------------------------------------ resume
    async def replay(self, conn: Conn, after: int) -> tuple[int, int, bool]:
        """Push this player's events with stream sequence > ``after``; (replayed, last cursor, complete)."""
        s = conn.session
        subject = (f"{transport.subject_prefix(self.settings)}events.{subject_token(s.tenant_id)}."
                   f"{subject_token(s.brand_id)}.>")
        js = self.state.nc.jetstream()
        cfg = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after + 1)
        limit = self.settings.ws_resume_max_events
        scanned = replayed = 0
        last = after
        complete = True
        try:
            first = (await js.stream_info(self._stream())).state.first_seq
            if after and after + 1 < first:
                complete = False  # the stream no longer holds what came right after the cursor
            sub = await js.subscribe(subject, stream=self._stream(), config=cfg, ordered_consumer=True)
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            log.warning("ws: resume for %s failed: %s", conn.key, exc)
            return 0, after, False
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=1.0)
                except nats.errors.TimeoutError:
                    break  # nothing (more) stored after the cursor
                meta = msg.metadata
                last = meta.sequence.stream
                scanned += 1
                event = orjson.loads(msg.data)
                if (event["tenant_id"], event["brand_id"], event["player_id"]) == conn.key:
                    out = message_for(event, last)
                    if out is not None:
                        out["replay"] = True
                        if len(conn.queue) >= self.settings.ws_queue_max // 2:
                            await conn.drained(self.settings.ws_send_timeout_s)  # a replay paces itself
                        conn.push(out)
                        replayed += 1
                if meta.num_pending == 0:
                    break
                if scanned >= limit:
                    complete = False
                    break
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        return replayed, last, complete

    # ------------------------------------------------------------------ timers
    async def _ticker(self) -> None:
        period = self.settings.ws_tick_ms / 1000
        while not self._stop.is_set():
            await asyncio.sleep(period)
            try:
                self.tick(int(time.time() * 1000))
            except Exception:
                log.exception("ws: ticker failed; continuing")

    def tick(self, now_ms: int) -> None:
        """Due timers only (a heap), and every socket only when a degradation mode changed."""
        d = self.state.degradation
        if d.changes != self._degradation_changes:
            self._degradation_changes = d.changes
            modes: dict[tuple[str, str], str] = {}
            for conns in list(self.by_player.values()):
                for c in list(conns):
                    k = (c.session.provider_id, c.session.brand_id)
                    mode = modes.get(k)
                    if mode is None:
                        mode = modes[k] = mode_for(d, *k)
                    if mode != c.mode:
                        c.push({"type": "degraded", "mode": mode, "previous": c.mode,
                                "state": "left" if mode == NORMAL else "entered"})
                        c.mode = mode
        every_ms = self.settings.ws_reality_check_min * 60_000
        timers = self._timers
        while timers and timers[0][0] <= now_ms:
            _, _, kind, ref = heapq.heappop(timers)
            conn = ref()
            if conn is None or conn.closed:
                continue  # weak references: a closed socket's timers keep nothing alive
            if kind == "reality" and every_ms:
                conn.push({"type": "rg", "kind": "reality_check",
                           "session_minutes": (now_ms - (conn.session.started_ms or now_ms)) // 60_000})
                self.schedule(conn, now_ms + every_ms, "reality")
            elif kind == "session_end":
                self._end_session(conn)

    def schedule(self, conn: Conn, due_ms: int, kind: str) -> None:
        if kind == "reality":
            conn.next_reality_ms = due_ms
        heapq.heappush(self._timers, (due_ms, next(self._timer_seq), kind, weakref.ref(conn)))

    def _end_session(self, c: Conn) -> None:
        if c.closed or c.session_end_ms < 0:
            return
        c.session_end_ms = -1
        c.resuming = False
        c.push({"type": "rg", "kind": "session_time_ended"})

        async def close() -> None:
            await c.drained(self.settings.ws_send_timeout_s)
            with contextlib.suppress(Exception):
                await c.ws.close(code=CLOSE_SESSION_TIME, message=b"session time limit reached")

        asyncio.get_running_loop().create_task(close())
