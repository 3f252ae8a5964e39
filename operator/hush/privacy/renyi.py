"""Renyi-DP and zCDP costs of the four mechanisms, and conversions to (epsilon, delta).

Owns the formulas, evaluated as *exact* rationals where they are rational and as decimal
*upper bounds* where they are transcendental, so that the accountant
(``hush.privacy.accounting``) can round them to integer units in the safe direction. It does
not know about units, ledgers or quotas.

Formulas (alpha > 1 is the Renyi order, D the sensitivity):

- Gaussian and discrete Gaussian, L2 sensitivity D, sigma s: RDP(alpha) = alpha D^2 / (2 s^2),
  i.e. rho = D^2 / (2 s^2) zCDP (Mironov 2017, Table II; for the discrete Gaussian and integer
  shifts, Canonne, Kamath, Steinke 2020; coordinates add up for vectors because Renyi
  divergences of product distributions add).
- Laplace, L1 sensitivity D, scale b, t = D/b (Mironov 2017, Prop. 6):
  RDP(alpha) = ln( alpha/(2alpha-1) e^{(alpha-1)t} + (alpha-1)/(2alpha-1) e^{-alpha t} )
  / (alpha-1),
  written as dp-accounting's numerically stable ``t + ln(1 + (alpha-1)/(2alpha-1)
  (e^{(1-2alpha)t} - 1)) / (alpha-1)``. The function of t is convex with value 0 at 0, hence
  superadditive, so the scalar formula at t = ||shift||_1 / b also bounds vectors.
- Discrete Laplace: only its pure guarantee t = D/b is used. Every t-DP pair of output
  distributions is a post-processing of binary randomized response (Kairouz, Oh, Viswanath
  2015) and Renyi divergence obeys data processing, so its RDP is at most randomized
  response's: ln( (e^{alpha t} + e^{(1-alpha) t}) / (1 + e^t) ) / (alpha-1), which is also
  at most min(t, alpha t^2 / 2).
- zCDP cost of a pure t-DP release: rho = t^2 / 2 (Bun & Steinke 2016, Prop. 3.3).
- RDP -> (epsilon, delta): epsilon = RDP(alpha) + ln(1 - 1/alpha) + (ln(1/delta) - ln alpha)
  / (alpha - 1), the conversion of Canonne, Kamath, Steinke 2020 (Prop. 12) that
  dp-accounting's ``compute_epsilon`` uses; it beats Mironov's ``RDP + ln(1/delta)/(alpha-1)``
  by ~5% at the reference composition. The accountant's filter converts each of its k orders
  at delta/k (``shares``; docs/design/0019-rdp-filter.md).
- zCDP -> (epsilon, delta) for display and quotas: epsilon = rho + 2 sqrt(rho ln(1/delta))
  (Bun & Steinke 2016, Prop. 1.3). Looser than the tight conversion by ~5% but closed-form,
  so capacities invert exactly.

Decimal ``exp``/``ln``/``sqrt`` are correctly rounded to 40 digits; ``_upper`` adds far more
than the accumulated error (1e-30 relative to the magnitudes involved, against errors below
1e-38), so every "upper" value here is a true upper bound, and still 1e-21 below a unit.
"""

from __future__ import annotations

import decimal
import fractions
from decimal import Decimal
from fractions import Fraction

_CONTEXT = decimal.Context(
    prec=40,
    Emax=10**8,
    Emin=-(10**8),
    traps=[decimal.InvalidOperation, decimal.Overflow, decimal.DivisionByZero],
)
_SLACK = Decimal("1e-30")
_HUGE_EXPONENT = Decimal(10**6)


def _upper(value: Decimal, magnitude: Decimal) -> Decimal:
    """``value`` pushed up past the error of a few 40-digit operations on ``magnitude``."""
    slack = _CONTEXT.multiply(_SLACK, _CONTEXT.add(abs(magnitude), abs(value)) + 1)
    result = _CONTEXT.add(value, slack)
    return result.next_plus(_CONTEXT)


def fraction(value: Decimal) -> Fraction:
    """The exact rational value of a finite decimal."""
    return fractions.Fraction(value)


# -- zCDP ---------------------------------------------------------------------------------


def gaussian_rho(sensitivity: Decimal, sigma: Decimal) -> Fraction:
    """rho = D^2 / (2 sigma^2), exactly."""
    return fraction(sensitivity) ** 2 / (2 * fraction(sigma) ** 2)


def pure_rho(pure_epsilon: Fraction) -> Fraction:
    """rho of a pure epsilon-DP release: epsilon^2 / 2, exactly."""
    return pure_epsilon**2 / 2


def laplace_epsilon(sensitivity: Decimal, scale: Decimal) -> Fraction:
    """Pure epsilon of a (discrete) Laplace release: D / b, exactly."""
    return fraction(sensitivity) / fraction(scale)


def zcdp_epsilon_upper(rho: Decimal, delta: Decimal) -> Decimal:
    """Upper bound on rho + 2 sqrt(rho ln(1/delta)) (Bun & Steinke 2016, Prop. 1.3)."""
    if rho == 0:
        return Decimal(0)
    log_inverse_delta = _upper(-_CONTEXT.ln(delta), Decimal(1))
    root = _CONTEXT.sqrt(_CONTEXT.multiply(rho, log_inverse_delta))
    value = _CONTEXT.add(rho, _CONTEXT.multiply(2, root))
    return _upper(value, value)


def zcdp_rho_estimate(epsilon: Decimal, delta: Decimal) -> Decimal:
    """The rho whose ``zcdp_epsilon_upper`` is about ``epsilon``: (sqrt(L+e) - sqrt(L))^2."""
    log_inverse_delta = -_CONTEXT.ln(delta)
    root = _CONTEXT.subtract(
        _CONTEXT.sqrt(_CONTEXT.add(log_inverse_delta, epsilon)),
        _CONTEXT.sqrt(log_inverse_delta),
    )
    return _CONTEXT.multiply(root, root)


# -- Renyi DP -----------------------------------------------------------------------------


def gaussian_rdp(order: Decimal, sensitivity: Decimal, sigma: Decimal) -> Fraction:
    """alpha D^2 / (2 sigma^2), exactly."""
    return fraction(order) * gaussian_rho(sensitivity, sigma)


def laplace_rdp_upper(order: Decimal, pure_epsilon: Fraction) -> Decimal:
    """Upper bound on the Laplace mechanism's RDP at ``order`` (Mironov 2017, Prop. 6)."""
    t = _CONTEXT.divide(Decimal(pure_epsilon.numerator), Decimal(pure_epsilon.denominator))
    if t == 0:
        return Decimal(0)
    weight = _CONTEXT.divide(order - 1, 2 * order - 1)
    decay = _CONTEXT.subtract(_CONTEXT.exp(_CONTEXT.multiply(1 - 2 * order, t)), 1)
    inner = _CONTEXT.add(1, _CONTEXT.multiply(weight, decay))
    value = _CONTEXT.add(t, _CONTEXT.divide(_CONTEXT.ln(inner), order - 1))
    bound = _upper(value, _CONTEXT.multiply(t, order))
    return min(bound, _upper(t, t))


def pure_dp_rdp_upper(order: Decimal, pure_epsilon: Fraction) -> Decimal:
    """Upper bound on the RDP of any t-DP mechanism (randomized response is the worst)."""
    t = _CONTEXT.divide(Decimal(pure_epsilon.numerator), Decimal(pure_epsilon.denominator))
    if t == 0:
        return Decimal(0)
    if _CONTEXT.multiply(order, t) > _HUGE_EXPONENT:
        return _upper(t, t)  # e^{alpha t} would overflow; the bound is t there anyway
    numerator = _CONTEXT.add(
        _CONTEXT.exp(_CONTEXT.multiply(order, t)), _CONTEXT.exp(_CONTEXT.multiply(1 - order, t))
    )
    ratio = _CONTEXT.divide(numerator, _CONTEXT.add(1, _CONTEXT.exp(t)))
    value = _CONTEXT.divide(_CONTEXT.ln(ratio), order - 1)
    quadratic = _CONTEXT.divide(_CONTEXT.multiply(_CONTEXT.multiply(order, t), t), 2)
    magnitude = _CONTEXT.multiply(t, order)
    return min(_upper(value, magnitude), _upper(t, t), _upper(quadratic, quadratic))


def conversion_upper(order: Decimal, delta: Decimal, *, shares: int = 1) -> Decimal:
    """Upper bound on c(alpha) = ln(1 - 1/alpha) + (ln(shares/delta) - ln alpha) / (alpha - 1).

    An RDP(alpha) curve gives (RDP(alpha) + c(alpha), delta / shares)-DP (Canonne, Kamath,
    Steinke 2020, Prop. 12). ``shares`` > 1 is the union bound of a filter over that many
    orders (``hush.privacy.accounting``): each order gets delta / shares, computed as
    ln(1/delta) + ln(shares) so that no rounded quotient can make delta / shares larger.
    """
    if shares < 1:
        raise ValueError("delta is shared by at least one order")
    log_inverse_delta = _CONTEXT.add(-_CONTEXT.ln(delta), _CONTEXT.ln(Decimal(shares)))
    log_order = _CONTEXT.ln(order)
    value = _CONTEXT.add(
        _CONTEXT.ln(_CONTEXT.subtract(1, _CONTEXT.divide(1, order))),
        _CONTEXT.divide(_CONTEXT.subtract(log_inverse_delta, log_order), order - 1),
    )
    return _upper(value, log_inverse_delta + abs(log_order) + 1)
