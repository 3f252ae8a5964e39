"""How accurate a route's released values are, and how many releases a budget still allows.

Everything here follows from the policy alone (``route_cost.route_plan``: the sampler and its
scale per field), never from an answer, so it is free to publish: ``hush policy explain``
prints it and the sidecar sends each field's 95 % half-width in ``X-DP-Accuracy``.

Owns, per field of a route (``route_accuracy``):

- the *half-width* of the ``level`` interval of one released value: the ``a`` with
  ``P[|Z| >= a] <= 1 - level`` for the field's noise ``Z``, from OpenDP's own accuracy
  functions (``opendp.accuracy``: ``laplacian_scale_to_accuracy`` (``b ln(1/alpha)``),
  ``gaussian_scale_to_accuracy`` (``sigma Phi^-1(1 - alpha/2)``), and the discrete
  variants). It is per value: of ``n`` values of a vector, about ``(1 - level) n`` fall
  outside. ``postProcess.round`` on a real mechanism adds up to 0.5;
- the suppression that ``minCohort`` implies for a ``count`` or ``histogram`` value (the
  released value ``v = postProcess(c + Z)`` of a true count ``c`` is nulled when
  ``v < minCohort``, ``hush.sidecar.release``): the largest true count still suppressed with
  probability at least 50 % and at least 95 %, and the smallest released with at least 95 %;
- for a field that selects an open key set, the threshold its noisy count must reach;
- for a ``mean`` (noisy sum over noisy count, clamped to its bounds), a half-width at a
  given cohort size ``n`` (``mean_half_width``): with probability at least ``level`` both
  noises are within their ``1 - alpha/2`` half-widths ``a_S``, ``a_C`` (union bound), and then
  ``|released - true| = |Z_S - mu Z_C| / (n + Z_C) <= (a_S + M a_C) / (n - a_C)`` with
  ``M = max(|lower|, |upper|)`` (capped at ``upper - lower``, since both lie in the bounds).

And ``releases_left``: how many more charges of one release fit a quota, with the budget's
own accountant (``hush.privacy.accounting``: epsilons add under pure accounting, rho under
zCDP, each Renyi order under RDP with "fits at some order"), so the count is exactly what the
accountant would admit. It does not read budgets or policies from anywhere (``hush.cli``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from statistics import NormalDist

import opendp.accuracy as opendp_accuracy

from hush.api import dppolicy
from hush.privacy import accounting, kinds, route_cost

DEFAULT_LEVEL = 0.95
# releases_left stops counting here (a quota of this many releases is "unlimited" in practice).
MOST_RELEASES = 10**12
# Discrete Gaussians wider than this are summed as the normal they approach (their total
# variation distance to the rounded normal is below 1e-300 at this width).
_DISCRETE_GAUSSIAN_SUMMED_UP_TO = 2000.0


def _alpha(level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(f"a confidence level is between 0 and 1 (e.g. 0.95), got {level!r}")
    return 1.0 - level


def half_width(mechanism: kinds.Mechanism, scale: float, level: float = DEFAULT_LEVEL) -> float:
    """OpenDP's accuracy: ``a`` with ``P[|Z| >= a] <= 1 - level`` for noise of ``scale``.

    For the discrete kinds the error is an integer, so ``floor(a)`` covers as well (OpenDP's
    documentation); the value is OpenDP's, unrounded.
    """
    alpha = _alpha(level)
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"a noise scale is a positive number, got {scale!r}")
    functions = {
        "laplace": opendp_accuracy.laplacian_scale_to_accuracy,
        "gaussian": opendp_accuracy.gaussian_scale_to_accuracy,
        "discreteLaplace": opendp_accuracy.discrete_laplacian_scale_to_accuracy,
        "discreteGaussian": opendp_accuracy.discrete_gaussian_scale_to_accuracy,
    }
    result = functions[kinds.parse(mechanism)](float(scale), alpha, T="f64")
    return float(result)


# -- the noise's distribution, for suppression ----------------------------------------------


@functools.lru_cache(maxsize=64)
def _discrete_gaussian_table(sigma: float) -> tuple[int, tuple[float, ...]]:
    """(reach, cumulative probabilities of -reach..reach) of the discrete Gaussian."""
    reach = math.ceil(40 * sigma) + 10  # beyond 40 sigma the mass is below 1e-300
    weights = [math.exp(-(k * k) / (2 * sigma * sigma)) for k in range(-reach, reach + 1)]
    total = math.fsum(weights)
    cumulative: list[float] = []
    running = 0.0
    for weight in weights:
        running += weight / total
        cumulative.append(min(running, 1.0))
    return reach, tuple(cumulative)


def noise_at_most(mechanism: kinds.Mechanism, scale: float, x: float) -> float:
    """``P[Z <= x]`` for the mechanism's noise of ``scale`` (the discrete kinds on integers)."""
    parsed = kinds.parse(mechanism)
    if parsed == "laplace":
        if x < 0:
            return 0.5 * math.exp(x / scale)
        return 1.0 - 0.5 * math.exp(-x / scale)
    if parsed == "gaussian":
        return NormalDist(0.0, scale).cdf(x)
    k = math.floor(x)
    if parsed == "discreteLaplace":
        # P[Z = k] = (1 - r) / (1 + r) r^|k|, r = e^(-1/scale); P[Z >= m] = r^m / (1 + r), m >= 1.
        r = math.exp(-1.0 / scale)
        if k >= 0:
            return 1.0 - r ** (k + 1) / (1.0 + r)
        return r ** (-k) / (1.0 + r)
    if scale > _DISCRETE_GAUSSIAN_SUMMED_UP_TO:
        return NormalDist(0.0, scale).cdf(k + 0.5)
    reach, cumulative = _discrete_gaussian_table(scale)
    if k < -reach:
        return 0.0
    if k >= reach:
        return 1.0
    return cumulative[k + reach]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Suppression:
    """What ``minCohort`` does to one count value, in true counts (people)."""

    min_cohort: int
    # The largest true count nulled with probability >= 50 % / >= 95 % (None: not even 0).
    half_suppressed_up_to: int | None
    mostly_suppressed_up_to: int | None
    # The smallest true count released (not nulled) with probability >= 95 %.
    mostly_released_from: int


def suppression_probability(
    mechanism: kinds.Mechanism, scale: float, min_cohort: int, count: int, *, rounds: bool
) -> float:
    """``P[postProcess(count + Z) < min_cohort]``: the chance a true ``count`` is nulled.

    The discrete kinds release ``count + Z`` (an integer): nulled when ``Z <= m - 1 - c``.
    A real release is nulled when ``c + Z < m``, or ``< m - 0.5`` when it is rounded (ties
    have probability 0). Clamping at 0 changes nothing for ``m > 0``.
    """
    if min_cohort <= 0:
        return 0.0
    if kinds.is_discrete(kinds.parse(mechanism)):
        return noise_at_most(mechanism, scale, min_cohort - 1 - count)
    edge = min_cohort - count - (0.5 if rounds else 0.0)
    return noise_at_most(mechanism, scale, edge)


def _largest_count_with(probability: float, suppressed: Callable[[int], float]) -> int | None:
    """The largest c >= 0 with suppressed(c) >= probability (it decreases in c)."""
    if suppressed(0) < probability:
        return None
    low, high = 0, 1
    while suppressed(high) >= probability:
        low, high = high, high * 2
    while high - low > 1:  # suppressed(low) >= probability > suppressed(high)
        middle = (low + high) // 2
        if suppressed(middle) >= probability:
            low = middle
        else:
            high = middle
    return low


def suppression(
    mechanism: kinds.Mechanism, scale: float, min_cohort: int, *, rounds: bool
) -> Suppression | None:
    """The suppression ``min_cohort`` implies for a count noised at ``scale``; None if off."""
    if min_cohort <= 0:
        return None

    def suppressed(count: int) -> float:
        return suppression_probability(mechanism, scale, min_cohort, count, rounds=rounds)

    released_from = _largest_count_with(0.05 + 1e-12, suppressed)
    return Suppression(
        min_cohort=min_cohort,
        half_suppressed_up_to=_largest_count_with(0.5, suppressed),
        mostly_suppressed_up_to=_largest_count_with(0.95, suppressed),
        mostly_released_from=0 if released_from is None else released_from + 1,
    )


# -- per route -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class FieldAccuracy:
    """How far one field's released values are from the truth, and when they are nulled."""

    path: str
    kind: str
    mechanism: kinds.Mechanism
    scale: float  # the sampler's scale (Laplace b, Gaussian sigma); a mean: of its sums
    values: int  # values released per answer at most
    sensitivity: str  # what the scale was calibrated for (route_cost), for the record
    level: float
    half_width: float  # per value, at ``level``; a mean: its bounds' span (mean_half_width)
    suppression: Suppression | None  # count and histogram values only
    selection_threshold: int | None  # the noisy count a key of an open set must reach
    count_path: str | None  # a mean's count field
    count_scale: float | None  # a mean: its count field's scale


@dataclasses.dataclass(frozen=True, kw_only=True)
class RouteAccuracy:
    path: str
    mechanism: kinds.Mechanism
    charge: accounting.Release
    fields: tuple[FieldAccuracy, ...]


def route_accuracy(
    route: dppolicy.Route,
    *,
    level: float = DEFAULT_LEVEL,
    plan: route_cost.RoutePlan | None = None,
) -> RouteAccuracy:
    """Every field's accuracy at ``level``; ``route_cost.RouteError`` if the route is unsound.

    ``plan`` (default: ``route_cost.route_plan(route)``) supplies the samplers' scales.
    """
    planned = plan if plan is not None else route_cost.route_plan(route)
    thresholds = {selection.field_index: selection.threshold for selection in planned.selections}
    mechanism = planned.mechanism
    fields: list[FieldAccuracy] = []
    for index, item in enumerate(planned.fields):
        field = item.field
        scale = float(item.plan.sampler.scale)
        width = half_width(mechanism, scale, level)
        rounds = field.post_process.round and not kinds.is_discrete(mechanism)
        if rounds:
            width += 0.5  # rounding moves a value by at most 0.5 more
        if field.kind == "mean" and field.bounds is not None:
            # Depends on the cohort (mean_half_width); without one, only the bounds hold.
            width = field.bounds.upper - field.bounds.lower
        count_scale: float | None = None
        if item.count_index is not None:
            count_scale = float(planned.fields[item.count_index].plan.sampler.scale)
        fields.append(
            FieldAccuracy(
                path=field.path,
                kind=field.kind,
                mechanism=mechanism,
                scale=scale,
                values=item.length,
                sensitivity=str(item.plan.release.sensitivity),
                level=level,
                half_width=width,
                suppression=(
                    suppression(mechanism, scale, route.min_cohort, rounds=rounds)
                    if field.kind in ("count", "histogram")
                    else None
                ),
                selection_threshold=thresholds.get(index),
                count_path=field.count_path,
                count_scale=count_scale,
            )
        )
    return RouteAccuracy(
        path=route.path, mechanism=mechanism, charge=planned.charge, fields=tuple(fields)
    )


def mean_half_width(
    mechanism: kinds.Mechanism,
    *,
    sum_scale: float,
    count_scale: float,
    bounds: dppolicy.Bounds,
    cohort: int,
    level: float = DEFAULT_LEVEL,
) -> float:
    """A half-width of a released mean over ``cohort`` people, holding with >= ``level``.

    Module docstring: ``min(upper - lower, (a_S + M a_C) / (n - a_C))`` with both
    half-widths at ``1 - alpha/2``; the discrete kinds round the reconstructed sum, which
    moves the mean by at most ``0.5 / n`` more. When ``n - a_C < 1`` the noisy count may be
    anything down to 1, and only the bounds bound the error.
    """
    if cohort < 1:
        raise ValueError(f"a cohort has at least one person, got {cohort}")
    alpha = _alpha(level)
    each = 1.0 - alpha / 2
    sum_width = half_width(mechanism, sum_scale, each)
    count_width = half_width(mechanism, count_scale, each)
    span = bounds.upper - bounds.lower
    largest = max(abs(bounds.lower), abs(bounds.upper))
    if cohort - count_width < 1:
        return span
    width = (sum_width + largest * count_width) / (cohort - count_width)
    if kinds.is_discrete(kinds.parse(mechanism)):
        width += 0.5 / cohort
    return min(span, width)


def accuracy_header(accuracy: RouteAccuracy) -> str:
    """``X-DP-Accuracy``: ``path=half-width`` per field, ``;``-separated, rounded up.

    Four significant digits, rounded up so that the interval is never understated. A mean's
    half-width depends on the cohort, which the header cannot know without reading the
    answer: it gives the bounds' span, what always holds.
    """
    return ";".join(f"{field.path}={round_up(field.half_width)}" for field in accuracy.fields)


def round_up(value: float, digits: int = 4) -> str:
    """``value`` to ``digits`` significant digits, rounded up (never understated)."""
    if value <= 0 or not math.isfinite(value):
        return repr(value)
    exponent = math.floor(math.log10(value)) - digits + 1
    step = 10.0**exponent
    scaled = math.ceil(value / step - 1e-9)
    result = scaled * step
    if result < value:
        result = (scaled + 1) * step
    decimals = max(0, -exponent)
    return f"{result:.{decimals}f}"


# -- budgets ---------------------------------------------------------------------------------


def releases_left(
    accountant: accounting.Accountant,
    spent: accounting.Cost,
    capacity: accounting.Cost,
    cost: accounting.Cost,
) -> int:
    """How many more charges of ``cost`` fit ``capacity`` after ``spent``, as the accountant
    judges them (``MOST_RELEASES`` at most)."""

    def fits(count: int) -> bool:
        added = accounting.Cost(tuple(unit * count for unit in cost.units))
        return accountant.fits(accountant.add(spent, added), capacity)

    if not fits(1):
        return 0
    low, high = 1, 2
    while fits(high):
        if high >= MOST_RELEASES:
            return MOST_RELEASES
        low, high = high, min(high * 2, MOST_RELEASES)
    while high - low > 1:  # fits(low), not fits(high)
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return low
