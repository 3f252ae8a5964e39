"""Sensitivity of a released field, derived from its kind, bounds and contributions.

The L1 sensitivity under add/remove-one-individual neighbouring, where one individual
contributes at most ``contributions`` rows:
- count, histogram: ``contributions`` (histogram bins are disjoint, so the whole vector
  moves by at most that much in L1);
- sum, mean (its noisy-sum part; its count is a ``count`` field of its own):
  ``max(|lower|, |upper|) * contributions``;
- quantile: ``contributions`` (the utility score of the exponential mechanism). Hush does
  not release quantiles (the operator reports such a policy not Ready), but the derivation
  stays so that an explicit ``sensitivity`` is still checked.

A policy may declare a larger sensitivity but never a smaller one: that would silently
under-noise. ``understated()`` is the check.
"""

from __future__ import annotations

import decimal

from hush.api import dppolicy
from hush.privacy import amounts


def derived(field: dppolicy.Field) -> decimal.Decimal:
    """The smallest sound L1 sensitivity of ``field``."""
    contributions = decimal.Decimal(field.contributions_per_individual)
    if field.kind in ("count", "histogram", "quantile"):
        return contributions
    if field.bounds is None:
        raise ValueError(f"field {field.path} of kind {field.kind} needs bounds")
    largest = max(abs(amounts.exact(field.bounds.lower)), abs(amounts.exact(field.bounds.upper)))
    return largest * contributions


def understated(field: dppolicy.Field) -> bool:
    """True when the field declares a sensitivity smaller than the derived one."""
    if field.sensitivity is None:
        return False
    return amounts.exact(field.sensitivity) < derived(field)
