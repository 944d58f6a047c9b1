from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import InvalidAmount, UnknownCurrency
from gateway.money import CURRENCY_EXPONENTS, format_minor, to_minor


@pytest.mark.parametrize(
    ("text", "currency", "minor"),
    [("1.50", "EUR", 150), ("0.01", "EUR", 1), ("10", "EUR", 1000), ("1.5", "EUR", 150), ("100", "JPY", 100),
     ("1.234", "KWD", 1234), ("0", "EUR", 0), ("92233720368547758.07", "EUR", 2**63 - 1)],
)
def test_exact_conversion(text: str, currency: str, minor: int) -> None:
    assert to_minor(text, currency) == minor


@pytest.mark.parametrize(
    "text",
    ["1.001", "-1", "1e-3", "1e2", "+1", "1_0", "abc", "", " 1", "NaN", "Infinity", "1" * 41, "92233720368547758.08"],
)
def test_refused(text: str) -> None:
    with pytest.raises(InvalidAmount):
        to_minor(text, "EUR")


def test_types_and_currency() -> None:
    with pytest.raises(InvalidAmount):
        to_minor(1.5, "EUR")  # type: ignore[arg-type]
    with pytest.raises(InvalidAmount):
        to_minor(True, "EUR")
    with pytest.raises(UnknownCurrency):
        to_minor("1", "XYZ")
    with pytest.raises(InvalidAmount):
        to_minor("1.5", "JPY")
    assert to_minor("-2.50", "EUR", allow_negative=True) == -250


@given(st.integers(min_value=-(2**63) + 1, max_value=2**63 - 1), st.sampled_from(sorted(CURRENCY_EXPONENTS)))
def test_format_round_trips_exactly(minor: int, currency: str) -> None:
    text = format_minor(minor, currency)
    assert to_minor(text, currency, allow_negative=True) == minor
    assert Decimal(text) == Decimal(minor).scaleb(-CURRENCY_EXPONENTS[currency])
