"""Request/response helpers shared by the edge's own APIs and the provider adapters.

Everything a client sends passes through here before any field is interpreted: the body is read under
a deadline (``GATEWAY_HTTP_BODY_TIMEOUT_S``) and a client that hangs up mid-body is told apart from a
server error; JSON objects must not repeat a key (parsers silently keep the last value, so
``{"amount":"1.00","amount":"50.00"}`` would mean what the last writer wanted, not what was signed off or
logged); text fields must hold no control character and no lone surrogate (PostgreSQL refuses NUL,
UTF-8 cannot encode a surrogate, and either would otherwise fail deep inside, after money moved).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from core import errors as E
from core.commands import clean_text
from core.settings import SETTINGS_KEY, Settings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: for an app mounted without settings (the protocol tests' bare mounts)
_DEFAULT_BODY_TIMEOUT_S = float(Settings().http_body_timeout_s)


#: phase → requests or connections cut for taking too long (``header``: ``gateway.server``; ``body``: here)
TIMEOUTS: dict[str, int] = {"header": 0, "body": 0}
#: requests refused before routing (``malformed``: not valid HTTP; counted by ``gateway.server``)
REJECTED: dict[str, int] = {"malformed": 0}


class ClientDisconnected(Exception):
    """The client hung up before its request body arrived: nobody is left to answer (not a server error)."""


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


def error_response(exc: E.GatewayError) -> web.Response:
    out: dict[str, Any] = {"error": {"code": exc.code, "message": exc.detail,
                                     "retryable": isinstance(exc, E.Retryable)}}
    headers = {}
    if isinstance(exc, E.Retryable):
        headers["Retry-After"] = str(max(1, int(exc.retry_after_s + 0.999)))
    return json_response(out, exc.http_status, headers)


async def read_body(request: web.Request) -> bytes:
    """The raw body, within the size bound (413) and the body deadline (408, retryable).

    A body that already arrived with the headers (the usual small call) is taken without arming a timer.
    """
    try:
        if request.content.is_eof():
            return await request.read()
        settings = request.config_dict.get(SETTINGS_KEY)
        timeout_s = settings.http_body_timeout_s if settings is not None else _DEFAULT_BODY_TIMEOUT_S
        async with asyncio.timeout(timeout_s):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise E.PayloadTooLarge() from None
    except TimeoutError:
        TIMEOUTS["body"] += 1
        # the rest of the body is not waited for: aiohttp would otherwise linger reading it after the
        # answer; with the stream failed it closes the connection once the answer is out
        request.content.set_exception(TimeoutError("request body not received in time"))
        raise E.BodyTimeout() from None
    except ConnectionError:
        raise ClientDisconnected() from None
    except RequestPayloadError:  # broken chunk framing, bad compression: the client's fault
        raise E.MalformedBody("request body is malformed (transfer encoding)") from None


def json_object(raw: bytes, *, unique: bool = True) -> dict[str, Any]:
    """A body that must be one JSON object; a key given twice is refused (``unique=False`` leaves that
    check to the caller, for protocols that first pick the fields their error answer echoes)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise E.MalformedBody("body is not JSON") from None
    if not isinstance(body, dict):
        raise E.MalformedBody("body must be a JSON object")
    if unique:
        unique_keys(raw, body)
    return body


async def read_json(request: web.Request) -> dict[str, Any]:
    return json_object(await read_body(request))


def unique_keys(raw: bytes | str, parsed: Any) -> None:
    """Raise ``MalformedBody`` when an object in the JSON text ``raw`` names a key twice.

    Fast path: every key in the text is followed by a ``:``, so when the text holds exactly as many
    colons as ``parsed`` holds keys, no key was lost to a duplicate. Only a body with colons inside
    strings (or a real duplicate) takes the careful path, a second parse that sees every pair.
    """
    colons = raw.count(b":") if isinstance(raw, bytes) else raw.count(":")
    # a flat object (most calls) is settled by its own length; a nested one needs the walk
    if type(parsed) is dict and colons == len(parsed):
        return
    try:
        if colons == _count_keys(parsed):
            return
        json.loads(raw, object_pairs_hook=_refuse_duplicates)
    except _DuplicateKey as exc:
        raise E.MalformedBody(f"key {exc} appears twice in one object") from None
    except (ValueError, RecursionError):  # the caller's parser accepted it; not our question
        pass


class _DuplicateKey(ValueError):
    pass


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(json.dumps(key))
            seen.add(key)
    return obj


def _count_keys(value: Any) -> int:
    if type(value) is dict:
        n = len(value)
        for item in value.values():
            if type(item) is dict or type(item) is list:
                n += _count_keys(item)
        return n
    if type(value) is list:
        return sum(_count_keys(item) for item in value if type(item) is dict or type(item) is list)
    return 0


def field(body: dict[str, Any], name: str, *, max_len: int = 128, required: bool = True) -> str:
    value = body.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise E.MalformedBody(f"field {name!r} must be a non-empty string of at most {max_len} characters")
    if not clean_text(value):
        raise E.MalformedBody(f"field {name!r} holds a control character or a lone surrogate")
    return value


def query_field(request: web.Request, name: str, *, max_len: int = 128) -> str:
    """A required query parameter, held to the same rules as a body ``field``."""
    value = request.query.get(name, "")
    if not value or len(value) > max_len:
        raise E.MalformedBody(f"query parameter {name!r} must be a non-empty string of at most {max_len} "
                              "characters")
    if not clean_text(value):
        raise E.MalformedBody(f"query parameter {name!r} holds a control character or a lone surrogate")
    return value


def header_bytes(request: web.Request, name: str) -> bytes | None:
    """A header's value as bytes, or ``None`` when absent or not printable ASCII.

    aiohttp decodes header bytes as UTF-8 with ``surrogateescape``, so a non-ASCII byte becomes a lone
    surrogate that ``str.encode`` refuses; credentials and signatures are ASCII by definition, so such a
    value is simply not a valid one (and is never encoded).
    """
    value = request.headers.get(name)
    if value is None or not value.isascii() or not value.isprintable():
        return None
    return value.encode()
