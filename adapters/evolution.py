"""Evolution one-wallet: JSON with exact decimal numbers, static ``authToken``, settlement by ``refId``.

The query's ``authToken`` is compared in constant time before the body is read. Bodies are parsed so that
numbers keep their exact decimal text (``Decimal``, never float) and amounts become minor units without
rounding; balances are written back as exact JSON numbers. Every answer is HTTP 200 with a ``status``
except a body that is not JSON at all (HTTP 400), because Evolution acts on the status.

A bet's identity is its ``refId``, not the per-call ``transaction.id``: the debit is keyed
``debit:<refId>``, so a repeated debit is a duplicate (``BET_ALREADY_EXIST``) whatever its transaction id,
and credits and cancels (keyed by their own transaction id) reference ``debit:<refId>`` with
single-settlement semantics: the first of them settles the bet, every later one is
``BET_ALREADY_SETTLED``, a cancel of a ``refId`` never seen leaves a tombstone (``BET_DOES_NOT_EXIST``)
that refuses the late debit (``FINAL_ERROR_ACTION_FAILED``). Credits and cancels never depend on the sid
being alive; debits, balance and check do.

The provider side (``EvolutionClient``, for tests and load generation) is ``adapters.sim.evolution``.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal
from typing import Any, ClassVar, TypeGuard

import orjson
from aiohttp import web

from adapters import flow
from adapters.base import Adapter, Echo, WalletPort
from adapters.exact_json import BadNumber, DuplicateKey, loads_exact, money
from core import errors as e
from core.commands import Command, Kind, Result, clean_text
from core.money import to_minor
from core.records import PlayerSession, ProviderConfig

OK = "OK"
MAX_TEXT = 128

Reply = dict[str, Any]


class _NotJson(Exception):
    """The body is not JSON at all (answered HTTP 400); internal."""


class _Answer(Exception):
    """A ledger outcome answered with a non-OK status (after per-call overrides); internal."""

    def __init__(self, status: str, result: Result) -> None:
        super().__init__(status)
        self.status = status
        self.result = result


def _echoable(value: object) -> TypeGuard[str]:
    """A string the answer may repeat back (``uuid``): what ``_text`` would accept."""
    return isinstance(value, str) and 0 < len(value) <= MAX_TEXT and clean_text(value)


def _text(obj: Mapping[str, Any], name: str, where: str = "") -> str:
    value = obj.get(name)
    if not _echoable(value):
        raise e.MalformedBody(f"{where}{name} must be a non-empty string of at most {MAX_TEXT} characters, "
                              "without control characters")
    return value


def _object(obj: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = obj.get(name)
    if not isinstance(value, dict):
        raise e.MalformedBody(f"{name} must be an object")
    return value


def _opt_object(obj: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    return None if obj.get(name) is None else _object(obj, name)


def _number(obj: Mapping[str, Any], name: str, where: str) -> Decimal | int:
    value = obj.get(name)
    if isinstance(value, BadNumber):
        raise e.InvalidAmount(f"{where}{name} must be a plain decimal number (no exponent, at most 40 characters)")
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        raise e.MalformedBody(f"{where}{name} must be a JSON number")
    return value


class EvolutionAdapter(Adapter):
    protocol = "evolution"
    EXCHANGES_LAUNCH_TOKEN = False
    OK: ClassVar[str] = OK

    ERRORS: ClassVar[dict[type[e.GatewayError], str]] = {
        e.GatewayError: "UNKNOWN_ERROR",
        e.InternalError: "UNKNOWN_ERROR",
        # bad input
        e.BadInput: "INVALID_PARAMETER",
        e.MalformedBody: "INVALID_PARAMETER",
        e.InvalidAmount: "INVALID_PARAMETER",
        e.UnknownCurrency: "INVALID_PARAMETER",
        e.WrongCurrency: "INVALID_PARAMETER",
        e.PayloadTooLarge: "INVALID_PARAMETER",
        e.NotFound: "INVALID_PARAMETER",
        e.UnknownGame: "INVALID_PARAMETER",
        e.InvalidSignature: "INVALID_TOKEN_ID",
        e.Unauthorized: "INVALID_TOKEN_ID",
        e.Forbidden: "INVALID_TOKEN_ID",
        e.InvalidToken: "INVALID_SID",
        e.TokenExpired: "INVALID_SID",
        e.UnknownPlayer: "INVALID_SID",
        e.AmbiguousPlayer: "INVALID_SID",  # the sid would have named the brand
        # retryable
        e.Retryable: "TEMPORARY_ERROR",
        e.RateLimited: "TEMPORARY_ERROR",
        e.Overloaded: "TEMPORARY_ERROR",
        e.LedgerTimeout: "TEMPORARY_ERROR",
        e.BetsPaused: "TEMPORARY_ERROR",
        e.NoNewSessions: "TEMPORARY_ERROR",
        e.BodyTimeout: "TEMPORARY_ERROR",
        # refusals
        e.Refused: "FINAL_ERROR_ACTION_FAILED",
        e.InsufficientFunds: "INSUFFICIENT_FUNDS",
        e.LimitReached: "CASINO_LIMIT_EXCEEDED_TURNOVER",
        e.SelfExcluded: "ACCOUNT_LOCKED",
        e.LossLimitReached: "CASINO_LIMIT_EXCEEDED_LOSS",
        e.StakeLimitExceeded: "CASINO_LIMIT_EXCEEDED_STAKE",
        e.SessionTimeLimit: "CASINO_LIMIT_EXCEEDED_SESSION_TIME",
        # a debit whose refId was cancelled before it arrived
        e.TransactionRolledBack: "FINAL_ERROR_ACTION_FAILED",
        e.BetNotFound: "BET_DOES_NOT_EXIST",
        e.RoundNotFound: "BET_DOES_NOT_EXIST",
        e.BetAlreadySettled: "BET_ALREADY_SETTLED",
        e.RoundClosed: "FINAL_ERROR_ACTION_FAILED",
        e.RollbackOfUnknown: "BET_DOES_NOT_EXIST",
        e.AlreadyRolledBack: "BET_ALREADY_SETTLED",
        e.IdempotencyConflict: "BET_ALREADY_EXIST",
        # a retried credit, cancel or promo payout; a retried debit is BET_ALREADY_EXIST (override)
        e.Duplicate: "BET_ALREADY_SETTLED",
    }
    DEBIT_OVERRIDES: ClassVar[dict[type[e.GatewayError], str]] = {e.Duplicate: "BET_ALREADY_EXIST"}
    #: a credit of a cancelled bet: the bet was settled by its cancel
    CREDIT_OVERRIDES: ClassVar[dict[type[e.GatewayError], str]] = {
        e.TransactionRolledBack: "BET_ALREADY_SETTLED",
    }

    def __init__(self, config: ProviderConfig, wallet: WalletPort) -> None:
        super().__init__(config, wallet)
        if not config.secret:
            raise ValueError(f"evolution provider {config.id} needs a secret (its authToken)")
        self._token = config.secret.encode()
        self._rotate = bool(config.options.get("rotate_sid_on_check", False))

    def routes(self) -> list[web.AbstractRouteDef]:
        ops: dict[str, Callable[[web.Request, dict[str, Any]], Awaitable[Reply]]] = {
            "/check": self._check, "/balance": self._balance, "/debit": self._debit,
            "/credit": self._credit, "/cancel": self._cancel, "/promo_payout": self._promo_payout,
        }
        return [web.post(path, self.endpoint(op)) for path, op in ops.items()]

    # --- the hooks of ``Adapter.handle`` --------------------------------------------------------------
    def verify(self, token: str | None) -> None:
        if not token:
            raise e.Unauthorized("missing authToken")
        if not hmac.compare_digest(self._token, token.encode()):
            raise e.InvalidSignature("wrong authToken")

    def decode(self, request: web.Request, raw: bytes, echo: Echo) -> dict[str, Any]:
        self.verify(request.query.get("authToken"))
        try:
            data = loads_exact(raw)
        except DuplicateKey:
            raise e.MalformedBody("a key appears twice in one object") from None
        except ValueError:
            raise _NotJson() from None
        if not isinstance(data, dict):
            raise e.MalformedBody("body is not a JSON object")
        if _echoable(data.get("uuid")):
            echo["uuid"] = data["uuid"]
        return data

    def render(self, reply: Reply, status: int = 200) -> web.Response:
        return web.Response(body=orjson.dumps(reply), status=status, content_type="application/json")

    def render_error(self, exc: e.GatewayError, echo: Echo) -> web.Response:
        return self.render(self._error(self.error_code(exc), exc.balance, exc.currency, echo.get("uuid", "")))

    def own_answer(self, exc: Exception, echo: Echo) -> web.Response | None:
        if isinstance(exc, _Answer):
            return self.render(self._error(exc.status, exc.result.balance, exc.result.currency,
                                           echo.get("uuid", "")))
        if isinstance(exc, _NotJson):  # not JSON at all: the one answer that is not HTTP 200
            return self.render({"status": "INVALID_PARAMETER", "uuid": ""}, 400)
        return None

    @staticmethod
    def _error(status: str, balance: int | None, currency: str | None, uuid: str) -> Reply:
        reply: Reply = {"status": status}
        if balance is not None and currency:
            try:
                reply |= {"balance": money(balance, currency), "bonus": money(0, currency)}
            except e.UnknownCurrency:
                pass
        reply["uuid"] = uuid
        return reply

    @staticmethod
    def _ok(balance: int, currency: str, uuid: str) -> Reply:
        return {"status": OK, "balance": money(balance, currency), "bonus": money(0, currency), "uuid": uuid}

    # --- helpers -----------------------------------------------------------------------------------
    @staticmethod
    def _head(d: dict[str, Any]) -> tuple[str, str, str]:
        return _text(d, "sid"), _text(d, "userId"), _text(d, "uuid")

    @staticmethod
    def _currency(d: dict[str, Any], session: PlayerSession) -> str:
        currency = _text(d, "currency")
        if currency != session.currency:
            raise e.WrongCurrency(f"{currency} is not the wallet's {session.currency}")
        return currency

    @staticmethod
    def _play(d: dict[str, Any]) -> tuple[str, str, str, Decimal | int, str]:
        """``(round id, tx id, refId, amount, game id)`` of a debit, credit or cancel."""
        game, tx = _object(d, "game"), _object(d, "transaction")
        round_id = _text(game, "id", "game.")
        game_type = game.get("type")
        if game_type is not None and not isinstance(game_type, str):
            raise e.MalformedBody("game.type must be a string")
        details = _opt_object(game, "details") or {}
        table = _opt_object(details, "table") or {}
        table_id = table.get("id")
        game_id = table_id if isinstance(table_id, str) and table_id else (game_type or "")
        return (round_id, _text(tx, "id", "transaction."), _text(tx, "refId", "transaction."),
                _number(tx, "amount", "transaction."), game_id[:MAX_TEXT])

    async def _run(self, cmd: Command, uuid: str,
                   overrides: Mapping[type[e.GatewayError], str] | None = None) -> Reply:
        result = await self.wallet.execute(cmd)
        status, err = flow.outcome(self, result, OK, overrides)
        if err is not None and status != OK:
            raise _Answer(status, result)
        return self._ok(result.balance, result.currency, uuid)

    # --- calls -------------------------------------------------------------------------------------
    async def _check(self, request: web.Request, d: dict[str, Any]) -> Reply:
        sid, user, uuid = self._head(d)
        channel = _opt_object(d, "channel")
        if channel is not None and not isinstance(channel.get("type", ""), str):
            raise e.MalformedBody("channel.type must be a string")
        session = await flow.bet_session(self, sid, user)
        if self._rotate:
            session = await self.wallet.rotate_session(session)
        return {"status": OK, "sid": session.token, "uuid": uuid}

    async def _balance(self, request: web.Request, d: dict[str, Any]) -> Reply:
        sid, user, uuid = self._head(d)
        _opt_object(d, "game")
        session = await flow.bet_session(self, sid, user)
        self._currency(d, session)
        return self._ok(await self.wallet.balance(session), session.currency, uuid)

    async def _debit(self, request: web.Request, d: dict[str, Any]) -> Reply:
        sid, user, uuid = self._head(d)
        round_id, _, ref, raw, game_id = self._play(d)
        session = await flow.bet_session(self, sid, user)
        currency = self._currency(d, session)
        amount = to_minor(raw, currency)
        if amount == 0:
            raise e.InvalidAmount("a debit must have a positive amount")
        cmd = flow.build(self, session, Kind.BET, tx_id=f"debit:{ref}", round_id=round_id, amount=amount,
                         game_id=game_id, traceparent=request.headers.get("traceparent"))
        return await self._run(cmd, uuid, self.DEBIT_OVERRIDES)

    async def _credit(self, request: web.Request, d: dict[str, Any]) -> Reply:
        sid, user, uuid = self._head(d)
        round_id, tx, ref, raw, game_id = self._play(d)
        session = await flow.settlement_session(self, sid, user)
        currency = self._currency(d, session)
        cmd = flow.build(self, session, Kind.WIN, tx_id=f"credit:{tx}", ref_tx_id=f"debit:{ref}",
                         round_id=round_id, amount=to_minor(raw, currency), single_settlement=True,
                         game_id=game_id, traceparent=request.headers.get("traceparent"))
        return await self._run(cmd, uuid, self.CREDIT_OVERRIDES)

    async def _cancel(self, request: web.Request, d: dict[str, Any]) -> Reply:
        sid, user, uuid = self._head(d)
        round_id, tx, ref, raw, game_id = self._play(d)
        session = await flow.settlement_session(self, sid, user)
        to_minor(raw, self._currency(d, session))  # the debit's amount is refunded; this one must be exact
        cmd = flow.build(self, session, Kind.ROLLBACK, tx_id=f"cancel:{tx}", ref_tx_id=f"debit:{ref}",
                         round_id=round_id, single_settlement=True, game_id=game_id,
                         traceparent=request.headers.get("traceparent"))
        return await self._run(cmd, uuid)

    async def _promo_payout(self, request: web.Request, d: dict[str, Any]) -> Reply:
        sid, user, uuid = self._head(d)
        promo = _object(d, "promoTransaction")
        kind, promo_id = _text(promo, "type", "promoTransaction."), _text(promo, "id", "promoTransaction.")
        raw = _number(promo, "amount", "promoTransaction.")
        game = _opt_object(d, "game")
        round_id = _text(game, "id", "game.") if game else f"promo:{promo_id}"
        session = await flow.settlement_session(self, sid, user)
        currency = self._currency(d, session)
        free = kind.startswith("FreeRound")
        credit_type = "jackpot" if kind == "JackpotWin" else "bonus" if free else "promo"
        cmd = flow.build(self, session, Kind.WIN, tx_id=f"promo:{promo_id}", round_id=round_id,
                         amount=to_minor(raw, currency), credit_type=credit_type, free_round=free,
                         traceparent=request.headers.get("traceparent"))
        return await self._run(cmd, uuid)

