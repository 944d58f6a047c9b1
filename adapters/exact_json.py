"""Exact money numbers in JSON: incoming ones parsed to ``Decimal``, outgoing ones written from minor units.

Pragmatic and Evolution put money in JSON *numbers* (``"cash": 99899.99``). A float cannot hold most
decimal fractions, so money never passes through one. Outgoing numbers are ``orjson.Fragment``s of the
fixed-point text ``core.money.format_minor`` makes from integer minor units (``money``), embedded
verbatim by ``orjson.dumps``. ``orjson`` cannot parse a number into ``Decimal``, so incoming bodies go through
``loads_exact``: a number keeps its exact text as a ``Decimal`` when it is plain positional notation
(``10.11``) and becomes a ``BadNumber`` otherwise (``1e1``, ``0.1e2``, ``1e999999``, more than 40
characters), which no money field accepts; NaN and Infinity are refused outright, and so is an object
that names a key twice.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import orjson

from core.money import MAX_TEXT, format_minor, plain_decimal


def money(minor: int, currency: str) -> orjson.Fragment:
    """Integer minor units as a JSON number with exactly the currency's decimals (``99899.99``)."""
    return orjson.Fragment(format_minor(minor, currency))


class BadNumber:
    """A JSON number that is not money syntax (exponent, or too long); kept so the field can be refused."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text[:MAX_TEXT]

    def __repr__(self) -> str:
        return f"BadNumber({self.text!r})"


class DuplicateKey(ValueError):
    """An object names the same key twice."""


def _number(text: str) -> Decimal | BadNumber:
    return Decimal(text) if plain_decimal(text) else BadNumber(text)


def _integer(text: str) -> int | BadNumber:
    return int(text) if len(text) <= MAX_TEXT else BadNumber(text)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise DuplicateKey("an object names a key twice")
    return obj


def loads_exact(body: bytes | str) -> Any:
    """Parse JSON keeping every non-integer number as the ``Decimal`` of its text (or a ``BadNumber``).

    The text must be strict UTF-8 (a surrogate encoded in it is refused; an escaped lone surrogate is
    left to the fields, which refuse it). Raises ``DuplicateKey`` for a key named twice in one object
    and ``ValueError`` for anything else that is not strict JSON (``json.JSONDecodeError`` is one).
    This parse is the standard library's anyway, so duplicates are caught in its pairs hook (about 1-2 µs
    on an Evolution call, what the colon count of ``core.http.unique_keys`` costs on a nested body,
    with no second parse when a value holds a colon).
    """
    try:
        text = body.decode() if isinstance(body, bytes) else body
        return json.loads(text, parse_float=_number, parse_int=_integer, parse_constant=_no_constant,
                          object_pairs_hook=_unique)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"body is not UTF-8: {exc}") from None
