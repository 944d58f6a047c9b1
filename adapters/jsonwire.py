"""JSON whose money numbers are exact both ways.

Pragmatic and Evolution put money in JSON *numbers* (``"cash": 99899.99``). A float cannot hold most
decimal fractions, and ``orjson`` neither parses a number into ``Decimal`` nor emits one, so money never
passes through either: incoming bodies are parsed with ``parse_float=Decimal`` (the number keeps its exact
text; NaN and Infinity are refused), and outgoing numbers are written as the fixed-point text that
``gateway.money.format_minor`` makes from integer minor units. Everything that is not money is still
serialised by ``orjson``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import orjson

from gateway.money import format_minor


class Raw:
    """A JSON number given as its exact text (never a float on the way)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Raw({self.text!r})"


def money(minor: int, currency: str) -> Raw:
    """Integer minor units as a JSON number with exactly the currency's decimals (``99899.99``)."""
    return Raw(format_minor(minor, currency))


def dumps(fields: Iterable[tuple[str, Any]]) -> bytes:
    """A JSON object of ``fields`` in order; ``Raw`` values are inserted as number text, verbatim."""
    parts: list[bytes] = []
    for key, value in fields:
        text = value.text.encode() if isinstance(value, Raw) else orjson.dumps(value)
        parts.append(orjson.dumps(key) + b":" + text)
    return b"{" + b",".join(parts) + b"}"


def obj(fields: Iterable[tuple[str, Any]]) -> Raw:
    """A nested JSON object that may itself hold ``Raw`` numbers."""
    return Raw(dumps(fields).decode())


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def loads_exact(body: bytes | str) -> Any:
    """Parse JSON keeping every non-integer number as the ``Decimal`` of its text.

    Raises ``ValueError`` for anything that is not strict JSON (``json.JSONDecodeError`` is one).
    """
    try:
        return json.loads(body, parse_float=Decimal, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"body is not UTF-8: {exc}") from None
