"""What one release of a policy's route costs, computed by the accountant from the policy.

The sidecar reports nothing about cost (docs/design/0018, "Wire"): the accountant reads the
route as the DPPolicy stores it, parses it (``dppolicy.Route``, by alias) and prices it with
``route_cost.route_charge``, the same function the sidecar plans its noise with. So the
charge, and the ledger entry's mechanism, noise scale, sensitivity, epsilon and delta, are
the policy's, whatever a (compromised) sidecar would like them to be.

A route that does not parse or cannot be priced (a field kind Hush cannot release, a
wildcard without a declared domain, ...) is refused with 409 naming the policy and the route:
the privacy owner must fix the policy; nothing is charged. A route with partition selection
spends part of its delta on the noisy threshold (``route_cost.threshold_delta``), which only
pure accounting adds up; ``Price.selection_delta`` lets the accountant refuse such a charge
against a zCDP or RDP budget rather than record it as cheaper than it is.

What this module does not do: decide who may charge (``authorization``) or record anything
(``writer``).

Pricing is pure but not free (parsing, calibration, exact rationals), and every charge of a
burst would repeat it; ``Prices`` remembers the answer per policy *generation*. The
apiserver bumps ``metadata.generation`` on every spec change and a re-created policy has a
new ``metadata.uid``, so a cached price can never outlive the route it was computed from. A
policy without both (never the case for objects read from the apiserver) is priced afresh.
"""

from __future__ import annotations

import dataclasses
import decimal
from collections.abc import Mapping
from typing import Any

import pydantic

from hush.accountant import authorization
from hush.api import dppolicy
from hush.privacy import accounting, route_cost

# Policies x routes priced at once; cleared wholesale when full (a price is cheap to redo).
MAX_CACHED_PRICES = 4096


@dataclasses.dataclass(frozen=True, kw_only=True)
class Price:
    """One release of a route: what is charged, and how much of its delta selects keys."""

    release: accounting.Release
    selection_delta: decimal.Decimal = decimal.Decimal(0)


@dataclasses.dataclass(frozen=True)
class _Priced:
    """A route's price, or the refusal's text (a cached exception would grow its traceback
    every time it is raised again)."""

    price: Price | None = None
    refusal: str = ""

    def unwrap(self) -> Price:
        if self.price is None:
            raise authorization.DeniedError(self.refusal, status=409)
        return self.price


def _priced(policy_name: str, route: Mapping[str, Any]) -> _Priced:
    path = route.get("path")
    try:
        parsed = dppolicy.Route.model_validate(route, by_alias=True, by_name=False)
        return _Priced(
            Price(
                release=route_cost.route_charge(parsed),
                selection_delta=route_cost.threshold_delta(parsed),
            )
        )
    except pydantic.ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in problem['loc']) or 'route'}: {problem['msg']}"
            for problem in error.errors()
        )
        reason = f"it is not a valid route ({problems})"
    except (ValueError, ArithmeticError) as error:  # route_cost.RouteError is a ValueError
        reason = str(error)
    return _Priced(
        refusal=f"Policy {policy_name} route {path} cannot be charged: {reason}; fix the DPPolicy"
    )


def route_price(policy_name: str, route: Mapping[str, Any]) -> Price:
    """The price of one release of ``route`` (its stored spec), or a 409 ``DeniedError``."""
    return _priced(policy_name, route).unwrap()


class Prices:
    """``route_price`` remembered per (namespace, policy, uid, generation, route)."""

    def __init__(self) -> None:
        self._prices: dict[tuple[str, str, str, int, str], _Priced] = {}

    def price(
        self, namespace: str, policy_name: str, policy: Mapping[str, Any], route: Mapping[str, Any]
    ) -> Price:
        """The price of one release of ``route`` of ``policy``, or a 409 ``DeniedError``."""
        metadata = policy.get("metadata") or {}
        uid, generation = metadata.get("uid"), metadata.get("generation")
        if not isinstance(uid, str) or not isinstance(generation, int):
            return route_price(policy_name, route)
        key = (namespace, policy_name, uid, generation, str(route.get("path")))
        priced = self._prices.get(key)
        if priced is None:
            if len(self._prices) >= MAX_CACHED_PRICES:
                self._prices.clear()
            priced = self._prices[key] = _priced(policy_name, route)
        return priced.unwrap()
