"""Noise scales from sensitivity, epsilon and delta, always rounded towards more noise.

Owns the map (mechanism, sensitivity, epsilon, delta) -> noise scale, and its inverses used to
check a release (``gaussian_log_delta``, ``gaussian_epsilon``, ``zcdp_epsilon``). It does not
sample (``hush.privacy.mechanisms``) and does not compose (``hush.privacy.accounting``).

- Laplace, discrete Laplace: ``b = sensitivity / epsilon`` (L1 sensitivity). The discrete
  Laplace (two-sided geometric, P(x) ~ exp(-|x|/b)) is (sensitivity/b)-DP for integer queries
  exactly like the continuous one (Ghosh, Roughgarden, Sundararajan 2009; Canonne, Kamath,
  Steinke 2020, Sec. 2).
- Gaussian: the *analytic* Gaussian mechanism (Balle & Wang, ICML 2018, Thm. 8): the smallest
  sigma with ``Phi(D/2s - e s/D) - exp(e) Phi(-D/2s - e s/D) <= delta``. It is exact, so it is
  never worse than the classic ``sigma = D sqrt(2 ln(1.25/delta)) / epsilon`` (Dwork & Roth
  2014, Thm. A.1), which moreover only holds for epsilon < 1: for D=1, e=1, delta=1e-5 the
  analytic sigma is 3.7306 against the classic 4.8448. ``analytic=False`` gives the classic
  value (and refuses epsilon >= 1) for comparison only.
- Discrete Gaussian: calibrated through its zCDP guarantee, rho = D^2 / (2 sigma^2)
  (Canonne, Kamath, Steinke 2020; it also holds for vectors of independent coordinates because
  Renyi divergences of product distributions add), converted to (epsilon, delta) with the
  tight conversion of the same paper (Prop. 12, the one dp-accounting uses), which is also
  what OpenDP applies to its integer Gaussian sampler. This costs ~8% more sigma than the
  analytic continuous value (4.0451 vs 3.7306 at D=1, e=1, delta=1e-5) but is a proven bound,
  not an approximation.

Rounding. The floats here are evaluated in double precision, so every search leaves a margin
in the safe direction that dwarfs the evaluation error (``LOG_DELTA_MARGIN``: calibrated
mechanisms achieve ``delta * exp(-1e-9)``, not ``delta``; ``EPSILON_MARGIN`` likewise for
the zCDP route). Scales are then rounded *up* to ``SCALE_DIGITS`` significant digits and to
the next float, so that the decimal a ledger records (``recorded_scale``, rounded *down*)
still meets the target exactly. Inputs that the float math sees are rounded towards less
privacy budget (epsilon and delta down, sigma down), so no rounding ever understates a cost.
"""

from __future__ import annotations

import decimal
import functools
import math
from collections.abc import Callable
from decimal import Decimal

import scipy.special

from hush.privacy import amounts, kinds

Amount = Decimal | float | int

SCALE_DIGITS = 17  # enough to pin a double; recorded scales are this long at most
LOG_DELTA_MARGIN = 1e-9  # absolute, on ln(delta)
EPSILON_MARGIN = 1e-9  # relative, on epsilon (discrete Gaussian)

# 60 digits: every Decimal evaluation here is exact to far below one unit of SCALE_DIGITS.
_CONTEXT = decimal.Context(
    prec=60,
    traps=[decimal.InvalidOperation, decimal.Overflow, decimal.DivisionByZero],
)
_UP = _CONTEXT.copy()
_UP.rounding = decimal.ROUND_CEILING
_DOWN = _CONTEXT.copy()
_DOWN.rounding = decimal.ROUND_FLOOR
# Renyi orders searched by the zCDP conversion: alpha = 1 + exp(t), t on this range.
_LOG_ORDER_RANGE = (math.log(1e-4), math.log(1e7))


# -- exact conversions between decimals and floats -----------------------------------------


def _decimal(value: Amount, name: str) -> Decimal:
    result = value if isinstance(value, Decimal) else amounts.exact(value)
    if not result.is_finite():
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return result


def _positive(value: Amount, name: str) -> Decimal:
    result = _decimal(value, name)
    if result <= 0:
        raise ValueError(f"{name} must be greater than 0, got {value!r}")
    return result


def _probability(value: Amount, name: str = "delta") -> Decimal:
    result = _decimal(value, name)
    if not 0 < result < 1:
        raise ValueError(f"{name} must be greater than 0 and less than 1, got {value!r}")
    return result


def float_at_least(value: Decimal) -> float:
    """The smallest float that is >= ``value`` (exactly)."""
    result = float(value)
    if Decimal(result) < value:
        result = math.nextafter(result, math.inf)
    return result


def float_at_most(value: Decimal) -> float:
    """The largest float that is <= ``value`` (exactly)."""
    result = float(value)
    if Decimal(result) > value:
        result = math.nextafter(result, -math.inf)
    return result


def _significant(value: Decimal, rounding: str) -> Decimal:
    if value == 0:
        return value
    exponent = value.adjusted() - (SCALE_DIGITS - 1)
    return value.quantize(Decimal(1).scaleb(exponent), rounding=rounding).normalize(_CONTEXT)


def _scale_from(exact: Decimal) -> float:
    """A float scale >= ``exact`` whose ``recorded_scale`` is still >= ``exact``."""
    return float_at_least(_significant(exact, decimal.ROUND_CEILING))


def recorded_scale(scale: float) -> Decimal:
    """The decimal a ledger records for a sampler's float ``scale``: never above it.

    At most ``SCALE_DIGITS`` significant digits; for a scale returned by this module it is
    still at least the exact scale the target needs, so checking it reproduces the target.
    """
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"a noise scale must be a positive finite number, got {scale!r}")
    return _significant(Decimal(scale), decimal.ROUND_FLOOR)


# -- Laplace -------------------------------------------------------------------------------


def laplace_scale(sensitivity: Amount, epsilon: Amount) -> float:
    """Laplace scale b = sensitivity / epsilon (L1 sensitivity), rounded up."""
    exact = _UP.divide(_positive(sensitivity, "sensitivity"), _positive(epsilon, "epsilon"))
    return _scale_from(exact)


def discrete_laplace_scale(sensitivity: Amount, epsilon: Amount) -> float:
    """Discrete Laplace scale (P(x) ~ exp(-|x|/b)): the same b = sensitivity / epsilon."""
    return laplace_scale(sensitivity, epsilon)


# -- Gaussian: analytic (Balle & Wang 2018) and classic ----------------------------------


def _log_delta(noise_multiplier: float, epsilon: float) -> float:
    """ln delta(epsilon) of the Gaussian with sigma = noise_multiplier * sensitivity (BW Thm 8)."""
    u = noise_multiplier
    upper = scipy.special.log_ndtr(1 / (2 * u) - epsilon * u)
    lower = scipy.special.log_ndtr(-1 / (2 * u) - epsilon * u)
    exponent = float(epsilon + lower - upper)
    if exponent >= 0:
        return -math.inf
    return float(upper + math.log1p(-math.exp(exponent)))


def _bisect_smallest(
    satisfied: Callable[[float], bool], *, start: float, floor: float = 0.0
) -> float:
    """The smallest x (to 1e-15 relative) with ``satisfied(x)``, for a monotone predicate.

    Returns the satisfying end of the final bracket, so the result always satisfies.
    """
    high = start
    while not satisfied(high):
        high *= 2
        if high > 1e300:
            raise ValueError("no noise scale satisfies the target")
    low = high / 2
    while low > floor and satisfied(low):
        high, low = low, low / 2
        if low < 1e-300:
            return high
    for _ in range(400):
        middle = (low + high) / 2
        if satisfied(middle):
            high = middle
        else:
            low = middle
        if high - low <= high * 1e-15:
            break
    return high


@functools.lru_cache(maxsize=1024)
def _analytic_noise_multiplier(epsilon: float, delta: float) -> float:
    target = math.log(delta) - LOG_DELTA_MARGIN
    return _bisect_smallest(lambda u: _log_delta(u, epsilon) <= target, start=1.0)


def gaussian_sigma(
    sensitivity: Amount, epsilon: Amount, delta: Amount, *, analytic: bool = True
) -> float:
    """Gaussian sigma for (epsilon, delta)-DP at the given L2 sensitivity, rounded up.

    ``analytic=True`` (the default) is Balle & Wang's exact calibration; ``False`` is the
    classic Dwork-Roth bound, which is looser everywhere and only valid for epsilon < 1.
    """
    sensitivity_exact = _positive(sensitivity, "sensitivity")
    epsilon_exact = _positive(epsilon, "epsilon")
    delta_exact = _probability(delta)
    if not analytic:
        if epsilon_exact >= 1:
            raise ValueError(
                "the classic Gaussian bound only holds for epsilon < 1 (Dwork & Roth 2014, "
                "Thm. A.1); use the analytic calibration"
            )
        log_term = _CONTEXT.ln(_CONTEXT.divide(Decimal("1.25"), delta_exact))
        exact = _UP.divide(
            _UP.multiply(sensitivity_exact, _CONTEXT.sqrt(_CONTEXT.multiply(2, log_term))),
            epsilon_exact,
        )
        return _scale_from(_nudge_up(exact))
    multiplier = _analytic_noise_multiplier(
        float_at_most(epsilon_exact), float_at_most(delta_exact)
    )
    return _scale_from(_UP.multiply(sensitivity_exact, Decimal(multiplier)))


def gaussian_log_delta(*, sensitivity: Amount, sigma: Amount, epsilon: Amount) -> float:
    """ln of the smallest delta for which the Gaussian is (epsilon, delta)-DP (Balle & Wang).

    Evaluated with sigma and epsilon rounded down, so never below the exact value by more
    than the double-precision evaluation error (which ``LOG_DELTA_MARGIN`` covers).
    """
    multiplier = _DOWN.divide(_positive(sigma, "sigma"), _positive(sensitivity, "sensitivity"))
    return _log_delta(float_at_most(multiplier), float_at_most(_positive(epsilon, "epsilon")))


def gaussian_epsilon(*, sensitivity: Amount, sigma: Amount, delta: Amount) -> float:
    """The smallest epsilon (rounded up, with margin) of the Gaussian at this delta."""
    multiplier = float_at_most(
        _DOWN.divide(_positive(sigma, "sigma"), _positive(sensitivity, "sensitivity"))
    )
    target = math.log(float_at_most(_probability(delta))) - LOG_DELTA_MARGIN
    if _log_delta(multiplier, 0.0) <= target:
        return 0.0
    return _bisect_smallest(lambda e: _log_delta(multiplier, e) <= target, start=1.0)


# -- zCDP and the discrete Gaussian ---------------------------------------------------------


def _conversion_term(order: float, log_inverse_delta: float) -> float:
    """c(alpha) with eps = RDP(alpha) + c(alpha) (Canonne-Kamath-Steinke 2020, Prop. 12)."""
    return math.log1p(-1 / order) + (log_inverse_delta - math.log(order)) / (order - 1)


def _best_order(objective: Callable[[float], float]) -> tuple[float, float]:
    """(min value, alpha) of ``objective`` over alpha > 1: log grid, then golden section.

    Any alpha gives a valid bound, so a search that misses the true minimum is only less
    tight, never unsound.
    """
    low_t, high_t = _LOG_ORDER_RANGE
    steps = 300
    grid = [low_t + (high_t - low_t) * i / steps for i in range(steps + 1)]
    values = [objective(1 + math.exp(t)) for t in grid]
    best = min(range(len(grid)), key=values.__getitem__)
    left = grid[max(best - 1, 0)]
    right = grid[min(best + 1, steps)]
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(100):
        inner_left = right - ratio * (right - left)
        inner_right = left + ratio * (right - left)
        if objective(1 + math.exp(inner_left)) <= objective(1 + math.exp(inner_right)):
            right = inner_right
        else:
            left = inner_left
    candidates = [(values[best], 1 + math.exp(grid[best]))]
    middle = 1 + math.exp((left + right) / 2)
    candidates.append((objective(middle), middle))
    return min(candidates)


def zcdp_epsilon(rho: float, delta: float) -> float:
    """The epsilon at ``delta`` of a rho-zCDP mechanism, tight conversion (CKS 2020, Prop. 12)."""
    if rho < 0 or not 0 < delta < 1:
        raise ValueError(f"need rho >= 0 and 0 < delta < 1, got rho={rho!r}, delta={delta!r}")
    if rho == 0:
        return 0.0
    log_inverse_delta = -math.log(delta)
    value, _ = _best_order(lambda a: a * rho + _conversion_term(a, log_inverse_delta))
    return max(0.0, value)


@functools.lru_cache(maxsize=1024)
def _largest_rho(epsilon: float, delta: float) -> float:
    log_inverse_delta = -math.log(delta)
    target = epsilon * (1 - EPSILON_MARGIN)
    negative, _ = _best_order(lambda a: -(target - _conversion_term(a, log_inverse_delta)) / a)
    return -negative


def discrete_gaussian_sigma(sensitivity: Amount, epsilon: Amount, delta: Amount) -> float:
    """Discrete Gaussian sigma for (epsilon, delta)-DP through its zCDP bound, rounded up."""
    sensitivity_exact = _positive(sensitivity, "sensitivity")
    rho = _largest_rho(
        float_at_most(_positive(epsilon, "epsilon")), float_at_most(_probability(delta))
    )
    if rho <= 0:
        raise ValueError("no discrete Gaussian reaches this (epsilon, delta); raise epsilon")
    exact = _UP.divide(sensitivity_exact, _DOWN.sqrt(_DOWN.multiply(2, Decimal(rho))))
    return _scale_from(_nudge_up(exact))


def discrete_gaussian_epsilon(*, sensitivity: Amount, sigma: Amount, delta: Amount) -> float:
    """The epsilon at ``delta`` of the discrete Gaussian (zCDP route, rho rounded up)."""
    sensitivity_exact = _positive(sensitivity, "sensitivity")
    sigma_exact = _positive(sigma, "sigma")
    rho = _UP.divide(
        _UP.multiply(sensitivity_exact, sensitivity_exact),
        _DOWN.multiply(_DOWN.multiply(2, sigma_exact), sigma_exact),
    )
    return zcdp_epsilon(float_at_least(rho), float_at_most(_probability(delta)))


def _nudge_up(value: Decimal) -> Decimal:
    """``value`` plus more than the rounding error of a few 60-digit operations.

    Decimal ``ln`` and ``sqrt`` round half-even whatever the context says, so results that
    went through them are pushed up by far more than their error before rounding up.
    """
    return _UP.add(_UP.add(value, _UP.multiply(abs(value), Decimal("1e-50"))), Decimal("1e-50"))


# -- dispatch ------------------------------------------------------------------------------


def scale(
    mechanism: kinds.Mechanism, *, sensitivity: Amount, epsilon: Amount, delta: Amount
) -> float:
    """The noise scale (Laplace b or Gaussian sigma) of ``mechanism`` for (epsilon, delta)."""
    if mechanism == "laplace":
        return laplace_scale(sensitivity, epsilon)
    if mechanism == "discreteLaplace":
        return discrete_laplace_scale(sensitivity, epsilon)
    if mechanism == "gaussian":
        return gaussian_sigma(sensitivity, epsilon, delta)
    return discrete_gaussian_sigma(sensitivity, epsilon, delta)
