"""The gateway's own provider protocol (``native``), described by ``/openapi.json``.

JSON over HTTPS, each request signed: ``X-Signature: hex(HMAC-SHA256(secret, raw body))``, checked
in constant time on the raw bytes before anything is parsed. Amounts are decimal strings converted
exactly to minor units of the session's currency. Success is HTTP 200 ``{"status": "OK", ...}``; an
error carries the class's HTTP status and ``{"status": "ERROR", "code", "message", "retryable"}``
(plus ``Retry-After`` when retryable). A retried call answers 200 with ``"duplicate": true``, the
original transaction id and the current balance.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, ClassVar

import orjson
from aiohttp import web

from adapters import flow
from adapters.base import Adapter, Echo, WalletPort
from core import errors as E
from core.commands import Kind, Result
from core.http import field, header_bytes, json_object
from core.money import exponent, format_minor, to_minor
from core.records import PlayerSession, ProviderConfig

SIGNATURE_HEADER = "X-Signature"
OK = "OK"


def sign(secret: str, body: bytes) -> str:
    return hmac.digest(secret.encode(), body, hashlib.sha256).hex()


def _bool(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise E.MalformedBody(f"field {name!r} must be a boolean")
    return value


class NativeAdapter(Adapter):
    protocol = "native"
    #: every error class → its own code (the class carries the HTTP status); success-like outcomes → OK
    ERRORS: ClassVar[dict[type[E.GatewayError], str]] = {
        cls: cls.code for cls in E.concrete_errors()
    } | {E.RollbackOfUnknown: OK, E.AlreadyRolledBack: OK, E.Duplicate: OK}

    def __init__(self, config: ProviderConfig, wallet: WalletPort) -> None:
        super().__init__(config, wallet)
        self._key = config.secret.encode()

    def routes(self) -> list[web.AbstractRouteDef]:
        return [
            web.post("/authenticate", self.endpoint(self.authenticate)),
            web.post("/balance", self.endpoint(self.balance)),
            web.post("/bet", self.endpoint(self.bet)),
            web.post("/win", self.endpoint(self.win)),
            web.post("/rollback", self.endpoint(self.rollback)),
            web.post("/end-round", self.endpoint(self.end_round)),
        ]

    # ------------------------------------------------------------------ the hooks of ``Adapter.handle``
    def decode(self, request: web.Request, raw: bytes, echo: Echo) -> dict[str, Any]:
        given = header_bytes(request, SIGNATURE_HEADER) or b""
        # the one-shot C digest with the key encoded once: no HMAC object per call
        if not hmac.compare_digest(given, hmac.digest(self._key, raw, hashlib.sha256).hex().encode()):
            raise E.InvalidSignature()
        return json_object(raw)

    def render(self, reply: dict[str, Any]) -> web.Response:
        return _json(200, {"status": OK, **reply})

    def render_error(self, exc: E.GatewayError, echo: Echo) -> web.Response:
        code = self.error_code(exc)
        out: dict[str, Any] = {"status": "ERROR", "code": code, "message": exc.detail,
                               "retryable": isinstance(exc, E.Retryable)}
        if exc.balance is not None and exc.currency:
            out["balance"] = format_minor(exc.balance, exc.currency)
            out["currency"] = exc.currency
        headers = {}
        if isinstance(exc, E.Retryable):
            out["retry_after_s"] = round(exc.retry_after_s, 3)
            headers["Retry-After"] = str(max(1, int(exc.retry_after_s + 0.999)))
        return _json(exc.http_status, out, headers)

    def _money_answer(self, result: Result) -> dict[str, Any]:
        err = E.error_for(result)
        if err is not None and self.error_code(err) != OK:
            raise err
        return {"balance": format_minor(result.balance, result.currency), "currency": result.currency,
                "transaction_id": str(result.ledger_tx), "duplicate": result.duplicate,
                "outcome": str(result.status)}

    async def _settle_session(self, body: dict[str, Any]) -> PlayerSession:
        token = body.get("session_token")
        if token is not None and token != "":  # empty: settle by player_id
            token = field(body, "session_token", max_len=200)
        player = body.get("player_id")
        if player is None:
            if not token:
                raise E.MalformedBody("session_token or player_id is required")
            return await self.wallet.session(self.config.id, token, allow_expired=True)
        return await flow.settlement_session(self, token, field(body, "player_id"))

    def _amount(self, body: dict[str, Any], session: PlayerSession) -> int:
        currency = field(body, "currency", max_len=3)
        exponent(currency)
        if currency != session.currency:
            raise E.WrongCurrency(f"session currency is {session.currency}, not {currency}")
        amount = body.get("amount")
        if not isinstance(amount, str):
            raise E.InvalidAmount("amount must be a decimal string, e.g. \"1.50\"")
        return to_minor(amount, currency)

    # ------------------------------------------------------------------ calls
    async def authenticate(self, request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
        session = await self.wallet.open_session(self.config.id, field(body, "launch_token"))
        balance = await self.wallet.balance(session)
        return {"session_token": session.token, "player_id": session.player_id, "currency": session.currency,
                "balance": format_minor(balance, session.currency), "expires_ms": session.expires_ms}

    async def balance(self, request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
        session = await self.wallet.session(self.config.id, field(body, "session_token", max_len=200))
        balance = await self.wallet.balance(session)
        return {"balance": format_minor(balance, session.currency), "currency": session.currency}

    async def bet(self, request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
        session = await flow.bet_session(self, field(body, "session_token", max_len=200), None)
        amount = self._amount(body, session)
        cmd = flow.build(self, session, Kind.BET, tx_id=field(body, "transaction_id"),
                         round_id=field(body, "round_id"), amount=amount,
                         traceparent=request.headers.get("traceparent"),
                         game_id=field(body, "game_id", required=False),
                         free_round=_bool(body, "free_round"), round_closed=_bool(body, "round_closed"))
        return self._money_answer(await self.wallet.execute(cmd))

    async def win(self, request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
        session = await self._settle_session(body)
        amount = self._amount(body, session)
        credit_type = body.get("type", "win")
        if credit_type not in ("win", "bonus", "jackpot", "promo"):
            raise E.MalformedBody("type must be win, bonus, jackpot or promo")
        ref = field(body, "bet_transaction_id", required=False) or None
        cmd = flow.build(self, session, Kind.WIN, tx_id=field(body, "transaction_id"),
                         round_id=field(body, "round_id"), amount=amount, ref_tx_id=ref,
                         traceparent=request.headers.get("traceparent"), credit_type=credit_type,
                         game_id=field(body, "game_id", required=False),
                         free_round=_bool(body, "free_round"), round_closed=_bool(body, "round_closed"))
        return self._money_answer(await self.wallet.execute(cmd))

    async def rollback(self, request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
        session = await self._settle_session(body)
        ref = field(body, "bet_transaction_id")
        cmd = flow.build(self, session, Kind.ROLLBACK, tx_id=field(body, "transaction_id"),
                         round_id=field(body, "round_id", required=False) or ref, ref_tx_id=ref,
                         traceparent=request.headers.get("traceparent"),
                         round_closed=_bool(body, "round_closed"))
        return self._money_answer(await self.wallet.execute(cmd))

    async def end_round(self, request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
        session = await self._settle_session(body)
        round_id = field(body, "round_id")
        tx_id = field(body, "transaction_id", required=False) or f"end:{round_id}"
        cmd = flow.build(self, session, Kind.END_ROUND, tx_id=tx_id, round_id=round_id,
                         traceparent=request.headers.get("traceparent"))
        return self._money_answer(await self.wallet.execute(cmd))


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json",
                        headers=headers)

