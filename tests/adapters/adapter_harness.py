"""The in-memory wallet and the HTTP harness the adapter tests run on (fixtures are in ``conftest.py``).

``FakeWallet`` implements ``WalletPort`` with the ledger's semantics (``ledger.rules.Engine``) kept
deliberately simple (balances, idempotency by (brand, provider, tx id) with a request-hash conflict,
tombstones, bet/round linkage and ownership, single settlement, end of round) and can be told to fail
(retryable errors before or after the command was applied) or to refuse bets for responsible gaming. It
proves the adapters answer each ledger outcome correctly, not that the ledger computes them; the same tests
run against the real ledger (``real_backend.py``), which is the truth where the two could differ. As in the
ledger, every outcome is final under its idempotency key, refusals included: a retry answers it again.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import json
import secrets
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.base import Adapter
from adapters.sim import Call
from core.commands import Command, Kind, Result, Status
from core.errors import GatewayError, InvalidToken, TokenExpired
from core.records import PlayerSession, ProviderConfig
from gateway.sessions import pick_profile
from gateway.wallet import new_command

BRAND = "brand-a"


# --- the fake wallet ------------------------------------------------------------------------------
@dataclass
class _Bet:
    amount: int
    round_key: tuple[str, str, str, str]
    player: str
    state: str = "open"  # open | settled | rolled_back


@dataclass
class _Round:
    """One player's part of a round (live tables share a round id among every player seated)."""

    bets: list[tuple[str, str, str]] = field(default_factory=list)
    closed: bool = False


@dataclass
class _Failure:
    exc: GatewayError
    after_apply: bool
    kinds: frozenset[Kind] | None


class FakeWallet:
    def __init__(self) -> None:
        self.sessions: dict[tuple[str, str], PlayerSession] = {}
        self.expired: set[tuple[str, str]] = set()
        self.launch: dict[tuple[str, str], PlayerSession] = {}
        self.profiles: dict[tuple[str, str], dict[str, PlayerSession]] = {}  # (provider, player): by brand
        self.balances: dict[tuple[str, str, str], int] = {}
        self.records: dict[tuple[str, str, str], tuple[str, Result]] = {}
        self.bets: dict[tuple[str, str, str], _Bet] = {}
        self.tombstones: set[tuple[str, str, str]] = set()
        self.rounds: dict[tuple[str, str, str, str], _Round] = {}
        self.failures: list[_Failure] = []
        self.refusals: dict[str, Status] = {}
        self.executed: list[Command] = []
        self._next_tx = 1000

    # --- test hooks (a real backend offers the same, async) ----------------------------------------
    async def add_player(self, provider_id: str, *, balance: int = 100_00, currency: str = "EUR",
                         player_id: str | None = None, brand: str = BRAND,
                         beside: PlayerSession | None = None) -> PlayerSession:
        """A funded player with a live session token at ``provider_id`` (``beside``: on the same ledger
        shard as that player; this wallet has one)."""
        session = PlayerSession(
            token=secrets.token_hex(12), provider_id=provider_id, tenant_id="tenant-1", brand_id=brand,
            license="MGA", player_id=player_id or f"p{secrets.token_hex(5)}", currency=currency,
            country="MT", game_id="", started_ms=1_700_000_000_000, expires_ms=1_700_000_900_000,
        )
        self.sessions[(provider_id, session.token)] = session
        self.profiles.setdefault((provider_id, session.player_id), {})[brand] = session
        self.balances[(brand, session.player_id, currency)] = balance
        return session

    async def add_launch_token(self, session: PlayerSession) -> str:
        token = f"launch-{secrets.token_hex(8)}"
        self.launch[(session.provider_id, token)] = session
        return token

    async def expire(self, session: PlayerSession) -> None:
        self.expired.add((session.provider_id, session.token))

    async def fail_next(self, exc: GatewayError, *, after_apply: bool = False,
                        kinds: Iterable[Kind] | None = None) -> None:
        """The next matching ``execute`` raises ``exc`` (after committing, with ``after_apply``)."""
        self.failures.append(_Failure(exc, after_apply, frozenset(kinds) if kinds else None))

    async def refuse_bets(self, player_id: str, status: Status) -> None:
        self.refusals[player_id] = status

    @contextlib.asynccontextmanager
    async def mounted(self, config: ProviderConfig, sim: Any) -> AsyncIterator[Provider]:
        """``config``'s adapter on this wallet, mounted as the gateway mounts it, for the duration."""
        from gateway.providers import adapter_class

        http = await mount(adapter_class(config.protocol)(config, self))
        try:
            yield Provider(http, sim, config, f"/v1/providers/{config.id}")
        finally:
            await http.close()

    # --- WalletPort ---------------------------------------------------------------------------------
    async def open_session(self, provider_id: str, launch_token: str) -> PlayerSession:
        template = self.launch.pop((provider_id, launch_token), None)
        if template is None:
            raise InvalidToken()
        session = replace(template, token=secrets.token_hex(12))
        self.sessions[(provider_id, session.token)] = session
        return session

    async def session(self, provider_id: str, token: str, *, allow_expired: bool = False) -> PlayerSession:
        session = self.sessions.get((provider_id, token))
        if session is None:
            raise InvalidToken()
        if (provider_id, token) in self.expired and not allow_expired:
            raise TokenExpired()
        return session

    async def rotate_session(self, session: PlayerSession) -> PlayerSession:
        del self.sessions[(session.provider_id, session.token)]
        fresh = replace(session, token=secrets.token_hex(12))
        self.sessions[(fresh.provider_id, fresh.token)] = fresh
        return fresh

    async def profile(self, provider_id: str, player_id: str, brands: Sequence[str] = ()) -> PlayerSession:
        return pick_profile(self.profiles.get((provider_id, player_id), {}), brands)

    async def balance(self, session: PlayerSession) -> int:
        return self.balances.get((session.brand_id, session.player_id, session.currency), 0)

    def command(self, session: PlayerSession, kind: Kind, *, tx_id: str, round_id: str, amount: int = 0,
                traceparent: str | None = None, **extra: Any) -> Command:
        return new_command(session, kind, tx_id=tx_id, round_id=round_id, amount=amount,
                           traceparent=traceparent, **extra)

    async def execute(self, command: Command) -> Result:
        self.executed.append(command)
        failure = next((f for f in self.failures if f.kinds is None or command.kind in f.kinds), None)
        if failure is not None:
            self.failures.remove(failure)
            if not failure.after_apply:
                raise failure.exc
        result = self._apply(command)
        if failure is not None:
            raise failure.exc
        return result

    # --- the ledger's semantics, simply -------------------------------------------------------------
    def _apply(self, cmd: Command) -> Result:
        key = (cmd.brand_id, cmd.provider_id, cmd.tx_id)
        wallet = (cmd.brand_id, cmd.player_id, cmd.currency)
        digest = cmd.request_hash()
        if key in self.records:
            first_digest, first = self.records[key]
            if first_digest != digest:
                return Result(cmd.cmd_id, Status.CONFLICT, self.balances.get(wallet, 0), cmd.currency)
            return replace(first, cmd_id=cmd.cmd_id, balance=self.balances.get(wallet, 0), duplicate=True)
        status = {Kind.BET: self._bet, Kind.WIN: self._win, Kind.ROLLBACK: self._rollback,
                  Kind.END_ROUND: self._end_round}[cmd.kind](cmd, key, wallet)
        self._next_tx += 1
        result = Result(cmd.cmd_id, status, self.balances.get(wallet, 0), cmd.currency, self._next_tx)
        self.records[key] = (digest, result)  # final, refusals included
        return result

    def _round(self, cmd: Command) -> tuple[str, str, str, str]:
        return (cmd.brand_id, cmd.provider_id, cmd.round_id, cmd.player_id)

    def _bet(self, cmd: Command, key: tuple[str, str, str], wallet: tuple[str, str, str]) -> Status:
        if key in self.tombstones:
            return Status.TX_ROLLED_BACK
        rnd = self.rounds.get(self._round(cmd))
        if rnd is not None and rnd.closed:
            return Status.ROUND_CLOSED
        if cmd.player_id in self.refusals:
            return self.refusals[cmd.player_id]
        stake = 0 if cmd.free_round else cmd.amount
        if stake > self.balances.get(wallet, 0):
            return Status.INSUFFICIENT_FUNDS
        self.balances[wallet] = self.balances.get(wallet, 0) - stake
        rnd = self.rounds.setdefault(self._round(cmd), _Round())
        rnd.bets.append(key)
        self.bets[key] = _Bet(stake, self._round(cmd), cmd.player_id)
        if cmd.round_closed:
            rnd.closed = True
        return Status.OK

    def _round_state(self, round_key: tuple[str, str, str, str]) -> Status | None:
        rnd = self.rounds.get(round_key)
        if rnd is None or not rnd.bets:
            return Status.ROUND_NOT_FOUND
        if all(self.bets[b].state == "rolled_back" for b in rnd.bets):
            return Status.TX_ROLLED_BACK
        return None

    def _win(self, cmd: Command, key: tuple[str, str, str], wallet: tuple[str, str, str]) -> Status:
        round_key = self._round(cmd)
        bet: _Bet | None = None
        if cmd.ref_tx_id is not None:
            ref = (cmd.brand_id, cmd.provider_id, cmd.ref_tx_id)
            bet = self.bets.get(ref)
            if bet is None:
                if ref in self.tombstones:
                    return Status.TX_ROLLED_BACK
                if not cmd.free_round:  # a free-round win needs no bet
                    return Status.BET_NOT_FOUND
            elif bet.state == "rolled_back":
                return Status.TX_ROLLED_BACK
            elif bet.state == "settled" and cmd.single_settlement:
                return Status.BET_ALREADY_SETTLED
            if bet is not None:
                round_key = bet.round_key
        elif cmd.credit_type == "win" and not cmd.free_round:
            # a plain win settles a round's bets; bonus, jackpot, promo and adjustment credits need none
            refusal = self._round_state(round_key)
            if refusal is not None:
                return refusal
        if bet is not None and bet.player != cmd.player_id:
            return Status.BET_NOT_FOUND
        self.balances[wallet] = self.balances.get(wallet, 0) + cmd.amount
        rnd = self.rounds.setdefault(round_key, _Round())
        if bet is not None and bet.state == "open":
            bet.state = "settled"
        if cmd.round_closed:
            rnd.closed = True
        return Status.OK

    def _rollback(self, cmd: Command, key: tuple[str, str, str], wallet: tuple[str, str, str]) -> Status:
        assert cmd.ref_tx_id is not None
        ref = (cmd.brand_id, cmd.provider_id, cmd.ref_tx_id)
        bet = self.bets.get(ref)
        if bet is None:
            if ref in self.tombstones:
                return Status.ALREADY_ROLLED_BACK
            self.tombstones.add(ref)
            return Status.TOMBSTONED
        if bet.player != cmd.player_id:
            return Status.BET_NOT_FOUND
        if bet.state == "rolled_back":
            return Status.BET_ALREADY_SETTLED if cmd.single_settlement else Status.ALREADY_ROLLED_BACK
        if bet.state == "settled":
            return Status.BET_ALREADY_SETTLED  # nothing left to undo
        self.balances[wallet] = self.balances.get(wallet, 0) + bet.amount
        bet.state = "rolled_back"
        rnd = self.rounds.get(bet.round_key)
        if rnd is not None and cmd.round_closed:
            rnd.closed = True
        return Status.OK

    def _end_round(self, cmd: Command, key: tuple[str, str, str], wallet: tuple[str, str, str]) -> Status:
        # ending a round never seen (or whose bets were all rolled back) closes it all the same
        self.rounds.setdefault(self._round(cmd), _Round()).closed = True
        return Status.OK


# --- HTTP harness ---------------------------------------------------------------------------------
@dataclass
class Reply:
    status: int
    body: bytes

    @property
    def json(self) -> Any:
        """The answer with every non-integer number as the ``Decimal`` of its exact text."""
        return json.loads(self.body, parse_float=Decimal)


@dataclass
class Provider:
    """One mounted provider: ``send`` a simulator ``Call`` and read the ``Reply``.

    ``http`` is a ``TestClient`` of the mounted adapter (``url`` empty) or, for a real gateway, an
    ``aiohttp.ClientSession`` and ``url`` the gateway's root URL.
    """

    http: Any
    sim: Any
    config: ProviderConfig
    base: str
    url: str = ""

    async def send(self, call: Call) -> Reply:
        # aiohttp warns about raw bytes over 1 MiB (they are written in one go); a file object is streamed
        data = io.BytesIO(call.body) if len(call.body) > 1024 * 1024 else call.body
        async with self.http.post(self.url + call.path, headers=call.headers, data=data) as resp:
            return Reply(resp.status, await resp.read())

    async def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> Reply:
        return await self.send(Call(self.base + path, headers or {}, body))


def networks(*cidrs: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


async def mount(adapter: Adapter) -> TestClient[web.Request, web.Application]:
    """The adapter's routes as the gateway mounts them: a sub-app at ``/v1/providers/<id>``."""
    app, sub = web.Application(), web.Application()
    sub.add_routes(adapter.routes())
    app.add_subapp(f"/v1/providers/{adapter.config.id}", sub)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


#: random rounds: (stake, payout — None for a bet rolled back instead —, retry the bet, retry the settlement)
round_plans = st.lists(
    st.tuples(st.integers(1, 30_00), st.one_of(st.none(), st.integers(0, 60_00)), st.booleans(), st.booleans()),
    min_size=1, max_size=8,
)


def round_property(examples: int, backend: str) -> Callable[[Any], Any]:
    """A property test over a random starting balance and ``round_plans``, against one wallet backend."""

    def decorate(fn: Any) -> Any:
        fn = given(start=st.integers(0, 50_00), plan=round_plans)(fn)
        fn = settings(max_examples=examples, deadline=None,
                      suppress_health_check=[HealthCheck.function_scoped_fixture])(fn)
        return pytest.mark.parametrize("wallet", [backend], indirect=True)(fn)

    return decorate
