from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.commands import Command, InvalidCommand, Kind
from core.errors import InvalidAmount, UnknownCurrency
from core.money import CURRENCY_EXPONENTS, format_minor, to_minor


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


def _decimal_reference(text: str, currency: str) -> int | None:
    """What ``to_minor`` computed with ``Decimal`` before its integer path: the minor units, or ``None``
    when the value has more decimals than the currency."""
    scaled = Decimal(text).scaleb(CURRENCY_EXPONENTS[currency])
    return int(scaled) if scaled == scaled.to_integral_value() else None


@given(st.from_regex(r"-?[0-9]{1,22}(\.[0-9]{1,6})?", fullmatch=True), st.sampled_from(["EUR", "JPY", "KWD"]))
def test_plain_text_converts_as_decimal_does(text: str, currency: str) -> None:
    """The integer conversion of a plain decimal string agrees with ``Decimal`` on every value (trailing
    zeros past the exponent, leading zeros, negative zero, excess decimals, int64 overflow)."""
    expected = _decimal_reference(text, currency)
    if expected is None or abs(expected) > 2**63 - 1:
        with pytest.raises(InvalidAmount):
            to_minor(text, currency, allow_negative=True)
    else:
        assert to_minor(text, currency, allow_negative=True) == expected
        if expected < 0:
            with pytest.raises(InvalidAmount):
                to_minor(text, currency)


@pytest.mark.parametrize(("text", "currency", "minor"),
                         [("1.500", "EUR", 150), ("007.10", "EUR", 710), ("-0.00", "EUR", 0), ("5.000", "JPY", 5),
                          ("0.0010", "KWD", 1)])
def test_zeros_past_the_exponent_are_exact(text: str, currency: str, minor: int) -> None:
    assert to_minor(text, currency) == minor


@pytest.mark.parametrize("text", ["1E+1", "1e1", "0.1e2", "1E+999999", "1" * 41, "0." + "0" * 40 + "1", "NaN",
                                  "Infinity", "-Infinity", "sNaN"])
def test_decimals_that_are_not_plain_positional_are_refused(text: str) -> None:
    """A ``Decimal`` (from a JSON number) with an exponent, over 40 digits or not finite is no amount,
    and never an ``Overflow`` traceback."""
    with pytest.raises(InvalidAmount):
        to_minor(Decimal(text), "EUR")


def test_plain_decimals_from_json_numbers() -> None:
    assert to_minor(Decimal("10.11"), "EUR") == 10_11 and to_minor(Decimal("10"), "EUR") == 10_00
    assert to_minor(Decimal("0.100"), "EUR") == 10  # trailing zeros are exact
    assert to_minor(10, "EUR") == 10_00


def _command(**changes: object) -> Command:
    base: dict[str, object] = dict(
        cmd_id="c1", kind=Kind.WIN, tenant_id="t1", brand_id="b1", license="MGA", player_id="p1", currency="EUR",
        provider_id="demo", tx_id="tx1", round_id="r1", traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01",
        amount=1_00, ref_tx_id="bet1", game_id="g1")
    return Command(**{**base, **changes})  # type: ignore[arg-type]


TEXT_FIELDS = ["cmd_id", "tenant_id", "brand_id", "license", "player_id", "provider_id", "tx_id", "round_id",
               "traceparent", "ref_tx_id", "game_id"]


@pytest.mark.parametrize("bad", ["\x00", "\x01", "\n", "\x1f", "\x7f", "\x85", "\ud800", "\udfff"])
@pytest.mark.parametrize("name", TEXT_FIELDS)
def test_command_refuses_control_characters_and_lone_surrogates(name: str, bad: str) -> None:
    """The last gate before the ledger: no string of a command may hold a control character or a lone
    surrogate (PostgreSQL refuses NUL; UTF-8 cannot encode a surrogate; either failed a whole batch)."""
    _command().validate()
    value = getattr(_command(), name)
    with pytest.raises(InvalidCommand, match=name):
        _command(**{name: value[:-1] + bad + value[-1:]}).validate()


def test_command_accepts_non_ascii_text() -> None:
    _command(player_id="jörg-ß-玩家", game_id="roulette ♠").validate()
    with pytest.raises(InvalidCommand):
        _command(game_id=5).validate()
    with pytest.raises(InvalidCommand):
        _command(game_id="g" * 201).validate()
