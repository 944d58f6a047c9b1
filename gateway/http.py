"""Small request/response helpers shared by the edge's own APIs (orjson on every path)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from gateway import errors as E

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


def error_response(exc: E.GatewayError) -> web.Response:
    out: dict[str, Any] = {"error": {"code": exc.code, "message": exc.detail,
                                     "retryable": isinstance(exc, E.Retryable)}}
    headers = {}
    if isinstance(exc, E.Retryable):
        headers["Retry-After"] = str(max(1, int(exc.retry_after_s + 0.999)))
    return json_response(out, exc.http_status, headers)


async def read_json(request: web.Request) -> dict[str, Any]:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise E.PayloadTooLarge() from None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise E.MalformedBody("body is not JSON") from None
    if not isinstance(body, dict):
        raise E.MalformedBody("body must be a JSON object")
    return body


def field(body: dict[str, Any], name: str, *, max_len: int = 128, required: bool = True) -> str:
    value = body.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise E.MalformedBody(f"field {name!r} must be a non-empty string of at most {max_len} characters")
    return value
