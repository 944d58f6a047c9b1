"""The gateway's wallet port: what adapters and the operator API call.

Adapters translate; the wallet guards and routes. A command is built complete here (tenant, brand,
license, player, currency, ids, trace) and validated before anything is queued, then it passes
degradation and rate limits, then the ledger client. This is also the one place every protocol and the
operator API pass with an amount, so the largest amount of one command (per currency,
``GATEWAY_MAX_AMOUNT_*``) is enforced here: no single bet, win or deposit can come near the int64
bounds of the accounts it moves money between. Balances are read from the shard's database
(a primary-key read); money only ever moves through ledger commands.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

from core import logs, otel
from core.commands import Command, InvalidCommand, Kind, Result, Status
from core.errors import BadInput, InvalidAmount, Retryable
from core.money import format_minor
from core.records import PlayerSession
from gateway import counters
from gateway.degradation import Degradation
from gateway.guards import Guards
from gateway.ledger_client import LedgerClient
from gateway.quota import RedisQuota
from gateway.sessions import SessionStore

#: plain module names for the members the money path compares with (``Kind.BET`` is a descriptor call on
#: Python 3.11)
_BET, _OK = Kind.BET, Status.OK

_BALANCE_SQL = """SELECT b.balance FROM accounts a JOIN balances b USING (account_id)
                   WHERE a.kind = 'player' AND a.brand_id = $1 AND a.player_id = $2 AND a.currency = $3"""


def new_traceparent() -> str:
    raw = os.urandom(24).hex()  # one system call for trace id and span id together
    return f"00-{raw[:32]}-{raw[32:]}-01"


class _AttemptIds:
    """Command (attempt) ids: 32 hex characters, a random 80-bit prefix per process and a counter.

    The ledger tells a redelivery (same id) from a retry (new id), so an id must never repeat across
    processes or restarts: the prefix is drawn anew at start and in every forked child. Cheaper than a
    ``uuid4`` (a system call and a UUID object) per command.
    """

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._prefix = os.urandom(10).hex()
        self._next = itertools.count().__next__

    def __call__(self) -> str:
        return f"{self._prefix}{self._next():012x}"


new_cmd_id = _AttemptIds()


#: W3C trace context: version-traceid-parentid-flags, lower-case hex
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


def valid_traceparent(value: str | None) -> str:
    """Keep a caller's W3C traceparent when well-formed, else start a new trace (a malformed header, even
    one with control characters or non-ASCII bytes, never fails the call)."""
    if value and len(value) == 55 and _TRACEPARENT.fullmatch(value):
        return value
    return new_traceparent()


def new_command(session: PlayerSession, kind: Kind, *, tx_id: str, round_id: str, amount: int = 0,
                traceparent: str | None = None, **extra: Any) -> Command:
    """A complete, validated command for ``session``'s player.

    The one place an ``InvalidCommand`` becomes the caller's ``BadInput``, for every wallet (this one and
    the adapter tests' in-memory one), so a protocol answers an invalid command alike whichever it runs on.
    """
    cmd = Command(
        cmd_id=new_cmd_id(), kind=kind, tenant_id=session.tenant_id, brand_id=session.brand_id,
        license=session.license, player_id=session.player_id, currency=session.currency,
        provider_id=session.provider_id, tx_id=tx_id, round_id=round_id,
        traceparent=valid_traceparent(traceparent), amount=amount,
        session_started_ms=session.started_ms if kind is _BET else 0,
        game_id=extra.pop("game_id", "") or "", **extra,
    )
    try:
        cmd.validate()
    except InvalidCommand as exc:
        raise BadInput(str(exc)) from None
    return cmd


class Wallet:
    def __init__(self, sessions: SessionStore, ledger: LedgerClient, pools: dict[int, asyncpg.Pool],
                 guards: Guards, degradation: Degradation, quota: RedisQuota | None = None, *,
                 max_amounts: Mapping[str, int]) -> None:
        self.quota = quota
        #: currency → largest amount of one command in minor units (``Settings.max_amounts_minor``)
        self.max_amounts = max_amounts
        self.sessions = sessions
        self.ledger = ledger
        self.pools = pools
        self.guards = guards
        self.degradation = degradation
        self.closing = False

    # ------------------------------------------------------------------ sessions
    async def launch(self, template: PlayerSession) -> tuple[str, int]:
        self.degradation.check_session(template.provider_id, template.brand_id)
        return await self.sessions.launch(template.provider_id, template)

    async def open_session(self, provider_id: str, launch_token: str) -> PlayerSession:
        return await self.sessions.open(provider_id, launch_token)

    async def session(self, provider_id: str, token: str, *, allow_expired: bool = False) -> PlayerSession:
        return await self.sessions.get(provider_id, token, allow_expired=allow_expired)

    async def rotate_session(self, session: PlayerSession) -> PlayerSession:
        return await self.sessions.rotate(session)

    async def profile(self, provider_id: str, player_id: str, brands: Sequence[str] = ()) -> PlayerSession:
        return await self.sessions.profile(provider_id, player_id, brands)

    # ------------------------------------------------------------------ money
    async def balance(self, session: PlayerSession) -> int:
        return await self.balance_of(session.brand_id, session.player_id, session.currency)

    async def balance_of(self, brand_id: str, player_id: str, currency: str) -> int:
        pool = self.pools[self.ledger.shard_of(player_id)]
        value = await pool.fetchval(_BALANCE_SQL, brand_id, player_id, currency)
        return int(value or 0)

    def command(self, session: PlayerSession, kind: Kind, *, tx_id: str, round_id: str, amount: int = 0,
                traceparent: str | None = None, **extra: Any) -> Command:
        cmd = new_command(session, kind, tx_id=tx_id, round_id=round_id, amount=amount,
                          traceparent=traceparent, **extra)
        logs.bind(logs.trace_id_of(cmd.traceparent), cmd.brand_id, cmd.provider_id,
                  self.ledger.shard_of(cmd.player_id))
        ceiling = self.max_amounts.get(cmd.currency, 0)
        if amount > ceiling:
            raise InvalidAmount(f"amount above the maximum of one transaction "
                                f"({format_minor(ceiling, cmd.currency)} {cmd.currency})")
        return cmd

    async def execute(self, command: Command, *, guard: bool = True) -> Result:
        if otel.TRACER is None:
            return await self._execute(command, guard)
        with otel.span("ledger.command", command.traceparent, {
                "ledger.kind": command.kind.value, "ledger.brand": command.brand_id,
                "ledger.provider": command.provider_id, "ledger.shard": self.ledger.shard_of(command.player_id)}):
            return await self._execute(command, guard)

    async def _execute(self, command: Command, guard: bool) -> Result:
        if self.closing:
            raise Retryable("gateway is shutting down", retry_after_s=2.0)
        if guard:
            if command.kind is _BET:
                self.degradation.check_bet(command.provider_id, command.brand_id)
                self.guards.check(command.provider_id, command.brand_id, command.player_id, command.round_id)
            else:
                self.guards.check(command.provider_id, command.brand_id)
            if self.quota is not None:
                await self.quota.check(command.provider_id, command.brand_id)
        result = await self.ledger.submit(command)
        if command.kind is _BET and result.status is _OK and not result.duplicate:
            counters.bet_accepted(command.brand_id, command.currency, command.amount)
        return result

    def now_ms(self) -> int:
        return int(time.time() * 1000)


class LazyWallet:
    """The ``WalletPort`` adapters are built with: providers are mounted before start-up creates the
    ``Wallet``, which ``bind`` then hands over. A call before that is a defect and fails loudly."""

    def __init__(self) -> None:
        self._wallet: Wallet | None = None

    def bind(self, wallet: Wallet) -> None:
        self._wallet = wallet

    @property
    def wallet(self) -> Wallet:
        if self._wallet is None:
            raise RuntimeError("the wallet is used before the gateway has started")
        return self._wallet

    async def open_session(self, provider_id: str, launch_token: str) -> PlayerSession:
        return await self.wallet.open_session(provider_id, launch_token)

    async def session(self, provider_id: str, token: str, *, allow_expired: bool = False) -> PlayerSession:
        return await self.wallet.session(provider_id, token, allow_expired=allow_expired)

    async def rotate_session(self, session: PlayerSession) -> PlayerSession:
        return await self.wallet.rotate_session(session)

    async def profile(self, provider_id: str, player_id: str, brands: Sequence[str] = ()) -> PlayerSession:
        return await self.wallet.profile(provider_id, player_id, brands)

    async def balance(self, session: PlayerSession) -> int:
        return await self.wallet.balance(session)

    def command(self, session: PlayerSession, kind: Kind, *, tx_id: str, round_id: str, amount: int = 0,
                traceparent: str | None = None, **extra: Any) -> Command:
        return self.wallet.command(session, kind, tx_id=tx_id, round_id=round_id, amount=amount,
                                   traceparent=traceparent, **extra)

    async def execute(self, command: Command) -> Result:
        return await self.wallet.execute(command)
