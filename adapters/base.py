"""The small interface every provider protocol implements, and the gateway port it talks to.

An adapter authenticates a call before it parses anything else, turns it into ledger ``Command``s
through the ``WalletPort`` and renders the ``Result`` or ``GatewayError`` in its protocol's exact
format. It never touches money itself: the port applies rate limits, degradation and back-pressure
and the ledger decides; the adapter only translates. ``ERRORS`` maps every error class to the
protocol's code (looked up along the class's MRO); a test proves no class is left unmapped.
"""

from __future__ import annotations

import abc
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, ClassVar, Protocol

from aiohttp import web

from core.commands import Command, Kind, Result
from core.errors import Forbidden, GatewayError
from core.http import ClientDisconnected, read_body
from core.records import PlayerSession, ProviderConfig
from core.unexpected import answer_for


class WalletPort(Protocol):
    """What the gateway offers an adapter; implemented by ``gateway.wallet.Wallet`` (through its
    ``LazyWallet``, as adapters are built before start-up)."""

    async def open_session(self, provider_id: str, launch_token: str) -> PlayerSession:
        """Exchange a one-time launch token for a provider session (raises InvalidToken/TokenExpired)."""

    async def session(self, provider_id: str, token: str, *, allow_expired: bool = False) -> PlayerSession:
        """Look up a session; settlements pass ``allow_expired`` so late wins are never refused."""

    async def rotate_session(self, session: PlayerSession) -> PlayerSession:
        """Give the session a new token; the old one is refused from then on."""

    async def profile(self, provider_id: str, player_id: str, brands: Sequence[str] = ()) -> PlayerSession:
        """The player's keys (tenant, brand, license, currency) for calls without a token: under the one
        brand of ``brands`` (those the provider serves) or the only brand the player is known under;
        ``AmbiguousPlayer`` (an ``UnknownPlayer``) when several could be meant."""

    async def balance(self, session: PlayerSession) -> int:
        """Current balance in minor units (0 for a wallet never funded)."""

    def command(self, session: PlayerSession, kind: Kind, *, tx_id: str, round_id: str, amount: int = 0,
                traceparent: str | None = None, **extra: Any) -> Command:
        """A complete, validated command for this player; ``BadInput`` when it is not valid."""

    async def execute(self, command: Command) -> Result:
        """Run one command through limits, degradation, back-pressure and the ledger.

        Raises ``Retryable`` subclasses (rate limit, shedding, pause, ledger timeout); every other
        outcome, refusals included, comes back as a ``Result``.
        """


#: one call of a protocol: the request and its verified, decoded body → the protocol's reply
Op = Callable[[web.Request, Any], Awaitable[Any]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: what an answer may repeat from a request whose handling failed (e.g. Hub88's ``request_uuid``);
#: ``decode`` fills it as soon as it has read the values, so even a later error echoes them
Echo = dict[str, Any]


class Adapter(abc.ABC):
    """Base of every protocol module.

    ``handle`` is the one request path of every protocol: read the body (source network, size, deadline),
    ``decode`` it (authenticate first, then parse), run the call, ``render`` its reply; a ``GatewayError``
    is answered by ``render_error``, a protocol's own internal exceptions by ``own_answer``, anything else
    by ``core.unexpected.answer_for`` (retryable for an outage, internal error for a defect). A client
    gone mid-body is let through: there is nobody to answer.
    """

    protocol: ClassVar[str]
    ERRORS: ClassVar[Mapping[type[GatewayError], Any]]
    #: whether the protocol has a call that exchanges the operator's one-time launch token for a
    #: session (native ``authenticate``, Pragmatic ``authenticate``). Where it has none (Hub88,
    #: Evolution), a launch opens the session at once and its token goes into the game URL.
    EXCHANGES_LAUNCH_TOKEN: ClassVar[bool] = True

    def __init__(self, config: ProviderConfig, wallet: WalletPort) -> None:
        self.config = config
        self.wallet = wallet
        self.log = logging.getLogger(type(self).__module__)

    @abc.abstractmethod
    def routes(self) -> list[web.AbstractRouteDef]:
        """Routes relative to the provider's mount point."""

    # --- the one request path and its hooks -------------------------------------------------------------
    def endpoint(self, op: Op) -> Handler:
        """An aiohttp handler that serves ``op`` through ``handle``."""
        async def handler(request: web.Request) -> web.StreamResponse:
            return await self.handle(request, op)

        handler.__name__ = f"{self.protocol}_{op.__name__.lstrip('_')}"
        return handler

    async def handle(self, request: web.Request, op: Op) -> web.StreamResponse:
        echo: Echo = {}
        try:
            raw = await self.read_body(request)
            call = self.decode(request, raw, echo)
            return self.render(await op(request, call))
        except ClientDisconnected:
            raise
        except GatewayError as exc:
            return self.render_error(exc, echo)
        except Exception as exc:
            own = self.own_answer(exc, echo)
            if own is not None:
                return own
            return self.render_error(answer_for(exc, f"{self.protocol} {self.config.id} {request.path}",
                                                self.log), echo)

    @abc.abstractmethod
    def decode(self, request: web.Request, raw: bytes, echo: Echo) -> Any:
        """Authenticate the call, then parse ``raw`` into what the protocol's calls take."""

    @abc.abstractmethod
    def render(self, reply: Any) -> web.StreamResponse:
        """The HTTP answer for a call's reply."""

    @abc.abstractmethod
    def render_error(self, exc: GatewayError, echo: Echo) -> web.StreamResponse:
        """The HTTP answer for an error, in the protocol's format with its code from ``ERRORS``."""

    def own_answer(self, exc: Exception, echo: Echo) -> web.StreamResponse | None:
        """The answer to one of the protocol's internal exceptions; ``None`` for anything unexpected."""
        return None

    @classmethod
    def error_code(cls, exc: GatewayError | type[GatewayError]) -> Any:
        klass = exc if isinstance(exc, type) else type(exc)
        for base in klass.__mro__:
            if base in cls.ERRORS:
                return cls.ERRORS[base]
        raise KeyError(f"{cls.__name__} maps no code for {klass.__name__}")

    async def read_body(self, request: web.Request) -> bytes:
        """The raw body of an allowed caller: source network first, then the size bound (413) and the body
        deadline (``BodyTimeout``); a client gone mid-body raises ``ClientDisconnected``, which the adapter
        lets through (there is nobody to answer)."""
        if not self.source_allowed(request):
            raise Forbidden("source network not allowed for this provider")
        return await read_body(request)

    def source_allowed(self, request: web.Request) -> bool:
        if not self.config.allowed_networks:
            return True
        try:
            addr = ipaddress.ip_address(request.remote or "")
        except ValueError:
            return False
        return any(addr in net for net in self.config.allowed_networks)
