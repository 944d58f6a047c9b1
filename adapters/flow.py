"""The steps every protocol takes between authenticating a call and rendering its answer.

Kept in one place because they carry the money rules the protocols share: only a bet needs a live
session; a settlement (win, rollback, refund, cancel) is owed to the player and is never refused because
a session expired or was evicted, so it falls back to the player's profile (under the brand the call
can only mean: the provider's one brand or the player's one brand there, never a guess among several);
a token that names another player is refused rather than silently re-targeted; a provider may only act
for its configured brands.
The ledger's ``Result`` becomes an error through ``core.errors.error_for`` and a protocol code through
the adapter's one ``ERRORS`` table (plus a per-call override where a protocol answers the same ledger
outcome differently for different calls).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from adapters.base import Adapter
from core.commands import Command, Kind, Result
from core.errors import Forbidden, GatewayError, InvalidToken, error_for
from core.records import PlayerSession

#: how one ledger outcome is answered: the protocol code and, when it is not a plain success, the error
Outcome = tuple[Any, GatewayError | None]


def check_brand(adapter: Adapter, session: PlayerSession) -> PlayerSession:
    brands = adapter.config.brands
    if brands and session.brand_id not in brands:
        raise Forbidden(f"provider {adapter.config.id} does not serve brand {session.brand_id}")
    return session


async def bet_session(adapter: Adapter, token: str, player_id: str | None) -> PlayerSession:
    """A live session for a bet: unknown or expired tokens are refused, as is another player's token."""
    session = await adapter.wallet.session(adapter.config.id, token)
    if player_id is not None and session.player_id != player_id:
        raise InvalidToken("token belongs to another player")
    return check_brand(adapter, session)


async def settlement_session(adapter: Adapter, token: str | None, player_id: str) -> PlayerSession:
    """The player's keys for money owed to them: an expired or evicted token never blocks it."""
    session: PlayerSession | None = None
    if token:
        try:
            session = await adapter.wallet.session(adapter.config.id, token, allow_expired=True)
        except InvalidToken:
            session = None
        else:
            if session.player_id != player_id:
                raise InvalidToken("token belongs to another player")
    if session is None:
        session = await adapter.wallet.profile(adapter.config.id, player_id, adapter.config.brands)
    return check_brand(adapter, session)


def build(adapter: Adapter, session: PlayerSession, kind: Kind, *, tx_id: str, round_id: str,
          amount: int = 0, traceparent: str | None = None, **extra: Any) -> Command:
    """``wallet.command`` (an invalid command is the wallet's ``BadInput``, answered as the protocol's
    validation error through ``ERRORS``)."""
    return adapter.wallet.command(session, kind, tx_id=tx_id, round_id=round_id, amount=amount,
                                  traceparent=traceparent, **extra)


def outcome(adapter: Adapter, result: Result, ok: Any,
            overrides: Mapping[type[GatewayError], Any] | None = None) -> Outcome:
    """The protocol code for a ledger result (``ok`` when it simply succeeded) and its error, if any."""
    err = error_for(result)
    if err is None:
        return ok, None
    return code_for(adapter, err, overrides), err


def code_for(adapter: Adapter, err: GatewayError,
             overrides: Mapping[type[GatewayError], Any] | None = None) -> Any:
    """The protocol code for an error; an ``overrides`` entry wins unless ``ERRORS`` names a nearer base."""
    if overrides:
        for base in type(err).__mro__:
            if base in overrides:
                return overrides[base]
            if base in adapter.ERRORS:
                break
    return adapter.error_code(err)
