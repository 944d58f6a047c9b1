"""Providers' traffic at tournament peaks, journalled so the run can prove that no money was lost or doubled.

Each Locust user is one provider-side session of one player, speaking the provider's real protocol with
real signatures (the adapters' simulator clients build the calls):

* ``RoundPlayer``: native rounds, bet → win (``GW_WIN_RATIO``) or loss → end round, one new player each.
* ``PragmaticPlayer``: the same rounds over Pragmatic Play (bet → result → endRound); only when
  ``GW_PRAGMATIC_SECRET`` is set.
* ``RetryStorm``: every money call repeated 1-3 times, some copies at the same moment, some after the round.
* ``Rollbacks``: bets rolled back after they landed, and rollbacks that arrive before their bet.
* ``HotPlayer``: every user of this class plays the *same* player: one hot wallet, one hot shard.
* ``SessionWatchers``: native rounds by players holding ``GET /v1/ws``, who count the ``balance`` pushes
  and check after each round that the last one equals the provider's last answer (``loadtests/watch.py``).

As a provider does, a call that got no definitive answer (429/503, ``retryable: true``, Pragmatic 100/120,
a dropped connection) is sent again, byte for byte with the same transaction id, until it gets one. Every
call is journalled (``loadtests/journal.py``) for ``loadtests/check.py``.

Configuration (environment): ``GW_OPERATOR_KEY``, ``GW_PROVIDER`` (native provider id, ``demo``),
``GW_PROVIDER_SECRET``, ``GW_PRAGMATIC_PROVIDER`` (``pragmatic``), ``GW_PRAGMATIC_SECRET``,
``GW_PRAGMATIC_ID`` (``PragmaticPlay``), ``GW_WIN_RATIO`` (0.45), ``GW_LOAD_JOURNAL`` (folder),
``GW_LOAD_RUN`` (player id prefix), ``GW_WS_PUSH_WAIT_S`` (10: the bound on a push's lag),
``GW_LOAD_SHAPE`` (``burst`` | ``steady`` | ``none``: ``-u``/``-t``
as given). ``python -m loadtests.run`` (``make load``) sets all of them.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import time
import uuid
from typing import Any

import gevent
import orjson
from locust import FastHttpUser, between, events, task

from adapters.sim import Call
from adapters.sim.native import NativeClient
from adapters.sim.pragmatic import PragmaticClient
from core.money import format_minor, to_minor
from loadtests import shapes
from loadtests.journal import Answer, Journal, Money, classify
from loadtests.watch import Tally, Watcher

OPERATOR_KEY = os.environ.get("GW_OPERATOR_KEY", "")
PROVIDER = os.environ.get("GW_PROVIDER", "demo")
SECRET = os.environ.get("GW_PROVIDER_SECRET", "")
PRAGMATIC = os.environ.get("GW_PRAGMATIC_PROVIDER", "pragmatic")
PRAGMATIC_SECRET = os.environ.get("GW_PRAGMATIC_SECRET", "")
PRAGMATIC_ID = os.environ.get("GW_PRAGMATIC_ID", "PragmaticPlay")
WIN_RATIO = float(os.environ.get("GW_WIN_RATIO", "0.45"))
JOURNAL_DIR = os.environ.get("GW_LOAD_JOURNAL", "results/journal")
RUN = os.environ.get("GW_LOAD_RUN") or secrets.token_hex(3)
SHAPE = os.environ.get("GW_LOAD_SHAPE", "none")
PUSH_WAIT_S = float(os.environ.get("GW_WS_PUSH_WAIT_S", "10"))
BRAND, CURRENCY = "b1", "EUR"
DEPOSIT = 1_000_000  # 10 000.00 EUR per deposit: rounds are refused for funds only by accident
#: pause between attempts of a call that got a retryable answer (a provider's retry policy)
RETRY_PAUSE_S = (0.05, 0.5)

_journal: Journal | None = None
_tally: tuple[int, Tally] | None = None


def journal() -> Journal:
    """This process's journal (made after a ``--processes`` fork, never shared across processes)."""
    global _journal
    if _journal is None or _journal.path.name != f"journal-{os.getpid()}.jsonl":
        _journal = Journal(JOURNAL_DIR)
    return _journal


def tally() -> Tally:
    """This process's websocket counts (like the journal, never shared across a fork)."""
    global _tally
    if _tally is None or _tally[0] != os.getpid():
        _tally = (os.getpid(), Tally())
    return _tally[1]


@events.init_command_line_parser.add_listener  # type: ignore[untyped-decorator]
def _check_config(parser: object) -> None:
    if not OPERATOR_KEY or not SECRET:
        raise SystemExit("set GW_OPERATOR_KEY and GW_PROVIDER_SECRET (or run `make load`)")


@events.quitting.add_listener  # type: ignore[untyped-decorator]
def _close_journal(**_: Any) -> None:
    if _journal is not None:
        _journal.close()
    if _tally is not None and _tally[0] == os.getpid():
        _tally[1].write(JOURNAL_DIR)


class ProviderUser(FastHttpUser):
    """A provider's connection for one player: setup through the operator API, then signed calls."""

    abstract = True
    wait_time = between(0.0, 0.02)
    proto = "native"
    shared_player: str | None = None

    def on_start(self) -> None:
        self.player_id = self.shared_player or f"ld{RUN}-{uuid.uuid4().hex[:12]}"
        self.keys = {"tenant_id": "t1", "brand_id": BRAND, "license": "MGA", "player_id": self.player_id,
                     "currency": CURRENCY}
        self.auth = {"Authorization": f"Bearer {OPERATOR_KEY}", "Content-Type": "application/json"}
        key = f"ld{RUN}-dep-{uuid.uuid4().hex}"
        body = {**self.keys, "amount": format_minor(DEPOSIT, CURRENCY), "idempotency_key": key}
        deposit = Call("/v1/wallet/deposit", self.auth, orjson.dumps(body))
        self.send(self.money("deposit", key, DEPOSIT, proto="operator", provider="operator"), deposit,
                  "operator deposit")
        self.token = self.open_session()

    # ------------------------------------------------------------------ plumbing
    def money(self, kind: str, tx: str, amount: int = 0, ref: str = "", *, proto: str | None = None,
              provider: str | None = None) -> Money:
        return Money(proto or self.proto, provider or self.provider_id, kind, BRAND, self.player_id, CURRENCY,
                     tx, amount, ref)

    @property
    def provider_id(self) -> str:
        return PROVIDER

    def attempt(self, call: Call, name: str, proto: str) -> tuple[Answer, str, bytes]:
        """One try; Locust counts a retryable answer as a failure, a definitive one (refusals too) as a success."""
        with self.client.post(call.path, data=call.body, headers=call.headers, name=name,  # type: ignore[arg-type]
                              catch_response=True) as resp:
            body = resp.content or b""
            answer, code = classify(proto, resp.status_code or 0, body)
            if answer is Answer.RETRY:
                resp.failure(f"retryable: {code}")
            else:
                resp.success()
        return answer, code, body

    def setup_call(self, call: Call, name: str, proto: str) -> dict[str, Any]:
        """A call that moves no money (launch, authenticate), retried while the answer is retryable."""
        for _ in range(50):
            answer, code, body = self.attempt(call, name, proto)
            if answer is Answer.OK:
                return dict(orjson.loads(body))
            if answer is Answer.REFUSED:
                break
            time.sleep(random.uniform(*RETRY_PAUSE_S))
        raise RuntimeError(f"{name} failed for {self.player_id}: {code}")

    def open_session(self) -> str:
        launch = self.setup_call(Call("/v1/sessions", self.auth, orjson.dumps({**self.keys,
                                                                                "provider_id": self.provider_id})),
                                 "operator session", "operator")
        answer = self.setup_call(NativeClient(PROVIDER, SECRET).authenticate(launch["launch_token"]),
                                 "native authenticate", "native")
        return str(answer["session_token"])

    def send(self, money: Money, call: Call, name: str, rec_id: str | None = None) -> Answer:
        """Send until definitive; journal it. ``rec_id``: a repeat of an already journalled call."""
        j = journal()
        rec = rec_id or j.sent(money, call)
        while True:
            answer, code, body = self.attempt(call, name, money.proto)
            if answer is not Answer.RETRY:
                j.done(rec, answer, code)
                self.answered(money, answer, body)
                return answer
            time.sleep(random.uniform(*RETRY_PAUSE_S))

    def answered(self, money: Money, answer: Answer, body: bytes) -> None:
        """A definitive answer arrived (a hook for the websocket watchers)."""

    # ------------------------------------------------------------------ a native round
    def amounts(self) -> tuple[int, int | None]:
        bet = random.randint(10, 500)
        return bet, (random.randint(0, 3 * bet) if random.random() < WIN_RATIO else None)

    def native_round(self, send: Any = None) -> None:
        send = send or self.send
        native = NativeClient(PROVIDER, SECRET)
        rid = f"ld{RUN}-{uuid.uuid4().hex[:16]}"
        bet, win = self.amounts()
        answer = send(self.money("bet", f"b-{rid}", bet),
                      native.bet(self.token, f"b-{rid}", rid, format_minor(bet, CURRENCY), CURRENCY), "native bet")
        if answer is not Answer.OK:
            return
        if win is not None:
            send(self.money("win", f"w-{rid}", win),
                 native.win(self.token, f"w-{rid}", rid, format_minor(win, CURRENCY), CURRENCY,
                            bet_transaction_id=f"b-{rid}", round_closed=True), "native win")
        else:
            send(self.money("end", f"e-{rid}"), native.end_round(self.token, rid, transaction_id=f"e-{rid}"),
                 "native end-round")


class RoundPlayer(ProviderUser):
    weight = 6

    @task
    def round(self) -> None:
        self.native_round()


class PragmaticPlayer(ProviderUser):
    weight = 2
    abstract = not PRAGMATIC_SECRET
    proto = "pragmatic"

    @property
    def provider_id(self) -> str:
        return PRAGMATIC

    def open_session(self) -> str:
        self.pp = PragmaticClient(PRAGMATIC_SECRET, provider_id=PRAGMATIC_ID, base_path=f"/v1/providers/{PRAGMATIC}")
        launch = self.setup_call(Call("/v1/sessions", self.auth, orjson.dumps({**self.keys,
                                                                                "provider_id": PRAGMATIC})),
                                 "operator session", "operator")
        return str(self.setup_call(self.pp.authenticate(launch["launch_token"]), "pragmatic authenticate",
                                   "pragmatic")["token"])

    @task
    def round(self) -> None:
        rid = self.pp.new_round()
        bet, win = self.amounts()
        ref = self.pp.new_reference()
        call = self.pp.bet(self.player_id, token=self.token, round_id=rid, amount=bet, currency=CURRENCY,
                           reference=ref)
        if self.send(self.money("bet", f"bet:{ref}", bet), call, "pragmatic bet") is not Answer.OK:
            return
        wref = self.pp.new_reference()
        self.send(self.money("win", f"result:{wref}", win or 0),
                  self.pp.result(self.player_id, token=self.token, round_id=rid, amount=win or 0,
                                 currency=CURRENCY, reference=wref), "pragmatic result")
        self.send(self.money("end", f"endRound:{rid}"),
                  self.pp.end_round(self.player_id, round_id=rid, token=self.token), "pragmatic endRound")


class RetryStorm(ProviderUser):
    """Each call 1-3 times: copies in parallel with the first, or again after the round is over."""

    weight = 2

    def storm_send(self, money: Money, call: Call, name: str) -> Answer:
        copies = random.randint(0, 2)
        mode = random.choice(("parallel", "late"))
        if copies and mode == "parallel":
            rec = journal().sent(money, call)
            jobs = [gevent.spawn(self.send, money, call, f"{name} (parallel copy)", rec) for _ in range(copies)]
            answer = self.send(money, call, name, rec)
            gevent.joinall(jobs, timeout=30)
            return answer
        answer = self.send(money, call, name)
        self.late.extend([(money, call, name)] * copies)
        return answer

    @task
    def round(self) -> None:
        self.late: list[tuple[Money, Call, str]] = []
        self.native_round(self.storm_send)
        for money, call, name in self.late:
            self.send(money, call, f"{name} (late copy)")


class Rollbacks(ProviderUser):
    """A bet rolled back after it landed, or a rollback that overtakes its bet (which is then refused)."""

    weight = 1

    @task
    def round(self) -> None:
        native = NativeClient(PROVIDER, SECRET)
        rid = f"ld{RUN}-{uuid.uuid4().hex[:16]}"
        bet = random.randint(10, 500)
        bet_call = (self.money("bet", f"b-{rid}", bet),
                    native.bet(self.token, f"b-{rid}", rid, format_minor(bet, CURRENCY), CURRENCY), "native bet")
        rollback = (self.money("rollback", f"r-{rid}", 0, ref=f"b-{rid}"),
                    native.rollback(self.token, f"r-{rid}", f"b-{rid}", round_id=rid, round_closed=True),
                    "native rollback")
        first, second = (bet_call, rollback) if random.random() < 0.5 else (rollback, bet_call)
        self.send(*first)
        self.send(*second)


class HotPlayer(ProviderUser):
    """All of these users play one player, several rounds at once each: its limits, row and shard are hot."""

    weight = 1
    shared_player = f"ld{RUN}-hot"
    parallel_rounds = 4

    @task
    def round(self) -> None:
        gevent.joinall([gevent.spawn(self.native_round) for _ in range(self.parallel_rounds)], timeout=60)


class SessionWatchers(ProviderUser):
    """Players holding the websocket while they play native rounds: each balance push is counted, and
    after each round the last one pushed must equal the balance of the provider's last definitive answer
    (waiting for it at most ``GW_WS_PUSH_WAIT_S``; a miss fails the run in the reconciliation)."""

    weight = 1
    wait_time = between(0.1, 0.5)

    def on_start(self) -> None:
        self.watcher: Watcher | None = None
        self.expected: int | None = None
        super().on_start()
        url = f"{(self.host or '').replace('http', 'ws', 1)}/v1/ws?provider={PROVIDER}&token={self.token}"
        watcher = Watcher(url, tally(), self.player_id)
        started = time.perf_counter()
        error: Exception | None = None
        try:
            watcher.open()
            self.watcher = watcher
        except Exception as exc:  # refused (503 at the socket cap) or unreachable: counted, the user idles
            error = exc
        self.environment.events.request.fire(request_type="WS", name="ws connect", response_length=0,
                                             response_time=(time.perf_counter() - started) * 1000,
                                             exception=error, context={})

    def on_stop(self) -> None:
        if self.watcher is not None:
            self.watcher.close()

    def answered(self, money: Money, answer: Answer, body: bytes) -> None:
        if self.watcher is None:
            return
        if answer is Answer.OK:
            self.watcher.answered(money.tx, time.monotonic())
        with contextlib.suppress(orjson.JSONDecodeError, ValueError, TypeError, KeyError):
            self.expected = to_minor(str(orjson.loads(body)["balance"]), CURRENCY)

    @task
    def round(self) -> None:
        if self.watcher is None:
            return
        self.expected = None
        self.native_round()
        if self.expected is not None:
            self.watcher.expect(self.expected, PUSH_WAIT_S)


if SHAPE == "burst":
    class LoadShape(shapes.TournamentBurst):
        abstract = False
elif SHAPE == "steady":
    class LoadShape(shapes.Steady):  # type: ignore[no-redef]
        abstract = False
