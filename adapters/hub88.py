"""Hub88 operator wallet API: RSA-signed JSON, always HTTP 200 with a ``status``.

Hub88 decides what to do next from ``status`` alone (a non-200 is a network failure to it), so every path
here, errors and crashes included, answers 200 with a status. The signature is checked over the exact raw
body bytes before anything is parsed. Money is ``value * 100 000`` for every currency; it becomes minor
units only when it is an exact multiple of ``10^(5 - exponent)`` (refused otherwise, never rounded), and
balances go back the same way. A bet that failed for a retryable reason answers ``RS_ERROR_UNKNOWN`` so
Hub88 rolls it back; that rollback works whether or not the bet was applied (tombstone), which is what
makes shedding bets safe. Settlements never depend on the token being alive.

The provider side (``Hub88Client``, correctly signed requests for tests and load) is ``adapters.sim.hub88``.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, ClassVar, TypeGuard

import orjson
from aiohttp import web
from cryptography.exceptions import InvalidSignature as _BadRsaSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from adapters import flow
from adapters.base import Adapter, Echo, WalletPort
from core import errors as e
from core.commands import Command, Kind, clean_text
from core.http import header_bytes, json_object, unique_keys
from core.money import exponent
from core.records import PlayerSession, ProviderConfig

SIGNATURE_HEADER = "X-Hub88-Signature"
#: Hub88 money is the value times this, for every currency
SCALE_DIGITS = 5
#: longest id or free-text field accepted (the ledger refuses ids over 200 characters)
MAX_TEXT = 128

OK = "RS_OK"
#: Hub88 money per minor unit, by currency exponent (0..5)
_STEP: tuple[int, ...] = (100_000, 10_000, 1_000, 100, 10, 1)


def _step(currency: str) -> int:
    exp = exponent(currency)
    if exp > SCALE_DIGITS:
        raise e.UnknownCurrency(f"{currency} has more decimals than Hub88 money can carry")
    return _STEP[exp]


def to_minor(amount: object, currency: str) -> int:
    """Hub88 integer money → minor units of ``currency``, exactly, or ``InvalidAmount``."""
    if type(amount) is not int:
        raise _WrongTypes("amount must be an integer")
    step = _step(currency)
    if amount < 0:
        raise e.InvalidAmount("amount must not be negative")
    if amount % step:
        raise e.InvalidAmount(f"amount {amount} is finer than {currency} minor units")
    return amount // step


def from_minor(minor: int, currency: str) -> int:
    """Minor units → Hub88 integer money."""
    return minor * _step(currency)


class _WrongTypes(Exception):
    """A field of the wrong JSON type (``RS_ERROR_WRONG_TYPES``); internal to this protocol."""


def _load_public_key(pem: str) -> rsa.RSAPublicKey:
    if not pem:
        raise ValueError("a hub88 provider needs public_key_pem (Hub88's public key)")
    key = serialization.load_pem_public_key(pem.encode())
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("public_key_pem is not an RSA public key")
    return key


def _echoable(value: object) -> TypeGuard[str]:
    """A string the answer may repeat back (``user``, ``request_uuid``): what ``_Fields.text`` accepts."""
    return isinstance(value, str) and 0 < len(value) <= MAX_TEXT and clean_text(value)


class _Fields:
    """Strict reader of one request object: missing → WRONG_SYNTAX, wrong type → WRONG_TYPES."""

    __slots__ = ("d",)

    def __init__(self, d: dict[str, Any]) -> None:
        self.d = d

    def text(self, name: str) -> str:
        if name not in self.d:
            raise e.MalformedBody(f"missing {name}")
        return self._text(name, self.d[name])

    def opt_text(self, name: str) -> str | None:
        value = self.d.get(name)
        return None if value is None else self._text(name, value)

    @staticmethod
    def _text(name: str, value: object) -> str:
        if not _echoable(value):
            raise _WrongTypes(f"{name} must be a non-empty string of at most {MAX_TEXT} characters, "
                              "without control characters")
        return value

    def flag(self, name: str, default: bool | None = None) -> bool:
        if name not in self.d:
            if default is None:
                raise e.MalformedBody(f"missing {name}")
            return default
        value = self.d[name]
        if type(value) is not bool:
            raise _WrongTypes(f"{name} must be a boolean")
        return value

    def check(self, name: str, *types: type) -> None:
        """An optional field we do not use must still have its documented type."""
        value = self.d.get(name)
        if value is not None and not isinstance(value, types):
            raise _WrongTypes(f"{name} has the wrong type")

    def round_id(self, fallback_tx: str) -> str:
        # "round" is nullable; a round-less call is keyed on the bet it concerns, so a bet, its win and
        # its rollback (and their retries) always name the same round
        return f"tx:{fallback_tx}" if self.d.get("round") in (None, "") else self.text("round")


class Hub88Adapter(Adapter):
    protocol = "hub88"
    EXCHANGES_LAUNCH_TOKEN = False
    OK: ClassVar[str] = OK

    ERRORS: ClassVar[dict[type[e.GatewayError], str]] = {
        e.GatewayError: "RS_ERROR_UNKNOWN",
        e.InternalError: "RS_ERROR_UNKNOWN",
        # bad input
        e.BadInput: "RS_ERROR_WRONG_SYNTAX",
        e.MalformedBody: "RS_ERROR_WRONG_SYNTAX",
        e.PayloadTooLarge: "RS_ERROR_WRONG_SYNTAX",
        e.NotFound: "RS_ERROR_WRONG_SYNTAX",
        e.InvalidAmount: "RS_ERROR_WRONG_TYPES",
        e.UnknownCurrency: "RS_ERROR_WRONG_CURRENCY",
        e.WrongCurrency: "RS_ERROR_WRONG_CURRENCY",
        e.InvalidSignature: "RS_ERROR_INVALID_SIGNATURE",
        e.Unauthorized: "RS_ERROR_INVALID_SIGNATURE",
        e.Forbidden: "RS_ERROR_INVALID_PARTNER",
        e.InvalidToken: "RS_ERROR_INVALID_TOKEN",
        e.TokenExpired: "RS_ERROR_TOKEN_EXPIRED",
        # Hub88 has no "unknown user": the user a token or call names does not exist for us
        e.UnknownPlayer: "RS_ERROR_INVALID_TOKEN",
        e.AmbiguousPlayer: "RS_ERROR_INVALID_TOKEN",  # the token would have named the brand
        e.UnknownGame: "RS_ERROR_INVALID_GAME",
        # retryable: a bet answered so is rolled back by Hub88; settlements are retried
        e.Retryable: "RS_ERROR_UNKNOWN",
        e.RateLimited: "RS_ERROR_UNKNOWN",
        e.Overloaded: "RS_ERROR_UNKNOWN",
        e.LedgerTimeout: "RS_ERROR_UNKNOWN",
        e.BetsPaused: "RS_ERROR_UNKNOWN",
        e.NoNewSessions: "RS_ERROR_UNKNOWN",
        e.BodyTimeout: "RS_ERROR_UNKNOWN",
        # refusals
        e.Refused: "RS_ERROR_UNKNOWN",
        e.InsufficientFunds: "RS_ERROR_NOT_ENOUGH_MONEY",
        e.LimitReached: "RS_ERROR_LIMIT_REACHED",
        e.SelfExcluded: "RS_ERROR_USER_DISABLED",
        e.LossLimitReached: "RS_ERROR_LIMIT_REACHED",
        e.StakeLimitExceeded: "RS_ERROR_LIMIT_REACHED",
        e.SessionTimeLimit: "RS_ERROR_LIMIT_REACHED",
        e.TransactionRolledBack: "RS_ERROR_TRANSACTION_ROLLED_BACK",
        e.BetNotFound: "RS_ERROR_TRANSACTION_DOES_NOT_EXIST",
        e.RoundNotFound: "RS_ERROR_TRANSACTION_DOES_NOT_EXIST",
        e.BetAlreadySettled: "RS_ERROR_DUPLICATE_TRANSACTION",
        # no status of its own: a final refusal, after which Hub88 rolls the bet back (a no-op)
        e.RoundClosed: "RS_ERROR_UNKNOWN",
        e.RollbackOfUnknown: OK,
        e.AlreadyRolledBack: OK,
        # a transaction id reused with other details
        e.IdempotencyConflict: "RS_ERROR_DUPLICATE_TRANSACTION",
        # duplicates: a retry answers RS_OK with the current balance
        e.Duplicate: OK,
    }

    def __init__(self, config: ProviderConfig, wallet: WalletPort) -> None:
        super().__init__(config, wallet)
        self._key = _load_public_key(config.public_key_pem)

    def routes(self) -> list[web.AbstractRouteDef]:
        return [
            web.post("/user/info", self.endpoint(self._user_info)),
            web.post("/user/balance", self.endpoint(self._balance)),
            web.post("/transaction/bet", self.endpoint(self._bet)),
            web.post("/transaction/win", self.endpoint(self._win)),
            web.post("/transaction/rollback", self.endpoint(self._rollback)),
        ]

    # --- the hooks of ``Adapter.handle``: signature, syntax, one answer shape ------------------------
    def verify(self, body: bytes, signature: bytes | str | None) -> None:
        """Raise unless ``signature`` (base64) is Hub88's RSA-SHA256 (PKCS#1 v1.5) signature of ``body``."""
        if not signature:
            raise e.Unauthorized(f"missing or non-ASCII {SIGNATURE_HEADER}")
        try:
            raw = base64.b64decode(signature, validate=True)
            self._key.verify(raw, body, padding.PKCS1v15(), hashes.SHA256())
        except (binascii.Error, ValueError, _BadRsaSignature):
            raise e.InvalidSignature() from None

    def decode(self, request: web.Request, raw: bytes, echo: Echo) -> _Fields:
        self.verify(raw, header_bytes(request, SIGNATURE_HEADER))
        data = json_object(raw, unique=False)
        for key in ("user", "request_uuid"):
            if _echoable(data.get(key)):
                echo[key] = data[key]
        unique_keys(raw, data)
        return _Fields(data)

    def render(self, reply: dict[str, Any]) -> web.Response:
        return web.Response(body=orjson.dumps(reply), content_type="application/json")

    def render_error(self, exc: e.GatewayError, echo: Echo) -> web.Response:
        return self.render(self._error(echo, self.error_code(exc), exc))

    def own_answer(self, exc: Exception, echo: Echo) -> web.Response | None:
        if not isinstance(exc, _WrongTypes):
            return None
        self.log.debug("hub88 %s: %s", self.config.id, exc)
        return self.render(self._error(echo, "RS_ERROR_WRONG_TYPES", None))

    @staticmethod
    def _error(echo: Echo, status: str, exc: e.GatewayError | None) -> dict[str, Any]:
        reply: dict[str, Any] = {"user": echo.get("user", ""), "status": status,
                                 "request_uuid": echo.get("request_uuid", "")}
        if exc is not None and exc.currency and exc.balance is not None:
            try:
                reply["currency"] = exc.currency
                reply["balance"] = from_minor(exc.balance, exc.currency)
            except e.UnknownCurrency:
                reply.pop("currency")
        return reply

    @staticmethod
    def _ok(f: _Fields, status: str, balance: int, currency: str) -> dict[str, Any]:
        return {"user": f.d["user"], "status": status, "request_uuid": f.d["request_uuid"],
                "currency": currency, "balance": from_minor(balance, currency)}

    # --- calls ---------------------------------------------------------------------------------------
    async def _user_info(self, request: web.Request, f: _Fields) -> dict[str, Any]:
        user, _ = f.text("user"), f.text("request_uuid")
        session = await flow.settlement_session(self, None, user)
        reply: dict[str, Any] = {"user": user, "status": OK, "request_uuid": f.d["request_uuid"],
                                 "country": session.country, "jurisdiction": session.license}
        sub_partner = self.config.options.get("sub_partner_id")
        if sub_partner:
            reply["sub_partner_id"] = str(sub_partner)
        return reply

    async def _balance(self, request: web.Request, f: _Fields) -> dict[str, Any]:
        user, token, _ = f.text("user"), f.text("token"), f.text("request_uuid")
        f.check("game_code", str)
        f.check("game_id", int)
        session = await flow.settlement_session(self, token, user)
        return self._ok(f, OK, await self.wallet.balance(session), session.currency)

    def _common(self, f: _Fields) -> tuple[str, str, str, str]:
        user, tx, token, _ = f.text("user"), f.text("transaction_uuid"), f.text("token"), f.text("request_uuid")
        for name in ("supplier_transaction_id", "supplier_user", "reward_uuid", "bet"):
            f.check(name, str)
        f.check("meta", dict)
        f.flag("is_aggregated", default=False)
        return user, tx, token, f.text("game_code")

    @staticmethod
    def _money(f: _Fields) -> tuple[str, int]:
        currency = f.text("currency")
        if "amount" not in f.d:
            raise e.MalformedBody("missing amount")
        return currency, to_minor(f.d["amount"], currency)

    @staticmethod
    def _same_currency(currency: str, session: PlayerSession) -> None:
        if currency != session.currency:
            raise e.WrongCurrency(f"{currency} is not the wallet's {session.currency}")

    async def _bet(self, request: web.Request, f: _Fields) -> dict[str, Any]:
        user, tx, token, game = self._common(f)
        round_closed, is_free = f.flag("round_closed"), f.flag("is_free")
        round_id = f.round_id(tx)
        currency, amount = self._money(f)
        if is_free:
            amount = 0  # the reward pays the stake: a free bet moves no cash
        elif amount == 0:
            raise e.InvalidAmount("a bet that is not free must have a positive amount")
        session = await flow.bet_session(self, token, user)
        self._same_currency(currency, session)
        cmd = flow.build(self, session, Kind.BET, tx_id=tx, round_id=round_id, amount=amount,
                         free_round=is_free, round_closed=round_closed, game_id=game,
                         traceparent=request.headers.get("traceparent"))
        return await self._execute(f, cmd)

    async def _win(self, request: web.Request, f: _Fields) -> dict[str, Any]:
        user, tx, token, game = self._common(f)
        ref = f.text("reference_transaction_uuid")
        round_closed, is_free = f.flag("round_closed"), f.flag("is_free")
        round_id = f.round_id(ref)
        currency, amount = self._money(f)
        session = await flow.settlement_session(self, token, user)
        self._same_currency(currency, session)
        cmd = flow.build(self, session, Kind.WIN, tx_id=tx, round_id=round_id, amount=amount,
                         ref_tx_id=ref, free_round=is_free, credit_type="bonus" if is_free else "win",
                         round_closed=round_closed, game_id=game,
                         traceparent=request.headers.get("traceparent"))
        return await self._execute(f, cmd)

    async def _rollback(self, request: web.Request, f: _Fields) -> dict[str, Any]:
        user, tx, token, _ = f.text("user"), f.text("transaction_uuid"), f.text("token"), f.text("request_uuid")
        ref = f.text("reference_transaction_uuid")
        f.check("supplier_transaction_id", str)
        f.check("meta", dict)
        f.check("game_code", str)
        round_closed = f.flag("round_closed", default=False)
        round_id = f.round_id(ref)
        session = await flow.settlement_session(self, token, user)
        cmd = flow.build(self, session, Kind.ROLLBACK, tx_id=tx, round_id=round_id, ref_tx_id=ref,
                         round_closed=round_closed, game_id=f.opt_text("game_code") or "",
                         traceparent=request.headers.get("traceparent"))
        return await self._execute(f, cmd)

    async def _execute(self, f: _Fields, cmd: Command) -> dict[str, Any]:
        result = await self.wallet.execute(cmd)
        status, err = flow.outcome(self, result, OK)
        if err is not None and status != OK:
            raise err
        return self._ok(f, OK, result.balance, result.currency)

