"""Exact privacy amounts: no float sum lets 1.0000000000000002 slip past 1.0."""

from __future__ import annotations

import decimal
import fractions

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hush.privacy import amounts


def test_decimal_of_a_float_is_its_shortest_repr() -> None:
    assert amounts.exact(0.1) == decimal.Decimal("0.1")
    assert amounts.exact(1e-6) == decimal.Decimal("0.000001")


def test_sums_are_exact_where_floats_are_not() -> None:
    assert 0.1 + 0.2 != 0.3
    assert amounts.total([amounts.exact(0.1), amounts.exact(0.2)]) == amounts.exact(0.3)


def test_one_ulp_above_one_is_above_one() -> None:
    assert amounts.exact(1.0000000000000002) > amounts.exact(1.0)


def test_booleans_are_not_amounts() -> None:
    with pytest.raises(TypeError):
        amounts.exact(True)


def test_charges_round_up_and_capacity_rounds_down() -> None:
    value = decimal.Decimal("0.1234567")
    assert amounts.quantise(value, -6, amounts.Rounding.CHARGE) == decimal.Decimal("0.123457")
    assert amounts.quantise(value, -6, amounts.Rounding.CAPACITY) == decimal.Decimal("0.123456")


@given(st.lists(st.floats(min_value=1e-9, max_value=100, allow_nan=False), max_size=64))
def test_total_is_the_exact_rational_sum(values: list[float]) -> None:
    exact_sum = amounts.total([amounts.exact(value) for value in values])
    assert fractions.Fraction(exact_sum) == sum(
        (fractions.Fraction(repr(value)) for value in values), fractions.Fraction(0)
    )


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (decimal.Decimal("0"), "0"),
        (decimal.Decimal("2.500"), "2.5"),
        (decimal.Decimal("1E-7"), "0.0000001"),
        (decimal.Decimal("10"), "10"),
    ],
)
def test_display(value: decimal.Decimal, shown: str) -> None:
    assert amounts.display(value) == shown
