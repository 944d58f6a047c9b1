"""Log lines: one JSON object per line (or plain text), with the trace and the tenant context, redacted.

The context (``trace_id``, ``brand``, ``provider``, ``shard``) is a ``ContextVar`` set where it becomes
known: the wallet when it builds a command (each aiohttp request runs in a task of its own, so it
never leaks into the next request), the ledger writer per batch. Every message and traceback is
redacted before it is written: values of credential-like keys (tokens, secrets, signatures, API keys,
passwords), bearer tokens and passwords in URLs keep at most their first 4 characters.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from contextvars import ContextVar

import orjson

FORMATS = ("json", "text")

#: (trace_id, brand, provider, shard); "" or -1 when not known
_Context = tuple[str, str, str, int]
_EMPTY: _Context = ("", "", "", -1)
_context: ContextVar[_Context] = ContextVar("gateway_log_context", default=_EMPTY)

_KEYS = (r"authorization|x-api-key|api[_-]?keys?|[a-z_]*token|secret[a-z_]*|password|passwd|pwd|"
         r"[a-z_-]*signature|hash|sid")
_KEY_VALUE = re.compile(rf"(?i)(\b(?:{_KEYS})\b[\"']?\s*[:=]\s*[\"']?)([^\s\"'&,;}}]+)")
_BEARER = re.compile(r"(?i)\b(bearer\s+)(\S+)")
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/\s@]*:)([^@\s]+)(@)")


def _cut(match: re.Match[str]) -> str:
    value = match.group(2)
    return match.group(1) + (value[:4] + "…" if len(value) > 4 else "…")


def _url(match: re.Match[str]) -> str:
    return match.group(1) + "***" + match.group(3)


def redact(text: str) -> str:
    """``text`` with credential values cut to their first 4 characters (URL passwords removed)."""
    text = _URL_PASSWORD.sub(_url, text)
    text = _BEARER.sub(_cut, text)
    return _KEY_VALUE.sub(_cut, text)


def bind(trace_id: str = "", brand: str = "", provider: str = "", shard: int = -1) -> None:
    """Set this task's log context (a new task starts with a copy of its creator's)."""
    _context.set((trace_id, brand, provider, shard))


def trace_id_of(traceparent: str) -> str:
    """The trace id of a W3C ``traceparent`` (``00-<trace id>-<span id>-<flags>``)."""
    return traceparent[3:35]


def context() -> dict[str, str | int]:
    trace_id, brand, provider, shard = _context.get()
    out: dict[str, str | int] = {}
    if trace_id:
        out["trace_id"] = trace_id
    if brand:
        out["brand"] = brand
    if provider:
        out["provider"] = provider
    if shard >= 0:
        out["shard"] = shard
    return out


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", "pid", trace_id/brand/provider/shard when known, "exc"}``."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        line: dict[str, object] = {"ts": ts, "level": record.levelname, "logger": record.name,
                                   "msg": redact(record.getMessage()), "pid": record.process}
        line.update(context())
        if record.exc_info:
            line["exc"] = redact(self.formatException(record.exc_info))
        elif record.stack_info:
            line["stack"] = redact(self.formatStack(record.stack_info))
        return orjson.dumps(line).decode()


class TextFormatter(logging.Formatter):
    """The classic line, the context appended in brackets, redacted."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        ctx = context()
        if ctx:
            text += " [" + " ".join(f"{k}={v}" for k, v in ctx.items()) + "]"
        return redact(text)


def configure(level: str, fmt: str) -> None:
    """Route every log record to stderr in ``fmt`` (``json`` or ``text``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
