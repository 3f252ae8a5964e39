"""Privacy accounting in integer units: what a release costs, what a quota holds, what fits.

Owns the three accounting modes of a ``PrivacyBudget`` (ARCHITECTURE.md, "Custom
resources"), as pure functions over immutable integer vectors (``Cost``), so that the ledger
can add, compare, store and hash-chain costs without ever summing floats. It does not store
anything, know about teams or renewals, or talk to the API (``hush.ledger`` does).

Units (docs/design/0006-accounting.md):

======  =====================================  =====================
mode    ``Cost.units``                         unit
======  =====================================  =====================
pure    (epsilon, delta)                       1e-9, 1e-18
zcdp    (rho,)                                 1e-12
rdp     (RDP(alpha) for alpha in RDP_ORDERS)   1e-9 per order
======  =====================================  =====================

A release's cost is rounded *up* to units, a quota's capacity *down*, and a display epsilon
*up*, all exactly (rationals, or decimal upper bounds for transcendental terms:
``hush.privacy.renyi``). So whatever sequence of charges ``fits`` accepts, the true privacy
loss is within the quota (property-tested in tests/unit/test_privacy_accounting.py).

- ``pure``: basic composition (epsilons add, deltas add; Dwork & Roth 2014, Thm. 3.16). The
  charge is the route's declared (epsilon, delta), after checking that the noise actually used
  delivers it (``UnderNoisedError`` otherwise).
- ``zcdp``: rho adds (Bun & Steinke 2016, Lemma 2.3). Gaussian kinds cost D^2/(2 sigma^2);
  Laplace kinds (pure t = D/b) cost t^2/2. A quota (epsilon, delta) holds the largest rho with
  rho + 2 sqrt(rho ln(1/delta)) <= epsilon.
- ``rdp``: RDP adds order by order (Mironov 2017, Prop. 1) over a fixed grid ``RDP_ORDERS``
  of k = 46 orders. The quota is a *privacy filter* (Lecuyer 2021, "Practical privacy filters
  and odometers with Renyi differential privacy", union bound over orders): it holds, per
  order, epsilon - c(alpha, delta/k), where c is the tight conversion
  (``renyi.conversion_upper``), and a charge fits if some order still fits. Each order's
  share of delta is delta/k because charges are chosen adaptively: which order ends up
  fitting depends on the answers released so far, and "fits at some order, each at the full
  delta" (what this mode did before issue 14, finding 5) is not a valid stopping rule. Per
  order alpha, the charges admitted while alpha fits form a Renyi filter at alpha (Feldman &
  Zrnic 2021), whose hockey-stick divergence at epsilon is at most delta/k; the released
  transcript's is at most the sum over the orders, delta. The price: ln k = 3.83 more
  ln(1/delta) in every conversion, 17-26% fewer Gaussian releases than the unsound rule for
  realistic budgets (docs/design/0019-rdp-filter.md has the numbers and the alternative).

PLD accounting (``pld_epsilon``, Google's dp-accounting) is tight but its cost grows with the
history; it is for reports and benchmarks, never for gating a request.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import operator
from collections.abc import Iterable
from decimal import Decimal
from fractions import Fraction
from typing import Protocol, TypeAlias

from hush.api import privacybudget
from hush.privacy import calibration, kinds, renyi

Mode: TypeAlias = privacybudget.Accounting

EPSILON_UNIT = Decimal("1e-9")
DELTA_UNIT = Decimal("1e-18")
RHO_UNIT = Decimal("1e-12")
RDP_UNIT = Decimal("1e-9")

# RDP capacities and display epsilons are computed in integers of 1e-30: the conversion term
# c(alpha) is rounded up to that grid once per delta, everything else is exact on it.
_FINE = 10**30
_FINE_PER_RDP_UNIT = int(renyi.fraction(RDP_UNIT) * _FINE)
_FINE_PER_EPSILON_UNIT = int(renyi.fraction(EPSILON_UNIT) * _FINE)

# Fixed forever: ledgers store one integer per order, in this order. Dense where the best
# order of realistic compositions lies (2-16); 1.1 serves huge budgets, 1024 single releases.
RDP_ORDERS: tuple[Decimal, ...] = tuple(
    Decimal(order)
    for order in (
        "1.1", "1.2", "1.3", "1.4", "1.5", "1.6", "1.7", "1.8", "1.9",
        "2", "2.2", "2.4", "2.6", "2.8", "3", "3.25", "3.5", "3.75", "4", "4.5",
        "5", "5.5", "6", "7", "8", "9", "10", "11", "12", "14", "16", "18", "20",
        "24", "28", "32", "40", "48", "64", "96", "128", "192", "256", "384", "512", "1024",
    )
)  # fmt: skip


class UnderNoisedError(ValueError):
    """A release claims a guarantee that its noise scale does not deliver."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Release:
    """One noisy answer, as the sidecar describes it to the ledger.

    ``sensitivity`` is the sensitivity the noise was calibrated for, including the sampler's
    lattice slack (``mechanisms.charged_sensitivity``); ``scale`` is the Laplace b or Gaussian
    sigma actually used, recorded by ``calibration.recorded_scale`` (never above the float the
    sampler used). ``mechanisms.plan`` builds both correctly.
    """

    mechanism: str  # laplace | gaussian | discreteLaplace | discreteGaussian
    epsilon: Decimal  # the route's declared per-release epsilon
    delta: Decimal
    sensitivity: Decimal  # L1 for laplace kinds, L2 for gaussian kinds
    scale: Decimal  # Laplace b or Gaussian sigma actually used

    def __post_init__(self) -> None:
        kinds.parse(self.mechanism)
        for name in ("epsilon", "delta", "sensitivity", "scale"):
            value = getattr(self, name)
            if not isinstance(value, Decimal) or not value.is_finite():
                raise ValueError(f"release {name} must be a finite Decimal, got {value!r}")
        if self.epsilon < 0:
            raise ValueError("release epsilon must not be negative")
        if not 0 <= self.delta < 1:
            raise ValueError("release delta must be at least 0 and less than 1")
        if self.sensitivity <= 0 or self.scale <= 0:
            raise ValueError("release sensitivity and scale must be greater than 0")


@dataclasses.dataclass(frozen=True)
class Cost:
    """Integer units, immutable, hashable, JSON-friendly; the meaning depends on the mode."""

    units: tuple[int, ...]


class Accountant(Protocol):
    """One per (mode, order grid); pure, no I/O."""

    @property
    def mode(self) -> Mode: ...

    def zero(self) -> Cost: ...

    def release_cost(self, release: Release) -> Cost:
        """What ``release`` costs, rounded up to units."""
        ...

    def add(self, a: Cost, b: Cost) -> Cost: ...

    def capacity(self, epsilon: Decimal, delta: Decimal) -> Cost:
        """What a quota of (epsilon, delta) holds, rounded down to units."""
        ...

    def fits(self, spent: Cost, capacity: Cost) -> bool:
        """True when ``spent`` is within ``capacity`` (rdp: at some order, each order's
        capacity converted at its share of delta)."""
        ...

    def epsilon_spent(self, spent: Cost, delta: Decimal) -> Decimal:
        """The epsilon ``spent`` amounts to at ``delta``, for display, rounded up to 1e-9
        (rdp: as the filter counts it, each order at delta/k)."""
        ...

    def to_json(self, cost: Cost) -> list[int]: ...

    def from_json(self, raw: list[int]) -> Cost: ...


# -- exact rounding to units ---------------------------------------------------------------


def _ceil_units(value: Fraction, unit: Decimal) -> int:
    return math.ceil(value / renyi.fraction(unit))


def _floor_units(value: Fraction, unit: Decimal) -> int:
    return math.floor(value / renyi.fraction(unit))


def _amount(units: int, unit: Decimal) -> Decimal:
    return Decimal(units).scaleb(unit.adjusted())


def _epsilon_display(value: Fraction) -> Decimal:
    return _amount(_ceil_units(max(value, Fraction(0)), EPSILON_UNIT), EPSILON_UNIT)


def _quota(epsilon: Decimal, delta: Decimal, *, need_delta: bool, mode: Mode) -> Fraction:
    """The quota epsilon floored to ``EPSILON_UNIT``, after validating (epsilon, delta)."""
    for name, value in (("epsilon", epsilon), ("delta", delta)):
        if not isinstance(value, Decimal) or not value.is_finite():
            raise ValueError(f"quota {name} must be a finite Decimal, got {value!r}")
    if epsilon < 0:
        raise ValueError("quota epsilon must not be negative")
    if need_delta and not 0 < delta < 1:
        raise ValueError(
            f"{mode} accounting converts to (epsilon, delta) and needs 0 < delta < 1; "
            "set spec.delta (e.g. 1e-6) or use pure accounting"
        )
    if not 0 <= delta < 1:
        raise ValueError("quota delta must be at least 0 and less than 1")
    return renyi.fraction(EPSILON_UNIT) * _floor_units(renyi.fraction(epsilon), EPSILON_UNIT)


class _VectorAccountant:
    """add/zero/JSON shared by all modes: costs are fixed-length integer vectors."""

    _length: int

    def zero(self) -> Cost:
        return Cost((0,) * self._length)

    def _check(self, cost: Cost) -> tuple[int, ...]:
        if not isinstance(cost, Cost) or len(cost.units) != self._length:
            raise ValueError(f"expected a cost of {self._length} units, got {cost!r}")
        return cost.units

    def add(self, a: Cost, b: Cost) -> Cost:
        return Cost(tuple(map(operator.add, self._check(a), self._check(b))))

    def to_json(self, cost: Cost) -> list[int]:
        return list(self._check(cost))

    def from_json(self, raw: list[int]) -> Cost:
        """The cost ``raw`` stores; ``[]`` (a ledger that never spent) is zero."""
        if isinstance(raw, list) and not raw:
            return self.zero()
        if not isinstance(raw, list) or len(raw) != self._length:
            raise ValueError(f"expected a list of {self._length} integers, got {raw!r}")
        if any(isinstance(unit, bool) or not isinstance(unit, int) for unit in raw):
            raise ValueError(f"cost units must be integers, got {raw!r}")
        return Cost(tuple(raw))


# -- pure: basic composition ---------------------------------------------------------------


def _verify_declared(release: Release) -> None:
    """Raise ``UnderNoisedError`` unless the noise scale delivers the declared guarantee."""
    mechanism = kinds.parse(release.mechanism)
    if not kinds.is_gaussian(mechanism):
        actual = renyi.laplace_epsilon(release.sensitivity, release.scale)
        if actual > renyi.fraction(release.epsilon):
            raise UnderNoisedError(
                f"{mechanism} with sensitivity {release.sensitivity} and scale {release.scale} "
                f"is {float(actual):.6g}-DP, more than the declared epsilon {release.epsilon}"
            )
        return
    if release.delta <= 0 or release.epsilon <= 0:
        raise UnderNoisedError(f"{mechanism} needs epsilon > 0 and delta > 0 to be charged")
    if mechanism == "gaussian":
        log_delta = calibration.gaussian_log_delta(
            sensitivity=release.sensitivity, sigma=release.scale, epsilon=release.epsilon
        )
        achieved = log_delta <= math.log(calibration.float_at_most(release.delta))
    else:
        epsilon = calibration.discrete_gaussian_epsilon(
            sensitivity=release.sensitivity, sigma=release.scale, delta=release.delta
        )
        achieved = epsilon <= calibration.float_at_most(release.epsilon)
    if not achieved:
        raise UnderNoisedError(
            f"{mechanism} with sensitivity {release.sensitivity} and sigma {release.scale} does "
            f"not achieve the declared ({release.epsilon}, {release.delta})-DP"
        )


class PureAccountant(_VectorAccountant):
    """Basic composition: (epsilon units, delta units); a charge fits if both fit."""

    _length = 2

    def __init__(self) -> None:
        self._release_cost = functools.lru_cache(maxsize=4096)(self._uncached_release_cost)

    @property
    def mode(self) -> Mode:
        return "pure"

    def release_cost(self, release: Release) -> Cost:
        return self._release_cost(release)

    def _uncached_release_cost(self, release: Release) -> Cost:
        _verify_declared(release)
        return Cost(
            (
                _ceil_units(renyi.fraction(release.epsilon), EPSILON_UNIT),
                _ceil_units(renyi.fraction(release.delta), DELTA_UNIT),
            )
        )

    def capacity(self, epsilon: Decimal, delta: Decimal) -> Cost:
        quota = _quota(epsilon, delta, need_delta=False, mode="pure")
        return Cost(
            (
                _floor_units(quota, EPSILON_UNIT),
                _floor_units(renyi.fraction(delta), DELTA_UNIT),
            )
        )

    def fits(self, spent: Cost, capacity: Cost) -> bool:
        return all(s <= c for s, c in zip(self._check(spent), self._check(capacity), strict=True))

    def epsilon_spent(self, spent: Cost, delta: Decimal) -> Decimal:
        """The epsilon sum (``delta`` plays no part in basic composition)."""
        return _amount(self._check(spent)[0], EPSILON_UNIT)

    def delta_spent(self, spent: Cost) -> Decimal:
        """The delta sum."""
        return _amount(self._check(spent)[1], DELTA_UNIT)


# -- zcdp: rho sums ------------------------------------------------------------------------


def _rho(release: Release) -> Fraction:
    if kinds.is_gaussian(kinds.parse(release.mechanism)):
        return renyi.gaussian_rho(release.sensitivity, release.scale)
    return renyi.pure_rho(renyi.laplace_epsilon(release.sensitivity, release.scale))


class ZcdpAccountant(_VectorAccountant):
    """zCDP: (rho units,), converted with rho + 2 sqrt(rho ln(1/delta)) (Bun & Steinke)."""

    _length = 1

    def __init__(self) -> None:
        self._release_cost = functools.lru_cache(maxsize=4096)(self._uncached_release_cost)
        self._capacity = functools.lru_cache(maxsize=1024)(self._uncached_capacity)

    @property
    def mode(self) -> Mode:
        return "zcdp"

    def release_cost(self, release: Release) -> Cost:
        return self._release_cost(release)

    def _uncached_release_cost(self, release: Release) -> Cost:
        return Cost((_ceil_units(_rho(release), RHO_UNIT),))

    def capacity(self, epsilon: Decimal, delta: Decimal) -> Cost:
        return self._capacity(epsilon, delta)

    def _uncached_capacity(self, epsilon: Decimal, delta: Decimal) -> Cost:
        quota = _quota(epsilon, delta, need_delta=True, mode="zcdp")

        def within(units: int) -> bool:
            spent = renyi.zcdp_epsilon_upper(_amount(units, RHO_UNIT), delta)
            return renyi.fraction(spent) <= quota

        quota_decimal = Decimal(quota.numerator) / Decimal(quota.denominator)
        estimate = renyi.zcdp_rho_estimate(quota_decimal, delta)
        units = _floor_units(renyi.fraction(estimate), RHO_UNIT)
        # The estimate is within a unit or two of the answer; settle it with the same upper
        # bound that epsilon_spent uses, so that fits() implies epsilon_spent() <= quota.
        while within(units + 1):
            units += 1
        while units > 0 and not within(units):
            units -= 1
        return Cost((units,))

    def fits(self, spent: Cost, capacity: Cost) -> bool:
        return self._check(spent)[0] <= self._check(capacity)[0]

    def epsilon_spent(self, spent: Cost, delta: Decimal) -> Decimal:
        _quota(Decimal(0), delta, need_delta=True, mode="zcdp")
        rho = _amount(self._check(spent)[0], RHO_UNIT)
        return _epsilon_display(renyi.fraction(renyi.zcdp_epsilon_upper(rho, delta)))

    def rho_spent(self, spent: Cost) -> Decimal:
        return _amount(self._check(spent)[0], RHO_UNIT)


# -- rdp: Renyi DP over a fixed grid of orders ---------------------------------------------


class RdpAccountant(_VectorAccountant):
    """Renyi DP: one unit count per order of ``orders``; a filter with delta/k per order,
    so a charge fits if some order fits (module docstring)."""

    def __init__(self, orders: tuple[Decimal, ...] = RDP_ORDERS) -> None:
        if not orders or any(order <= 1 for order in orders):
            raise ValueError("Renyi orders must be greater than 1")
        self.orders = orders
        self._length = len(orders)
        self._order_fractions = tuple(renyi.fraction(order) for order in orders)
        self._unit = renyi.fraction(RDP_UNIT)
        self._release_cost = functools.lru_cache(maxsize=4096)(self._uncached_release_cost)
        self._conversions = functools.lru_cache(maxsize=256)(self._uncached_conversions)
        self._capacity = functools.lru_cache(maxsize=1024)(self._uncached_capacity)

    @property
    def mode(self) -> Mode:
        return "rdp"

    def release_cost(self, release: Release) -> Cost:
        return self._release_cost(release)

    def _uncached_release_cost(self, release: Release) -> Cost:
        mechanism = kinds.parse(release.mechanism)
        if kinds.is_gaussian(mechanism):
            # alpha * rho exactly, rounded up with integer arithmetic.
            rho = renyi.gaussian_rho(release.sensitivity, release.scale) / self._unit
            return Cost(
                tuple(
                    -((-order.numerator * rho.numerator) // (order.denominator * rho.denominator))
                    for order in self._order_fractions
                )
            )
        pure = renyi.laplace_epsilon(release.sensitivity, release.scale)
        curve = renyi.laplace_rdp_upper if mechanism == "laplace" else renyi.pure_dp_rdp_upper
        return Cost(
            tuple(
                _ceil_units(renyi.fraction(curve(order, pure)), RDP_UNIT) for order in self.orders
            )
        )

    def _uncached_conversions(self, delta: Decimal) -> tuple[int, ...]:
        """c(alpha, delta/k) per order, as integers of ``_FINE`` units, rounded up.

        Every order gets delta/k: the union bound that makes "fits at some order" a valid
        filter under adaptive composition (module docstring).
        """
        return tuple(
            math.ceil(
                renyi.fraction(renyi.conversion_upper(order, delta, shares=self._length)) * _FINE
            )
            for order in self.orders
        )

    def capacity(self, epsilon: Decimal, delta: Decimal) -> Cost:
        return self._capacity(epsilon, delta)

    def _uncached_capacity(self, epsilon: Decimal, delta: Decimal) -> Cost:
        quota = _quota(epsilon, delta, need_delta=True, mode="rdp")
        quota_fine = int(quota * _FINE)  # exact: the quota is a multiple of EPSILON_UNIT
        return Cost(
            tuple(
                (quota_fine - conversion) // _FINE_PER_RDP_UNIT
                for conversion in self._conversions(delta)
            )
        )

    def fits(self, spent: Cost, capacity: Cost) -> bool:
        return any(s <= c for s, c in zip(self._check(spent), self._check(capacity), strict=True))

    def epsilon_spent(self, spent: Cost, delta: Decimal) -> Decimal:
        units = self._check(spent)
        _quota(Decimal(0), delta, need_delta=True, mode="rdp")
        if not any(units):
            return Decimal(0)
        best = min(
            unit * _FINE_PER_RDP_UNIT + conversion
            for unit, conversion in zip(units, self._conversions(delta), strict=True)
        )
        return _amount(max(0, -(-best // _FINE_PER_EPSILON_UNIT)), EPSILON_UNIT)

    def best_order(self, spent: Cost, delta: Decimal) -> Decimal:
        """The order at which ``epsilon_spent`` is attained."""
        units = self._check(spent)
        conversions = self._conversions(delta)
        index = min(
            range(self._length), key=lambda i: units[i] * _FINE_PER_RDP_UNIT + conversions[i]
        )
        return self.orders[index]


_ACCOUNTANTS: dict[Mode, Accountant] = {
    "pure": PureAccountant(),
    "zcdp": ZcdpAccountant(),
    "rdp": RdpAccountant(),
}


def accountant(mode: Mode) -> Accountant:
    """The accountant of a ``PrivacyBudget`` accounting mode."""
    try:
        return _ACCOUNTANTS[mode]
    except KeyError:
        raise ValueError(f"unknown accounting mode {mode!r}: use pure, zcdp or rdp") from None


# -- PLD: tight, slow, for reports ---------------------------------------------------------


def pld_epsilon(releases: Iterable[Release], delta: Decimal | float) -> float:
    """The epsilon at ``delta`` of composing ``releases``, by privacy loss distributions.

    Google's dp-accounting PLD (pessimistic estimates, discretisation 1e-4): tight (Koskela
    et al. 2020; Doroshenko et al. 2022), but seconds for thousands of releases. For reports
    and benchmarks only, never for gating a request.
    """
    from dp_accounting.pld import privacy_loss_distribution as pld  # slow; reports only

    counts: collections.Counter[tuple[str, Decimal, Decimal]] = collections.Counter(
        (release.mechanism, release.sensitivity, release.scale) for release in releases
    )
    composed = None
    for (mechanism, sensitivity, scale), count in sorted(counts.items()):
        if mechanism == "gaussian":
            single = pld.from_gaussian_mechanism(
                calibration.float_at_most(scale / sensitivity), sensitivity=1
            )
        elif mechanism == "laplace":
            single = pld.from_laplace_mechanism(
                calibration.float_at_most(scale / sensitivity), sensitivity=1
            )
        elif mechanism == "discreteLaplace":
            single = pld.from_discrete_laplace_mechanism(
                calibration.float_at_least(1 / scale), sensitivity=math.ceil(sensitivity)
            )
        else:
            single = pld.from_discrete_gaussian_mechanism(
                calibration.float_at_most(scale), sensitivity=math.ceil(sensitivity)
            )
        block = single.self_compose(count) if count > 1 else single
        composed = block if composed is None else composed.compose(block)
    if composed is None:
        return 0.0
    return float(composed.get_epsilon_for_delta(float(delta)))
