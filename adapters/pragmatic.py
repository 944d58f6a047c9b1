"""Pragmatic Play seamless wallet: form-encoded ``/{method}.html``, MD5-hashed, JSON answers with ``error``.

The hash covers every received parameter (known or not) and is checked before any field is interpreted.
Amounts are decimal strings turned into minor units by ``Decimal`` (more places than the currency has are
refused with error 7, never rounded) and answered as JSON numbers written from minor units, so no float
ever carries money. Every money method is idempotent on ``reference`` *scoped by method*
(``bet:<ref>``, ``result:<ref>``, …) because Pragmatic's references are unique per method only; a refund
names the bet's reference and gets its own key (``refund:<ref>``), so it is idempotent too and a refund of
a bet never seen leaves a tombstone that refuses the late bet. A ``result`` has no link to its bet other
than the round: the ledger settles it by round and refuses it (error 7) when that round's bet is missing or
refunded. Answers to retries carry the original ``transactionId`` (the ledger's id, stable across retries).

Decisions (see ``docs/pragmatic.md``): ``authenticate`` exchanges the launch token once and returns the
session token as ``token``; a repeated ``authenticate`` with that session token answers the same session.
A bet must carry a live session token (option ``bets_need_token``). A bet with ``bonusCode`` is a
free-round bet and moves no cash. A negative ``adjustment`` is a debit (a ledger bet in a round of its own,
``adjustment:<ref>``, closed at once, so it can be refused for funds but never for the game round having
ended); a positive one a credit of type ``adjustment`` in the game round. ``endRound`` of a round with no live bet
answers 0: there is nothing left to end.

The provider side (``PragmaticClient``, for tests and load generation) is ``adapters.sim.pragmatic``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar

import orjson
from aiohttp import web

from adapters import flow
from adapters.base import Adapter, Echo, WalletPort
from core import errors as e
from core.commands import Command, Kind, Result, clean_text
from core.money import exponent, format_minor, to_minor
from core.records import PlayerSession, ProviderConfig

OK = 0
#: error code → the description sent with it
DESCRIPTIONS: dict[int, str] = {
    0: "Success",
    1: "Insufficient balance",
    2: "Player not found or is logged out",
    3: "Bet is not allowed",
    4: "Player authentication failed due to invalid, not found or expired token",
    5: "Invalid hash code",
    6: "Player is frozen",
    7: "Bad parameters in the request",
    8: "Game is not found or disabled",
    50: "Bet limit has been reached",
    100: "Internal server error, please retry",
    120: "Internal server error",
}
MAX_FIELDS = 64
_DECIMAL = re.compile(r"-?[0-9]{1,19}(\.[0-9]{1,12})?")
_DIGITS = re.compile(r"[0-9]{1,19}")

Reply = dict[str, Any]


class _Answer(Exception):
    """A ledger outcome answered with a non-zero code (after per-call overrides); internal."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def sign(params: Mapping[str, str], secret: str) -> str:
    """Pragmatic's hash: MD5 hex of ``k=v`` pairs sorted by key, joined by ``&``, then the secret."""
    text = "&".join(f"{k}={params[k]}" for k in sorted(params) if k != "hash")
    return hashlib.md5((text + secret).encode()).hexdigest()


def cash(minor: int, currency: str) -> orjson.Fragment:
    """A JSON number with at least 2 decimals (Pragmatic's format), exact for every exponent."""
    text = format_minor(minor, currency)
    exp = exponent(currency)
    if exp < 2:
        text += ("." if exp == 0 else "") + "0" * (2 - exp)
    return orjson.Fragment(text)


class _Params:
    """Strict reader of the received parameters: missing, empty or malformed → error 7."""

    __slots__ = ("d",)

    def __init__(self, d: dict[str, str]) -> None:
        self.d = d

    def text(self, name: str, max_len: int = 100) -> str:
        value = self.d.get(name)
        if not value:
            raise e.MalformedBody(f"missing {name}")
        if len(value) > max_len:
            raise e.MalformedBody(f"{name} longer than {max_len}")
        if not clean_text(value):
            raise e.MalformedBody(f"{name} holds a control character")
        return value

    def opt_text(self, name: str, max_len: int = 100) -> str | None:
        return self.text(name, max_len) if self.d.get(name) else None

    def present(self, name: str) -> None:
        """A required parameter that may be empty and that the wallet does not use."""
        if name not in self.d:
            raise e.MalformedBody(f"missing {name}")

    def digits(self, name: str) -> str:
        value = self.text(name, 19)
        if not _DIGITS.fullmatch(value):
            raise e.MalformedBody(f"{name} is not a number")
        return value

    def opt_digits(self, name: str) -> str | None:
        return self.digits(name) if self.d.get(name) else None

    def decimal(self, name: str, *, signed: bool = False) -> str:
        """The decimal text, checked for shape now; converted once the wallet's currency is known."""
        value = self.text(name, 40)
        if not _DECIMAL.fullmatch(value) or (value[0] == "-" and not signed):
            raise e.InvalidAmount(f"{name} is not a decimal amount")
        return value

    def opt_decimal(self, name: str) -> str | None:
        return self.decimal(name) if self.d.get(name) else None


Op = Callable[[web.Request, _Params], Awaitable[Reply]]


class PragmaticAdapter(Adapter):
    protocol = "pragmatic"
    OK: ClassVar[int] = OK

    ERRORS: ClassVar[dict[type[e.GatewayError], int]] = {
        # an unknown failure may or may not have moved money: retrying is safe (idempotent), so ask for it
        e.GatewayError: 100,
        e.InternalError: 100,
        # bad input
        e.BadInput: 7,
        e.MalformedBody: 7,
        e.InvalidAmount: 7,
        e.UnknownCurrency: 7,
        e.WrongCurrency: 7,
        e.PayloadTooLarge: 7,
        e.NotFound: 7,
        e.InvalidSignature: 5,
        e.Unauthorized: 5,
        e.Forbidden: 5,
        e.InvalidToken: 4,
        e.TokenExpired: 4,
        e.UnknownPlayer: 2,
        e.AmbiguousPlayer: 2,  # several brands know the user: without a token, none is picked
        e.UnknownGame: 8,
        # retryable: a bet answered 100 is refunded by Pragmatic, settlements are retried
        e.Retryable: 100,
        e.RateLimited: 100,
        e.Overloaded: 100,
        e.LedgerTimeout: 100,
        e.BetsPaused: 100,
        e.NoNewSessions: 100,
        e.BodyTimeout: 100,
        # refusals
        e.Refused: 3,
        e.InsufficientFunds: 1,
        e.LimitReached: 50,
        e.SelfExcluded: 6,
        e.LossLimitReached: 50,
        e.StakeLimitExceeded: 50,
        e.SessionTimeLimit: 50,
        # a bet whose reference was refunded first (decision: 3); a result on such a round → 7 (override)
        e.TransactionRolledBack: 3,
        e.BetNotFound: 7,
        e.RoundNotFound: 7,
        e.BetAlreadySettled: 7,
        e.RoundClosed: 3,
        e.RollbackOfUnknown: OK,
        e.AlreadyRolledBack: OK,
        e.IdempotencyConflict: 7,
        e.Duplicate: OK,
    }
    #: a result, bonus, jackpot, promo or positive adjustment whose round's bet was refunded is "bad"
    CREDIT_OVERRIDES: ClassVar[dict[type[e.GatewayError], int]] = {e.TransactionRolledBack: 7}
    #: ``endRound`` of a round with nothing left to end is fine
    END_ROUND_OVERRIDES: ClassVar[dict[type[e.GatewayError], int]] = {
        e.RoundNotFound: OK, e.RoundClosed: OK, e.TransactionRolledBack: OK,
    }

    def __init__(self, config: ProviderConfig, wallet: WalletPort) -> None:
        super().__init__(config, wallet)
        if not config.secret:
            raise ValueError(f"pragmatic provider {config.id} needs a secret key")
        opts = config.options
        self._provider_id = str(opts.get("provider_id", "") or "")
        self._bets_need_token = bool(opts.get("bets_need_token", True))
        self._bonus_win_credits = bool(opts.get("bonus_win_credits", True))
        self._ops: dict[str, Op] = {
            "authenticate": self._authenticate, "balance": self._balance, "bet": self._bet,
            "result": self._result, "bonusWin": self._bonus_win, "jackpotWin": self._jackpot_win,
            "promoWin": self._promo_win, "refund": self._refund, "endRound": self._end_round,
            "adjustment": self._adjustment,
        }

    def routes(self) -> list[web.AbstractRouteDef]:
        return [web.post("/{method}.html", self.dispatch)]

    # --- the envelope ------------------------------------------------------------------------------
    def verify(self, params: Mapping[str, str]) -> None:
        given = params.get("hash")
        if not given:
            raise e.Unauthorized("missing hash")
        expected = sign(params, self.config.secret)
        if not hmac.compare_digest(expected.encode(), given.lower().encode()):
            raise e.InvalidSignature()

    @staticmethod
    def parse_form(body: bytes) -> dict[str, str]:
        try:
            pairs = urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True,
                                           strict_parsing=True, max_num_fields=MAX_FIELDS)
        except ValueError:
            raise e.MalformedBody("body is not a form") from None
        params = dict(pairs)
        if len(params) != len(pairs):
            raise e.MalformedBody("a parameter is repeated")
        return params

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        op = self._ops.get(method)
        if op is None:
            return self.render({"error": 7, "description": f"unknown method {method}"}, 404)
        return await self.handle(request, op)

    # --- the hooks of ``Adapter.handle`` --------------------------------------------------------------
    def decode(self, request: web.Request, raw: bytes, echo: Echo) -> _Params:
        params = self.parse_form(raw)
        self.verify(params)
        p = _Params(params)
        self._check_provider(p)
        return p

    def render(self, reply: Reply, status: int = 200) -> web.Response:
        return web.Response(body=orjson.dumps(reply), status=status, content_type="application/json")

    def render_error(self, exc: e.GatewayError, echo: Echo) -> web.Response:
        return self.render(self._error(self.error_code(exc)))

    def own_answer(self, exc: Exception, echo: Echo) -> web.Response | None:
        return self.render(self._error(exc.code)) if isinstance(exc, _Answer) else None

    @staticmethod
    def _error(code: int) -> Reply:
        return {"error": code, "description": DESCRIPTIONS.get(code, "Error")}

    def _check_provider(self, p: _Params) -> None:
        given = p.text("providerId", 100)
        if self._provider_id and given != self._provider_id:
            raise e.MalformedBody(f"providerId {given!r} is not this provider's")

    # --- helpers -----------------------------------------------------------------------------------
    async def _run(self, cmd: Command, overrides: Mapping[type[e.GatewayError], int] | None = None) -> Result:
        result = await self.wallet.execute(cmd)
        code, err = flow.outcome(self, result, OK, overrides)
        if err is not None and code != OK:
            raise _Answer(code)
        return result

    @staticmethod
    def _money(result: Result) -> Reply:
        return {"currency": result.currency, "cash": cash(result.balance, result.currency),
                "bonus": cash(0, result.currency)}

    @staticmethod
    def _done(reply: Reply) -> Reply:
        return {**reply, "error": OK, "description": DESCRIPTIONS[OK]}

    async def _settlement(self, p: _Params, user: str) -> PlayerSession:
        return await flow.settlement_session(self, p.opt_text("token", 200), user)

    async def _credit(self, request: web.Request, session: PlayerSession, *, tx_id: str, round_id: str,
                      amount: int, credit_type: str, game_id: str, free_round: bool = False) -> Result:
        cmd = flow.build(self, session, Kind.WIN, tx_id=tx_id, round_id=round_id, amount=amount,
                         credit_type=credit_type, free_round=free_round, game_id=game_id,
                         traceparent=request.headers.get("traceparent"))
        return await self._run(cmd, self.CREDIT_OVERRIDES)

    def _credited(self, result: Result, txn: Result | None = None) -> Reply:
        return self._done({"transactionId": (txn or result).ledger_tx, **self._money(result)})

    # --- methods -----------------------------------------------------------------------------------
    async def _authenticate(self, request: web.Request, p: _Params) -> Reply:
        token = p.text("token", 200)
        p.opt_text("gameId", 32)
        try:
            session = await self.wallet.open_session(self.config.id, token)
            session = flow.check_brand(self, session)
        except e.InvalidToken as first:
            # a repeated authenticate (game reload) carries the session token we handed out
            try:
                session = await flow.bet_session(self, token, None)
            except e.InvalidToken:
                raise first from None
        balance = await self.wallet.balance(session)
        reply: Reply = {"userId": session.player_id, "currency": session.currency,
                        "cash": cash(balance, session.currency), "bonus": cash(0, session.currency),
                        "token": session.token}
        if session.country:
            reply["country"] = session.country
        if session.license:
            reply["jurisdiction"] = session.license
        return self._done(reply)

    async def _balance(self, request: web.Request, p: _Params) -> Reply:
        session = await self._settlement(p, p.text("userId"))
        balance = await self.wallet.balance(session)
        return self._done({"currency": session.currency, "cash": cash(balance, session.currency),
                           "bonus": cash(0, session.currency)})

    async def _bet(self, request: web.Request, p: _Params) -> Reply:
        user, game, round_id = p.text("userId"), p.text("gameId", 32), p.digits("roundId")
        amount_text, ref = p.decimal("amount"), p.text("reference", 32)
        p.digits("timestamp")
        p.present("roundDetails")
        bonus_code, token = p.opt_text("bonusCode"), p.opt_text("token", 200)
        if token:
            session = await flow.bet_session(self, token, user)
        elif self._bets_need_token:
            raise e.InvalidToken("a bet needs the session token")
        else:
            session = await self._settlement(p, user)
        amount = to_minor(amount_text, session.currency)
        if bonus_code:
            amount = 0  # a free-round bet: the campaign pays the stake
        elif amount == 0:
            raise e.InvalidAmount("a bet must have a positive amount")
        cmd = flow.build(self, session, Kind.BET, tx_id=f"bet:{ref}", round_id=round_id, amount=amount,
                         free_round=bool(bonus_code), game_id=game,
                         traceparent=request.headers.get("traceparent"))
        result = await self._run(cmd)
        return self._done({"transactionId": result.ledger_tx, **self._money(result),
                           "usedPromo": cash(0, result.currency)})

    async def _result(self, request: web.Request, p: _Params) -> Reply:
        user, game, round_id = p.text("userId"), p.text("gameId", 32), p.digits("roundId")
        amount_text, ref = p.decimal("amount"), p.text("reference", 32)
        p.digits("timestamp")
        p.present("roundDetails")
        bonus_code, promo_text = p.opt_text("bonusCode"), p.opt_decimal("promoWinAmount")
        session = await self._settlement(p, user)
        amount = to_minor(amount_text, session.currency)
        promo = to_minor(promo_text, session.currency) if promo_text else 0
        free = bool(bonus_code)
        result = await self._credit(request, session, tx_id=f"result:{ref}", round_id=round_id,
                                    amount=amount, credit_type="bonus" if free else "win", game_id=game,
                                    free_round=free)
        if not promo:
            return self._credited(result)
        # the promo part has its own key so a retried result credits it exactly once as well
        paid = await self._credit(request, session, tx_id=f"resultPromo:{ref}", round_id=round_id,
                                  amount=promo, credit_type="promo", game_id=game)
        return self._credited(paid, result)

    async def _bonus_win(self, request: web.Request, p: _Params) -> Reply:
        user, amount_text, ref = p.text("userId"), p.decimal("amount"), p.text("reference", 32)
        p.digits("timestamp")
        bonus_code = p.text("bonusCode")
        round_id, game = p.opt_digits("roundId"), p.opt_text("gameId", 32) or ""
        session = await self._settlement(p, user)
        amount = to_minor(amount_text, session.currency)
        if not self._bonus_win_credits:
            amount = 0  # the free-round wins were credited by their results: this is a notice
        result = await self._credit(request, session, tx_id=f"bonusWin:{ref}",
                                    round_id=round_id or f"bonus:{bonus_code}:{ref}", amount=amount,
                                    credit_type="bonus", game_id=game, free_round=True)
        return self._credited(result)

    async def _jackpot_win(self, request: web.Request, p: _Params) -> Reply:
        user, game, round_id = p.text("userId"), p.text("gameId", 32), p.digits("roundId")
        amount_text, ref = p.decimal("amount"), p.text("reference", 32)
        p.digits("timestamp")
        p.text("jackpotId")
        session = await self._settlement(p, user)
        result = await self._credit(request, session, tx_id=f"jackpotWin:{ref}", round_id=round_id,
                                    amount=to_minor(amount_text, session.currency), credit_type="jackpot",
                                    game_id=game)
        return self._credited(result)

    async def _promo_win(self, request: web.Request, p: _Params) -> Reply:
        user, amount_text, ref = p.text("userId"), p.decimal("amount"), p.text("reference", 32)
        p.digits("timestamp")
        campaign, _ = p.text("campaignId"), p.text("campaignType")
        currency = p.text("currency", 3)
        round_id, game = p.opt_digits("roundId"), p.opt_text("gameId", 32) or ""
        session = await self._settlement(p, user)
        if currency != session.currency:
            raise e.WrongCurrency(f"{currency} is not the wallet's {session.currency}")
        result = await self._credit(request, session, tx_id=f"promoWin:{ref}",
                                    round_id=round_id or f"promo:{campaign}:{ref}",
                                    amount=to_minor(amount_text, session.currency), credit_type="promo",
                                    game_id=game)
        return self._credited(result)

    async def _refund(self, request: web.Request, p: _Params) -> Reply:
        user, ref = p.text("userId"), p.text("reference", 32)
        round_id, game = p.opt_digits("roundId"), p.opt_text("gameId", 32) or ""
        amount_text = p.opt_decimal("amount")
        session = await self._settlement(p, user)
        if amount_text:
            to_minor(amount_text, session.currency)  # informational (the bet's amount is refunded), but exact
        cmd = flow.build(self, session, Kind.ROLLBACK, tx_id=f"refund:{ref}", ref_tx_id=f"bet:{ref}",
                         round_id=round_id or f"refund:{ref}", game_id=game,
                         traceparent=request.headers.get("traceparent"))
        result = await self._run(cmd)
        return self._done({"transactionId": result.ledger_tx})

    async def _end_round(self, request: web.Request, p: _Params) -> Reply:
        user, game, round_id = p.text("userId"), p.text("gameId", 32), p.digits("roundId")
        p.opt_decimal("win")
        session = await self._settlement(p, user)
        cmd = flow.build(self, session, Kind.END_ROUND, tx_id=f"endRound:{round_id}", round_id=round_id,
                         round_closed=True, game_id=game, traceparent=request.headers.get("traceparent"))
        result = await self._run(cmd, self.END_ROUND_OVERRIDES)
        return self._done({"cash": cash(result.balance, result.currency), "bonus": cash(0, result.currency)})

    async def _adjustment(self, request: web.Request, p: _Params) -> Reply:
        user, game, round_id = p.text("userId"), p.text("gameId", 32), p.digits("roundId")
        amount_text, ref = p.decimal("amount", signed=True), p.text("reference", 32)
        valid_bet = p.decimal("validBetAmount")
        p.digits("timestamp")
        session = await self._settlement(p, user)
        amount = to_minor(amount_text, session.currency, allow_negative=True)
        to_minor(valid_bet, session.currency)
        if amount < 0:
            # a debit of its own, closed at once: the game round has usually ended and must not block it
            cmd = flow.build(self, session, Kind.BET, tx_id=f"adjustment:{ref}", round_id=f"adjustment:{ref}",
                             amount=-amount, round_closed=True, game_id=game,
                             traceparent=request.headers.get("traceparent"))
            result = await self._run(cmd)
        else:
            result = await self._credit(request, session, tx_id=f"adjustment:{ref}", round_id=round_id,
                                        amount=amount, credit_type="adjustment", game_id=game)
        return self._credited(result)

