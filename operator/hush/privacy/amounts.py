"""Exact privacy amounts: epsilon and delta as decimals, never float sums.

Specs carry JSON numbers (floats). ``exact()`` turns a float into the decimal that its
shortest repr denotes (0.1 -> Decimal("0.1"), not 0.1000000000000000055...), so that
0.1 + 0.2 == 0.3 holds and 1.0000000000000002 cannot slip past 1.0. Capacity rounds
down and charges round up when amounts are quantised (``Rounding``).
"""

from __future__ import annotations

import decimal
import enum

# Enough digits that no sum of realistic quotas or charges ever rounds.
CONTEXT = decimal.Context(prec=50, traps=[decimal.InvalidOperation, decimal.Overflow])


class Rounding(enum.Enum):
    CHARGE = decimal.ROUND_CEILING  # a cost is never understated
    CAPACITY = decimal.ROUND_FLOOR  # a capacity is never overstated


def exact(value: float | int | str | decimal.Decimal) -> decimal.Decimal:
    """The decimal a JSON number means (its shortest repr), exactly."""
    if isinstance(value, bool):
        raise TypeError("a privacy amount is a number, not a boolean")
    if isinstance(value, float):
        return CONTEXT.create_decimal(repr(value))
    return CONTEXT.create_decimal(value)


def total(values: list[decimal.Decimal]) -> decimal.Decimal:
    result = decimal.Decimal(0)
    for value in values:
        result = CONTEXT.add(result, value)
    return result


def quantise(value: decimal.Decimal, exponent: int, rounding: Rounding) -> decimal.Decimal:
    """Round ``value`` to 10**exponent in the direction that is safe for its role."""
    return value.quantize(decimal.Decimal(1).scaleb(exponent), rounding=rounding.value)


def display(value: decimal.Decimal) -> str:
    """A short exact string for status fields: no exponent for ordinary values."""
    normalised = value.normalize(CONTEXT)
    if normalised == 0:
        return "0"
    text = format(normalised, "f")
    return text if len(text) <= 24 else format(normalised, "E")
