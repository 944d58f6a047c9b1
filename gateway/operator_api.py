"""The operator API: session launch, cash in and out, balances, responsible gaming, admin.

Every call needs an API key (``Authorization: Bearer <key>``) with a role: ``operator`` for player
and wallet calls, ``admin`` additionally for degradation control. Cash enters and leaves wallets only
as ledger commands carrying the caller's idempotency key: there is no call that edits a balance.
Limit decreases apply at once; increases and removals wait for the cooling-off period (decided in
the ledger, so a racing bet never sees a half-applied change). Money limits are per currency (the call
names it); session minutes and self-exclusion hold for every currency and need none.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

from aiohttp import web

from core import errors as E
from core.commands import Kind, Result
from core.http import Handler, error_response, field, header_bytes, json_response, query_field, read_json
from core.money import exponent, format_minor, to_minor
from core.records import PlayerSession
from core.settings import SETTINGS_KEY
from gateway.degradation import scope_name
from gateway.providers import adapter_class
from gateway.state import STATE_KEY
from ledger.rules import MONEY_LIMITS

OPERATOR_PROVIDER = "operator"
#: ISO 4217's code for "no currency": what a limits call without money limits carries as its currency
NO_CURRENCY = "XXX"


def _role(request: web.Request) -> str:
    # a header that is not printable ASCII is no key (and is never encoded: see ``header_bytes``)
    auth = header_bytes(request, "Authorization") or b""
    key = auth[7:] if auth.startswith(b"Bearer ") else header_bytes(request, "X-Api-Key") or b""
    roles = request.app[SETTINGS_KEY].api_key_roles
    for known, role in roles.items():
        if hmac.compare_digest(known.encode(), key):
            return role
    raise E.Unauthorized()


def guarded(role: str) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        async def wrapper(request: web.Request) -> web.StreamResponse:
            try:
                have = _role(request)
                if role == "admin" and have != "admin":
                    raise E.Forbidden("admin role required")
                return await fn(request)
            except E.GatewayError as exc:
                return error_response(exc)
        return wrapper
    return deco


def _player(body: dict[str, Any], provider_id: str = OPERATOR_PROVIDER, *,
            currency_required: bool = True) -> PlayerSession:
    currency = field(body, "currency", max_len=3, required=currency_required) or NO_CURRENCY
    if currency != NO_CURRENCY or currency_required:
        exponent(currency)
    return PlayerSession(
        token="", provider_id=provider_id, tenant_id=field(body, "tenant_id"), brand_id=field(body, "brand_id"),
        license=field(body, "license"), player_id=field(body, "player_id"), currency=currency,
        country=field(body, "country", max_len=2, required=False), game_id=field(body, "game_id", required=False),
    )


def _raise_unless_applied(result: Result) -> None:
    """A retry (same key, same request) answers like the original; anything else not applied is an error."""
    err = E.error_for(result)
    if err is not None and not isinstance(err, E.Duplicate):
        raise err


@guarded("operator")
async def launch_session(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    state = request.app[STATE_KEY]
    provider_id = field(body, "provider_id")
    provider = state.providers.get(provider_id)
    if provider is None or not provider.enabled:
        raise E.NotFound(f"unknown or disabled provider {provider_id!r}")
    template = _player(body, provider_id)
    if provider.brands and template.brand_id not in provider.brands:
        raise E.Forbidden(f"provider {provider_id} does not serve brand {template.brand_id}")
    token, ttl = await state.wallet.launch(template)
    if not adapter_class(provider.protocol).EXCHANGES_LAUNCH_TOKEN:
        session = await state.wallet.open_session(provider_id, token)
        return json_response({"launch_token": session.token, "session_token": session.token,
                              "expires_in_s": state.settings.session_ttl_s, "provider_id": provider_id}, 201)
    return json_response({"launch_token": token, "expires_in_s": ttl, "provider_id": provider_id}, 201)


async def _cash(request: web.Request, kind: Kind) -> web.StreamResponse:
    body = await read_json(request)
    state = request.app[STATE_KEY]
    player = _player(body)
    amount = body.get("amount")
    if not isinstance(amount, str):
        raise E.InvalidAmount("amount must be a decimal string, e.g. \"10.00\"")
    minor = to_minor(amount, player.currency)
    if minor <= 0:
        raise E.InvalidAmount("amount must be positive")
    key = field(body, "idempotency_key")
    cmd = state.wallet.command(player, kind, tx_id=key, round_id=f"cash:{key}", amount=minor,
                               traceparent=request.headers.get("traceparent"))
    result = await state.wallet.execute(cmd, guard=False)
    _raise_unless_applied(result)
    return json_response({"status": "OK", "balance": format_minor(result.balance, result.currency),
                          "currency": result.currency, "transaction_id": str(result.ledger_tx),
                          "duplicate": result.duplicate})


@guarded("operator")
async def deposit(request: web.Request) -> web.StreamResponse:
    return await _cash(request, Kind.DEPOSIT)


@guarded("operator")
async def withdraw(request: web.Request) -> web.StreamResponse:
    return await _cash(request, Kind.WITHDRAW)


@guarded("operator")
async def balance(request: web.Request) -> web.StreamResponse:
    brand, player = query_field(request, "brand_id"), query_field(request, "player_id")
    currency = query_field(request, "currency", max_len=3)
    exponent(currency)
    value = await request.app[STATE_KEY].wallet.balance_of(brand, player, currency)
    return json_response({"balance": format_minor(value, currency), "currency": currency})


async def _rg(request: web.Request, limits: dict[str, int | None], body: dict[str, Any]) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    player = _player(body, currency_required=False)
    key = field(body, "idempotency_key")
    cmd = state.wallet.command(player, Kind.RG_SET, tx_id=key, round_id=f"rg:{key}", limits=limits,
                               traceparent=request.headers.get("traceparent"))
    result = await state.wallet.execute(cmd, guard=False)
    _raise_unless_applied(result)
    currency = None if player.currency == NO_CURRENCY else player.currency
    current = await state.limits(player.brand_id, player.player_id, currency)
    return json_response({"status": "OK", "duplicate": result.duplicate, "currency": currency, "limits": current})


@guarded("operator")
async def set_limits(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    raw = body.get("limits")
    if not isinstance(raw, dict) or not raw:
        raise E.MalformedBody("limits must be an object, e.g. {\"loss_day\": \"100.00\"}")
    # a money limit is in one currency's minor units, and holds for that currency only
    currency = field(body, "currency", max_len=3, required=any(name in MONEY_LIMITS for name in raw))
    limits: dict[str, int | None] = {}
    for name, value in raw.items():
        if name in MONEY_LIMITS:
            if value is not None and not isinstance(value, str):
                raise E.InvalidAmount(f"{name} must be a decimal string or null")
            limits[name] = None if value is None else to_minor(value, currency)
        elif name == "session_minutes":
            if value is not None and (type(value) is not int or not 0 < value <= 24 * 60):
                raise E.MalformedBody("session_minutes must be an integer 1..1440 or null")
            limits[name] = value
        else:
            raise E.MalformedBody(f"unknown limit {name!r}")
    return await _rg(request, limits, body)


@guarded("operator")
async def self_exclude(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    days = body.get("days")
    if type(days) is not int or not 1 <= days <= 36500:
        raise E.MalformedBody("days must be an integer 1..36500")
    until = request.app[STATE_KEY].wallet.now_ms() + days * 86_400_000
    return await _rg(request, {"self_exclude_until_ms": until}, body)


@guarded("operator")
async def get_limits(request: web.Request) -> web.StreamResponse:
    brand, player = query_field(request, "brand_id"), query_field(request, "player_id")
    currency = query_field(request, "currency", max_len=3) if "currency" in request.query else None
    if currency is not None:
        exponent(currency)
    return json_response({"currency": currency,
                          "limits": await request.app[STATE_KEY].limits(brand, player, currency)})


@guarded("admin")
async def get_degradation(request: web.Request) -> web.StreamResponse:
    return json_response(request.app[STATE_KEY].degradation.snapshot())


@guarded("admin")
async def set_degradation(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    scope = field(body, "scope")
    kind, _, ident = scope.partition(":")
    mode = field(body, "mode")
    state = request.app[STATE_KEY]
    changed = state.degradation.set_mode(scope_name(kind, ident), mode, "admin",
                                    field(body, "reason", max_len=500, required=False))
    return json_response({"changed": changed, **state.degradation.snapshot()})


def routes() -> list[web.RouteDef]:
    return [
        web.post("/v1/sessions", launch_session),
        web.post("/v1/wallet/deposit", deposit),
        web.post("/v1/wallet/withdraw", withdraw),
        web.get("/v1/wallet/balance", balance),
        web.put("/v1/players/limits", set_limits),
        web.get("/v1/players/limits", get_limits),
        web.post("/v1/players/self-exclusion", self_exclude),
        web.get("/v1/admin/degradation", get_degradation),
        web.put("/v1/admin/degradation", set_degradation),
    ]
