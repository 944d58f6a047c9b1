"""What an exception no handler expected is answered with.

A backing service that is down or restarting (Redis holding the sessions, a shard's PostgreSQL serving
balance reads, NATS) is an outage, not a bug: the call is answered with the protocol's retryable error,
never a 500, because nothing was done that a retry could double (every money call is idempotent, and
these reads come before or beside the ledger command, never after money moved). Anything else is a
defect: logged with its traceback and answered as an internal error.
"""

from __future__ import annotations

import logging

import asyncpg
import nats.errors
import redis.exceptions

from core.errors import GatewayError, InternalError, Retryable

#: exceptions that mean "a backing service is unavailable right now"
OUTAGES: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable, timed out
    redis.exceptions.ConnectionError,  # also BusyLoadingError: Redis still loading its append-only file
    redis.exceptions.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # shutting down, "the database system is starting up"
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections
    asyncpg.exceptions.ConnectionDoesNotExistError,  # the connection died under the query
    nats.errors.ConnectionClosedError,
    nats.errors.NoServersError,
)


def answer_for(exc: Exception, where: str, log: logging.Logger) -> GatewayError:
    """The error to answer for ``exc``; logs it (one line for an outage, a traceback for a defect)."""
    if isinstance(exc, OUTAGES):
        log.warning("%s: backing service unavailable (%s: %s); answered retryable", where,
                    type(exc).__name__, exc)
        return Retryable("a backing service is unavailable, retry", retry_after_s=1.0)
    log.error("%s: unhandled error", where, exc_info=exc)
    return InternalError()
