"""Exact conversion between provider decimals and integer minor units.

No float ever touches money: values are parsed with ``Decimal`` and refused, not rounded, when the
currency's ISO 4217 exponent cannot hold them exactly. Only plain positional decimals are money
(``12``, ``12.50``, ``-3.1``; at most 40 characters): no exponent (``1e1``, ``0.1e2``, ``1e999999``), sign
plus, spaces, underscores, NaN or Infinity, whichever protocol carried them. The largest amount of one
command is a setting, checked where every command is built (``gateway.wallet.Wallet.command``).
"""

from __future__ import annotations

import re
from decimal import Decimal

from core.commands import INT64_MAX
from core.errors import InvalidAmount, UnknownCurrency

#: ISO 4217 minor-unit exponents of the currencies the gateway accepts (plus common crypto units)
CURRENCY_EXPONENTS: dict[str, int] = {
    "EUR": 2, "USD": 2, "GBP": 2, "CAD": 2, "AUD": 2, "NZD": 2, "CHF": 2, "SEK": 2, "NOK": 2,
    "DKK": 2, "PLN": 2, "CZK": 2, "HUF": 2, "RON": 2, "BGN": 2, "TRY": 2, "BRL": 2, "MXN": 2,
    "ARS": 2, "CLP": 0, "COP": 2, "PEN": 2, "INR": 2, "ZAR": 2, "NGN": 2, "KES": 2, "GHS": 2,
    "JPY": 0, "KRW": 0, "VND": 0, "ISK": 0, "UGX": 0, "XAF": 0, "XOF": 0, "PYG": 0,
    "KWD": 3, "BHD": 3, "JOD": 3, "OMR": 3, "TND": 3, "LYD": 3, "IQD": 3,
    "CNY": 2, "HKD": 2, "SGD": 2, "THB": 2, "MYR": 2, "IDR": 2, "PHP": 2, "UAH": 2, "KZT": 2,
    "GEL": 2, "AMD": 2, "AZN": 2, "ILS": 2, "AED": 2, "SAR": 2, "QAR": 2, "EGP": 2, "MAD": 2,
}

MAX_TEXT = 40
#: plain positional notation only: no exponent, sign-plus, spaces, underscores or NaN/Infinity
_DECIMAL = re.compile(r"-?[0-9]+(\.[0-9]+)?")


def plain_decimal(text: str) -> bool:
    """Whether ``text`` is money syntax: a plain positional decimal of at most ``MAX_TEXT`` characters."""
    return len(text) <= MAX_TEXT and _DECIMAL.fullmatch(text) is not None


def exponent(currency: str) -> int:
    try:
        return CURRENCY_EXPONENTS[currency]
    except KeyError:
        raise UnknownCurrency(f"unknown currency {currency!r}") from None


def to_minor(value: str | Decimal | int, currency: str, *, allow_negative: bool = False) -> int:
    """Parse a decimal amount into minor units, exactly; refuse excess precision and junk."""
    exp = exponent(currency)
    if isinstance(value, bool):
        raise InvalidAmount("amount must be a decimal, not a boolean")
    if isinstance(value, int):
        dec = Decimal(value)
    elif isinstance(value, Decimal):
        # a Decimal from a JSON number: its text was checked by the parser (``adapters.exact_json``); an
        # exponent or a huge digit string that got here anyway is still not money
        digits = value.as_tuple()
        if not value.is_finite() or not isinstance(digits.exponent, int) or digits.exponent > 0 \
                or len(digits.digits) > MAX_TEXT:
            raise InvalidAmount(f"amount {value} is not a plain decimal (digits, optional fraction)")
        dec = value
    elif isinstance(value, str):
        if not plain_decimal(value):
            raise InvalidAmount(f"amount {value[:MAX_TEXT]!r} is not a plain decimal (digits, optional fraction)")
        return _minor_of_plain(value, exp, currency, allow_negative)
    else:
        raise InvalidAmount("amount must be a decimal string")
    scaled = dec.scaleb(exp)
    if scaled != scaled.to_integral_value():
        raise InvalidAmount(f"amount {value} has more than {exp} decimal places for {currency}")
    return _checked(int(scaled), allow_negative)


def _minor_of_plain(text: str, exp: int, currency: str, allow_negative: bool) -> int:
    """``to_minor`` of a checked plain decimal in integer arithmetic (what ``Decimal`` computes, a few times
    cheaper): digits past the exponent must all be zeros."""
    whole, _, fraction = text.partition(".")
    if len(fraction) > exp:
        if fraction[exp:].strip("0"):
            raise InvalidAmount(f"amount {text} has more than {exp} decimal places for {currency}")
        fraction = fraction[:exp]
    return _checked(int(whole + fraction.ljust(exp, "0")), allow_negative)


def _checked(minor: int, allow_negative: bool) -> int:
    if minor < 0 and not allow_negative:
        raise InvalidAmount("amount must not be negative")
    if abs(minor) > INT64_MAX:
        raise InvalidAmount("amount too large")
    return minor


def to_decimal(minor: int, currency: str) -> Decimal:
    return Decimal(minor).scaleb(-exponent(currency))


def format_minor(minor: int, currency: str) -> str:
    """Render minor units as a fixed-point string with exactly the currency's decimals."""
    exp = exponent(currency)
    sign = "-" if minor < 0 else ""
    digits = str(abs(minor))
    if exp == 0:
        return sign + digits
    digits = digits.rjust(exp + 1, "0")
    return f"{sign}{digits[:-exp]}.{digits[-exp:]}"
