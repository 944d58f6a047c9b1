"""The money rules, as a pure function of a batch's loaded state.

The writer loads everything a batch can touch (accounts, prior outcomes, bets, rounds, tombstones,
responsible-gaming limits and usage), then ``Engine.apply`` decides each command in arrival order
against that in-memory state, so commands inside one batch see each other (a bet and its win may
share a batch). The engine only records mutations; the writer persists them set-based in the same
PostgreSQL transaction. Nothing here does I/O, so every rule is unit-testable and the database's
own constraints (unique tx key, balance ≥ 0, append-only entries) remain the last line of defence.

A round's state is per player (live tables share one round id among everyone seated). House and cash
balances are never read, only moved: they are unbounded in the database, while a player's wallet is
an int64, so a credit that would pass that is refused here rather than failing the whole batch there.
Money limits are per currency; session and self-exclusion limits are not (currency ``""``, which also
holds money limits set before limits had a currency: they apply to a currency without its own).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import orjson

from core.commands import INT64_MAX, Command, Kind, Result, Status

TxKey = tuple[str, str, str]          # brand, provider, tx id
AccountKey = tuple[str, str, str, str]  # kind, brand, player ('' for house/cash), currency
UsageKey = tuple[str, str, str, dt.date]
RoundKey = tuple[str, str, str, str]  # brand, provider, round id, player
LimitKey = tuple[str, str]            # currency ('' for currency-independent limits), limit name

#: limits in minor units of one currency; the others (session minutes, self-exclusion) hold for all
MONEY_LIMITS = frozenset({"loss_day", "loss_week", "loss_month", "max_stake"})

EVENT_SCHEMA_VERSION = 1


@dataclass(slots=True)
class Account:
    account_id: int
    balance: int
    is_player: bool


@dataclass(slots=True)
class PriorTx:
    ledger_tx: int
    status: Status
    request_hash: str
    player_id: str
    currency: str
    cmd_id: str = ""


@dataclass(slots=True)
class Bet:
    round_id: str
    player_id: str
    currency: str
    amount: int
    free_round: bool
    state: str
    ledger_tx: int


@dataclass(slots=True)
class Round:
    player_id: str
    currency: str
    bet_count: int = 0
    open_bets: int = 0
    live_bets: int = 0
    bet_total: int = 0
    win_total: int = 0
    closed: bool = False


@dataclass(slots=True)
class Limit:
    value: int | None
    pending_value: int | None = None
    pending_set: bool = False
    pending_from_ms: int | None = None

    def effective(self, now_ms: int) -> int | None:
        if self.pending_set and self.pending_from_ms is not None and now_ms >= self.pending_from_ms:
            return self.pending_value
        return self.value


@dataclass
class BatchState:
    """Everything loaded for one batch; ``None`` values mean 'looked up, not there'."""

    accounts: dict[AccountKey, Account] = field(default_factory=dict)
    txs: dict[TxKey, PriorTx] = field(default_factory=dict)
    bets: dict[TxKey, Bet | None] = field(default_factory=dict)
    rounds: dict[RoundKey, Round | None] = field(default_factory=dict)
    tombstones: set[TxKey] = field(default_factory=set)
    limits: dict[tuple[str, str], dict[LimitKey, Limit]] = field(default_factory=dict)
    usage: dict[UsageKey, list[int]] = field(default_factory=dict)


@dataclass
class Mutations:
    """What the batch writes, collected while deciding."""

    txs: list[tuple[Any, ...]] = field(default_factory=list)
    entries: list[tuple[int, int, int]] = field(default_factory=list)  # ledger_tx, account_id, amount
    balance_deltas: dict[int, int] = field(default_factory=dict)
    bets: dict[TxKey, Bet] = field(default_factory=dict)
    rounds: dict[RoundKey, Round] = field(default_factory=dict)
    tombstones: list[tuple[str, str, str, int]] = field(default_factory=list)
    limits: dict[tuple[str, str, str, str], Limit] = field(default_factory=dict)  # brand, player, currency, name
    usage_deltas: dict[UsageKey, list[int]] = field(default_factory=dict)
    events: list[tuple[str, str, bytes]] = field(default_factory=list)  # event id, subject, payload


_TOO_RICH = "the wallet's balance would pass the ledger's maximum (int64 minor units)"

_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


def subject_token(value: str) -> str:
    """A NATS subject token: ids with dots, spaces or wildcards must not split or widen a subject."""
    return "".join(c if c in _SAFE else "_" for c in value) or "_"


def utc_day(now_ms: int) -> dt.date:
    return dt.datetime.fromtimestamp(now_ms / 1000, tz=dt.UTC).date()


def window_starts(day: dt.date) -> dict[str, dt.date]:
    return {
        "loss_day": day,
        "loss_week": day - dt.timedelta(days=day.weekday()),
        "loss_month": day.replace(day=1),
    }


class Engine:
    """Decides one batch. ``tx_ids`` are pre-allocated ledger transaction numbers, one per command."""

    def __init__(self, state: BatchState, *, batch_seq: int, now_ms: int, tx_ids: list[int],
                 cooling_off_ms: int, events_prefix: str = "") -> None:
        self.s = state
        self.m = Mutations()
        self.batch_seq = batch_seq
        self.now_ms = now_ms
        self.today = utc_day(now_ms)
        self._tx_ids = iter(tx_ids)
        self.cooling_off_ms = cooling_off_ms
        self.events_prefix = events_prefix
        self._subjects: dict[tuple[str, str], str] = {}
        self._closed: tuple[str, Round] | None = None  # a round this command closed: round.closed follows
        self._handlers = {
            Kind.BET: self._bet, Kind.WIN: self._win, Kind.ROLLBACK: self._rollback,
            Kind.END_ROUND: self._end_round, Kind.DEPOSIT: self._deposit, Kind.WITHDRAW: self._withdraw,
            Kind.RG_SET: self._rg_set,
        }

    # ------------------------------------------------------------------ entry point
    def apply(self, cmd: Command) -> Result:
        key = (cmd.brand_id, cmd.provider_id, cmd.tx_id)
        request_hash = cmd.request_hash()
        prior = self.s.txs.get(key)
        if prior is not None:
            if prior.request_hash != request_hash:
                return self._result(cmd, Status.CONFLICT, 0, detail="transaction id reused with other details")
            # a redelivered batch (writer died between commit and ack) carries the same attempt id:
            # that is the first answer the caller sees, not a provider retry
            return self._result(cmd, prior.status, prior.ledger_tx, duplicate=prior.cmd_id != cmd.cmd_id,
                                player_id=prior.player_id, currency=prior.currency)
        handler = self._handlers[cmd.kind]
        ledger_tx = next(self._tx_ids)
        status = handler(cmd, ledger_tx)
        detail = _TOO_RICH if status is Status.BAD_COMMAND else ""
        if self._closed is not None:
            self._round_closed(cmd, ledger_tx, *self._closed)
        self.s.txs[key] = PriorTx(ledger_tx, status, request_hash, cmd.player_id, cmd.currency, cmd.cmd_id)
        self.m.txs.append((
            ledger_tx, cmd.brand_id, cmd.provider_id, cmd.tx_id, cmd.kind.value, status.value, request_hash,
            cmd.tenant_id, cmd.license, cmd.player_id, cmd.currency, cmd.round_id, cmd.ref_tx_id, cmd.amount,
            cmd.credit_type, self.batch_seq, cmd.traceparent, cmd.cmd_id,
        ))
        return self._result(cmd, status, ledger_tx, detail=detail)

    # ------------------------------------------------------------------ commands
    def _bet(self, cmd: Command, ltx: int) -> Status:
        key = (cmd.brand_id, cmd.provider_id, cmd.tx_id)
        if key in self.s.tombstones:
            return Status.TX_ROLLED_BACK
        rkey = (cmd.brand_id, cmd.provider_id, cmd.round_id, cmd.player_id)
        rnd = self.s.rounds.get(rkey)
        if rnd is not None and rnd.closed:
            return Status.ROUND_CLOSED
        stake = 0 if cmd.free_round else cmd.amount
        refusal = self._rg_check(cmd, stake)
        if refusal is not None:
            self._rg_refused(cmd, ltx, refusal, stake)
            return refusal
        wallet = self._account("player", cmd.brand_id, cmd.player_id, cmd.currency, cmd.tenant_id)
        if wallet.balance < stake:
            return Status.INSUFFICIENT_FUNDS
        if stake:
            house = self._account("house", cmd.brand_id, "", cmd.currency, cmd.tenant_id)
            self._move(ltx, wallet, house, stake)
            self._usage(cmd, staked=stake)
        if rnd is None:
            rnd = Round(cmd.player_id, cmd.currency)
            self.s.rounds[rkey] = rnd
        rnd.bet_count += 1
        rnd.open_bets += 1
        rnd.live_bets += 1
        rnd.bet_total = min(rnd.bet_total + stake, INT64_MAX)  # informational: saturates, never refuses
        if cmd.round_closed:
            self._close(cmd.round_id, rnd)
        self.m.rounds[rkey] = rnd
        bet = Bet(cmd.round_id, cmd.player_id, cmd.currency, stake, cmd.free_round, "open", ltx)
        self.s.bets[key] = bet
        self.m.bets[key] = bet
        self._event(cmd, ltx, "bet.placed", stake, wallet.balance)
        if stake:
            self._event(cmd, ltx, "wallet.debited", stake, wallet.balance)
        return Status.OK

    def _win(self, cmd: Command, ltx: int) -> Status:
        rkey = (cmd.brand_id, cmd.provider_id, cmd.round_id, cmd.player_id)
        rnd = self.s.rounds.get(rkey)
        bet: Bet | None = None
        if cmd.ref_tx_id is not None:
            bkey = (cmd.brand_id, cmd.provider_id, cmd.ref_tx_id)
            bet = self.s.bets.get(bkey)
            if bet is None:
                if bkey in self.s.tombstones:
                    return Status.TX_ROLLED_BACK
                if not cmd.free_round:
                    return Status.BET_NOT_FOUND
            elif bet.state == "rolled_back":
                return Status.TX_ROLLED_BACK
            elif bet.state == "settled" and cmd.single_settlement:
                return Status.BET_ALREADY_SETTLED
            if bet is not None:
                rkey = (cmd.brand_id, cmd.provider_id, bet.round_id, bet.player_id)
                rnd = self.s.rounds.get(rkey)
        elif not cmd.free_round and cmd.credit_type == "win":
            # a plain win settles a round's bets; bonus, jackpot, promo and adjustment credits need none
            if rnd is None or rnd.bet_count == 0:
                return Status.ROUND_NOT_FOUND
            if rnd.live_bets == 0:
                return Status.TX_ROLLED_BACK
        if bet is not None and bet.player_id != cmd.player_id:
            return Status.BET_NOT_FOUND
        wallet = self._account("player", cmd.brand_id, cmd.player_id, cmd.currency, cmd.tenant_id)
        if wallet.balance + cmd.amount > INT64_MAX:
            return Status.BAD_COMMAND
        if cmd.amount:
            house = self._account("house", cmd.brand_id, "", cmd.currency, cmd.tenant_id)
            self._move(ltx, house, wallet, cmd.amount)
            self._usage(cmd, won=cmd.amount)
        if rnd is None:
            rnd = Round(cmd.player_id, cmd.currency)
            self.s.rounds[rkey] = rnd
        rnd.win_total = min(rnd.win_total + cmd.amount, INT64_MAX)
        if bet is not None and bet.state == "open":
            bet.state = "settled"
            rnd.open_bets = max(0, rnd.open_bets - 1)
            self.m.bets[(cmd.brand_id, cmd.provider_id, cmd.ref_tx_id or "")] = bet
        if cmd.round_closed:
            self._close(bet.round_id if bet is not None else cmd.round_id, rnd)
        self.m.rounds[rkey] = rnd
        self._event(cmd, ltx, "bet.settled", cmd.amount, wallet.balance)
        if cmd.amount:
            self._event(cmd, ltx, "wallet.credited", cmd.amount, wallet.balance)
        return Status.OK

    def _rollback(self, cmd: Command, ltx: int) -> Status:
        ref = cmd.ref_tx_id or cmd.tx_id
        bkey = (cmd.brand_id, cmd.provider_id, ref)
        bet = self.s.bets.get(bkey)
        if bet is None:
            if bkey in self.s.tombstones:
                return Status.ALREADY_ROLLED_BACK
            self.s.tombstones.add(bkey)
            self.m.tombstones.append((cmd.brand_id, cmd.provider_id, ref, ltx))
            return Status.TOMBSTONED
        if bet.player_id != cmd.player_id:
            return Status.BET_NOT_FOUND
        if bet.state == "rolled_back":
            return Status.BET_ALREADY_SETTLED if cmd.single_settlement else Status.ALREADY_ROLLED_BACK
        if bet.state == "settled":
            return Status.BET_ALREADY_SETTLED
        wallet = self._account("player", cmd.brand_id, bet.player_id, bet.currency, cmd.tenant_id)
        if wallet.balance + bet.amount > INT64_MAX:
            return Status.BAD_COMMAND
        if bet.amount:
            house = self._account("house", cmd.brand_id, "", bet.currency, cmd.tenant_id)
            self._move(ltx, house, wallet, bet.amount)
            self._usage(cmd, staked=-bet.amount)
        bet.state = "rolled_back"
        self.m.bets[bkey] = bet
        rkey = (cmd.brand_id, cmd.provider_id, bet.round_id, bet.player_id)
        rnd = self.s.rounds.get(rkey)
        if rnd is not None:
            rnd.open_bets = max(0, rnd.open_bets - 1)
            rnd.live_bets = max(0, rnd.live_bets - 1)
            rnd.bet_total = max(0, rnd.bet_total - bet.amount)
            if cmd.round_closed:
                self._close(bet.round_id, rnd)
            self.m.rounds[rkey] = rnd
        self._event(cmd, ltx, "bet.rolled_back", bet.amount, wallet.balance)
        if bet.amount:
            self._event(cmd, ltx, "wallet.credited", bet.amount, wallet.balance)
        return Status.OK

    def _end_round(self, cmd: Command, ltx: int) -> Status:
        rkey = (cmd.brand_id, cmd.provider_id, cmd.round_id, cmd.player_id)
        rnd = self.s.rounds.get(rkey)
        if rnd is None:
            rnd = Round(cmd.player_id, cmd.currency)
            self.s.rounds[rkey] = rnd
        self._close(cmd.round_id, rnd)
        self.m.rounds[rkey] = rnd
        return Status.OK

    def _deposit(self, cmd: Command, ltx: int) -> Status:
        wallet = self._account("player", cmd.brand_id, cmd.player_id, cmd.currency, cmd.tenant_id)
        if wallet.balance + cmd.amount > INT64_MAX:
            return Status.BAD_COMMAND
        cash = self._account("cash", cmd.brand_id, "", cmd.currency, cmd.tenant_id)
        self._move(ltx, cash, wallet, cmd.amount)
        self._event(cmd, ltx, "wallet.credited", cmd.amount, wallet.balance)
        return Status.OK

    def _withdraw(self, cmd: Command, ltx: int) -> Status:
        wallet = self._account("player", cmd.brand_id, cmd.player_id, cmd.currency, cmd.tenant_id)
        if wallet.balance < cmd.amount:
            return Status.INSUFFICIENT_FUNDS
        cash = self._account("cash", cmd.brand_id, "", cmd.currency, cmd.tenant_id)
        self._move(ltx, wallet, cash, cmd.amount)
        self._event(cmd, ltx, "wallet.debited", cmd.amount, wallet.balance)
        return Status.OK

    def _rg_set(self, cmd: Command, ltx: int) -> Status:
        """Stricter limits apply at once; looser ones (or removal) only after the cooling-off period."""
        limits = self.s.limits.setdefault((cmd.brand_id, cmd.player_id), {})
        for name, new in cmd.limits.items():
            currency = cmd.currency if name in MONEY_LIMITS else ""
            lim = limits.get((currency, name)) or (limits.get(("", name)) if currency else None) or Limit(None)
            cur = lim.effective(self.now_ms)
            if lim.pending_set and lim.pending_from_ms is not None and self.now_ms >= lim.pending_from_ms:
                lim = Limit(cur)
            stricter_is_higher = name == "self_exclude_until_ms"
            if new == cur:
                lim = Limit(cur)
            elif cur is None or (new is not None and ((new > cur) if stricter_is_higher else (new < cur))):
                lim = Limit(new)
            else:
                start = self.now_ms + self.cooling_off_ms
                if stricter_is_higher and cur is not None:
                    start = max(start, cur)
                lim = Limit(cur, pending_value=new, pending_set=True, pending_from_ms=start)
            limits[(currency, name)] = lim
            self.m.limits[(cmd.brand_id, cmd.player_id, currency, name)] = lim
        return Status.OK

    # ------------------------------------------------------------------ helpers
    def _rg_check(self, cmd: Command, stake: int) -> Status | None:
        limits = self.s.limits.get((cmd.brand_id, cmd.player_id))
        if not limits:
            return None

        def eff(name: str) -> int | None:
            lim = limits.get((cmd.currency, name)) if name in MONEY_LIMITS else None
            if lim is None:
                lim = limits.get(("", name))
            return lim.effective(self.now_ms) if lim else None

        until = eff("self_exclude_until_ms")
        if until is not None and until > self.now_ms:
            return Status.SELF_EXCLUDED
        max_stake = eff("max_stake")
        if max_stake is not None and stake > max_stake:
            return Status.STAKE_LIMIT
        minutes = eff("session_minutes")
        if minutes is not None and cmd.session_started_ms and (
            self.now_ms - cmd.session_started_ms >= minutes * 60_000
        ):
            return Status.SESSION_LIMIT
        for name, start in window_starts(self.today).items():
            limit = eff(name)
            if limit is None:
                continue
            loss = 0
            day = start
            while day <= self.today:
                row = self.s.usage.get((cmd.brand_id, cmd.player_id, cmd.currency, day))
                if row:
                    loss += row[0] - row[1]
                day += dt.timedelta(days=1)
            if loss + stake > limit:
                return Status.LOSS_LIMIT
        return None

    def _usage(self, cmd: Command, *, staked: int = 0, won: int = 0) -> None:
        key = (cmd.brand_id, cmd.player_id, cmd.currency, self.today)
        row = self.s.usage.setdefault(key, [0, 0])
        row[0] += staked
        row[1] += won
        delta = self.m.usage_deltas.setdefault(key, [0, 0])
        delta[0] += staked
        delta[1] += won

    def _account(self, kind: str, brand: str, player: str, currency: str, tenant: str) -> Account:
        try:
            return self.s.accounts[(kind, brand, player, currency)]
        except KeyError:
            raise RuntimeError(f"account {kind}/{brand}/{player}/{currency} was not loaded") from None

    def _move(self, ltx: int, debit: Account, credit: Account, amount: int) -> None:
        """Balanced entries: the debited account loses exactly what the credited one gains."""
        debit.balance -= amount
        credit.balance += amount
        self.m.entries.append((ltx, debit.account_id, -amount))
        self.m.entries.append((ltx, credit.account_id, amount))
        deltas = self.m.balance_deltas
        deltas[debit.account_id] = deltas.get(debit.account_id, 0) - amount
        deltas[credit.account_id] = deltas.get(credit.account_id, 0) + amount

    def _close(self, round_id: str, rnd: Round) -> None:
        if not rnd.closed:
            rnd.closed = True
            self._closed = (round_id, rnd)

    def _round_closed(self, cmd: Command, ltx: int, round_id: str, rnd: Round) -> None:
        """``round.closed`` once per round, after the closing command's own events; amount is what it paid."""
        self._closed = None
        self._event(cmd, ltx, "round.closed", rnd.win_total, self._balance(cmd),
                    {"round_id": round_id, "bet_total": rnd.bet_total, "win_total": rnd.win_total})

    def _rg_refused(self, cmd: Command, ltx: int, refusal: Status, stake: int) -> None:
        """A bet refused by a limit is recorded, and announced through the same outbox transaction."""
        self._event(cmd, ltx, "rg.limit_reached", stake, self._balance(cmd), {"limit": refusal.value})

    def _balance(self, cmd: Command) -> int:
        acct = self.s.accounts.get(("player", cmd.brand_id, cmd.player_id, cmd.currency))
        return acct.balance if acct else 0

    def _event(self, cmd: Command, ltx: int, etype: str, amount: int, balance: int,
               extra: dict[str, Any] | None = None) -> None:
        event_id = f"{ltx}:{etype}"
        payload = orjson.dumps({
            "id": event_id, "type": etype, "v": EVENT_SCHEMA_VERSION, "ts_ms": self.now_ms,
            "tenant_id": cmd.tenant_id, "brand_id": cmd.brand_id, "license": cmd.license,
            "player_id": cmd.player_id, "currency": cmd.currency, "amount": amount, "balance": balance,
            "provider_id": cmd.provider_id, "tx_id": cmd.tx_id, "round_id": cmd.round_id,
            "ref_tx_id": cmd.ref_tx_id, "credit_type": cmd.credit_type, "ledger_tx": ltx,
            "traceparent": cmd.traceparent, **(extra or {}),
        })
        base = self._subjects.get((cmd.tenant_id, cmd.brand_id))
        if base is None:
            base = f"{self.events_prefix}events.{subject_token(cmd.tenant_id)}.{subject_token(cmd.brand_id)}."
            self._subjects[(cmd.tenant_id, cmd.brand_id)] = base
        subject = base + etype
        self.m.events.append((event_id, subject, payload))

    def _result(self, cmd: Command, status: Status, ltx: int, *, duplicate: bool = False, detail: str = "",
                player_id: str | None = None, currency: str | None = None) -> Result:
        acct = self.s.accounts.get(("player", cmd.brand_id, player_id or cmd.player_id, currency or cmd.currency))
        return Result(cmd.cmd_id, status, acct.balance if acct else 0, currency or cmd.currency, ltx,
                      duplicate, detail)
