"""Errors by who must act.

One root with a stable ``code``. ``BadInput`` is the caller's fault and never worth a retry;
``Retryable`` carries ``retry_after_s``; ``Refused`` is a money or limit decision the ledger made;
``Duplicate`` carries the original outcome (a conflicting reuse of its id is a ``Refused``, not a
``Duplicate``, so no table can answer it as a success by inheritance). Every adapter maps every
concrete class to its own protocol code through one table, and a test proves the tables are exhaustive.
"""

from __future__ import annotations

from typing import ClassVar

from core.commands import Result, Status


class GatewayError(Exception):
    code: ClassVar[str] = "error"
    http_status: ClassVar[int] = 500
    message: ClassVar[str] = "internal error"

    def __init__(self, detail: str = "", *, balance: int | None = None, currency: str | None = None,
                 result: Result | None = None) -> None:
        super().__init__(detail or self.message)
        self.detail = detail or self.message
        self.balance = balance if balance is not None else (result.balance if result else None)
        self.currency = currency if currency is not None else (result.currency if result else None)
        self.result = result


# --- bad input: never retried -------------------------------------------------------------------
class BadInput(GatewayError):
    code = "bad_request"
    http_status = 400
    message = "bad request"


class MalformedBody(BadInput):
    code = "malformed_body"
    message = "body is not valid for this endpoint"


class InvalidAmount(BadInput):
    code = "invalid_amount"
    message = "amount is not a valid non-negative value in the currency's minor units"


class UnknownCurrency(BadInput):
    code = "unknown_currency"
    message = "unknown currency"


class WrongCurrency(BadInput):
    code = "wrong_currency"
    http_status = 409
    message = "currency does not match the player's session"


class PayloadTooLarge(BadInput):
    code = "payload_too_large"
    http_status = 413
    message = "body too large"


class InvalidSignature(BadInput):
    code = "invalid_signature"
    http_status = 401
    message = "signature check failed"


class Unauthorized(BadInput):
    code = "unauthorized"
    http_status = 401
    message = "missing or invalid credentials"


class Forbidden(BadInput):
    code = "forbidden"
    http_status = 403
    message = "not allowed"


class InvalidToken(BadInput):
    code = "invalid_token"
    http_status = 401
    message = "unknown session token"


class TokenExpired(InvalidToken):
    code = "token_expired"
    message = "session token expired"


class UnknownPlayer(BadInput):
    code = "unknown_player"
    http_status = 404
    message = "unknown player"


class AmbiguousPlayer(UnknownPlayer):
    """A call without a session token names a player known under several brands: never guessed."""

    code = "ambiguous_player"
    message = "player known under several brands at this provider: send the session token"


class UnknownGame(BadInput):
    code = "unknown_game"
    http_status = 404
    message = "unknown or disabled game"


class NotFound(BadInput):
    code = "not_found"
    http_status = 404
    message = "not found"


# --- retryable: come back later -----------------------------------------------------------------
class Retryable(GatewayError):
    code = "retryable"
    http_status = 503
    message = "temporarily unavailable, retry"

    def __init__(self, detail: str = "", *, retry_after_s: float = 1.0, **kw: object) -> None:
        super().__init__(detail, **kw)  # type: ignore[arg-type]
        self.retry_after_s = retry_after_s


class RateLimited(Retryable):
    code = "rate_limited"
    http_status = 429
    message = "rate limit exceeded"


class Overloaded(Retryable):
    code = "overloaded"
    message = "ledger is behind: bet shed, retry"


class LedgerTimeout(Retryable):
    code = "ledger_timeout"
    message = "ledger did not answer in time, retry"


class BetsPaused(Retryable):
    code = "bets_paused"
    message = "bets are paused"


class BodyTimeout(Retryable):
    """The request body did not arrive within ``GATEWAY_HTTP_BODY_TIMEOUT_S``; nothing was done."""

    code = "body_timeout"
    http_status = 408
    message = "request body not received in time, retry"


class NoNewSessions(Retryable):
    code = "no_new_sessions"
    message = "no new sessions are accepted now"


# --- refused by the ledger: a money or limit decision -------------------------------------------
class Refused(GatewayError):
    code = "refused"
    http_status = 409
    message = "refused"


class InsufficientFunds(Refused):
    code = "insufficient_funds"
    http_status = 402
    message = "insufficient funds"


class LimitReached(Refused):
    code = "limit_reached"
    http_status = 403
    message = "responsible-gaming limit reached"


class SelfExcluded(LimitReached):
    code = "self_excluded"
    message = "player is self-excluded"


class LossLimitReached(LimitReached):
    code = "loss_limit"
    message = "loss limit reached"


class StakeLimitExceeded(LimitReached):
    code = "stake_limit"
    message = "stake above the player's maximum"


class SessionTimeLimit(LimitReached):
    code = "session_limit"
    message = "session time limit reached"


class TransactionRolledBack(Refused):
    code = "tx_rolled_back"
    message = "transaction was rolled back"


class BetNotFound(Refused):
    code = "bet_not_found"
    http_status = 404
    message = "referenced bet not found"


class BetAlreadySettled(Refused):
    code = "bet_already_settled"
    message = "bet already settled"


class RoundClosed(Refused):
    code = "round_closed"
    message = "round is closed"


class RoundNotFound(Refused):
    code = "round_not_found"
    http_status = 404
    message = "round has no bet"


class RollbackOfUnknown(Refused):
    """Recorded as a tombstone: most protocols answer success, some report the bet as unknown."""

    code = "rollback_of_unknown"
    http_status = 200
    message = "rollback of an unknown transaction recorded"


class AlreadyRolledBack(Refused):
    code = "already_rolled_back"
    http_status = 200
    message = "transaction already rolled back"


class IdempotencyConflict(Refused):
    """A transaction id reused with other details: refused, never answered as the retry it is not."""

    code = "idempotency_conflict"
    http_status = 409
    message = "transaction id reused with a different request"


# --- duplicates ---------------------------------------------------------------------------------
class Duplicate(GatewayError):
    """A retry: carries the original result; the current balance is in ``balance``."""

    code = "duplicate"
    http_status = 200
    message = "duplicate of an earlier request"


class InternalError(GatewayError):
    code = "internal_error"
    http_status = 500
    message = "internal error"


STATUS_ERRORS: dict[Status, type[GatewayError]] = {
    Status.TOMBSTONED: RollbackOfUnknown,
    Status.ALREADY_ROLLED_BACK: AlreadyRolledBack,
    Status.INSUFFICIENT_FUNDS: InsufficientFunds,
    Status.SELF_EXCLUDED: SelfExcluded,
    Status.LOSS_LIMIT: LossLimitReached,
    Status.STAKE_LIMIT: StakeLimitExceeded,
    Status.SESSION_LIMIT: SessionTimeLimit,
    Status.TX_ROLLED_BACK: TransactionRolledBack,
    Status.BET_NOT_FOUND: BetNotFound,
    Status.BET_ALREADY_SETTLED: BetAlreadySettled,
    Status.ROUND_CLOSED: RoundClosed,
    Status.ROUND_NOT_FOUND: RoundNotFound,
    Status.CONFLICT: IdempotencyConflict,
    Status.BAD_COMMAND: MalformedBody,
}


def error_for(result: Result) -> GatewayError | None:
    """The error a non-OK result stands for (``None`` when the command simply succeeded)."""
    if result.status is Status.OK and not result.duplicate:
        return None
    if result.status is Status.OK:
        return Duplicate(result=result)
    cls = STATUS_ERRORS[result.status]
    return cls(result.detail, result=result)


def concrete_errors() -> list[type[GatewayError]]:
    """Every error class an adapter must map (the whole tree below the root)."""
    seen: list[type[GatewayError]] = []
    todo: list[type[GatewayError]] = [GatewayError]
    while todo:
        cls = todo.pop()
        seen.append(cls)
        todo.extend(cls.__subclasses__())
    return seen
