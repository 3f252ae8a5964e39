"""Calibration against reference values: analytic Gaussian, classic Gaussian, Laplace, zCDP.

Reference values were computed independently and are also re-derived live from Google's
dp-accounting (``get_sigma_gaussian`` implements Balle & Wang 2018) and from OpenDP's own
zCDP -> (epsilon, delta) conversion, so a wrong formula fails twice.
"""

from __future__ import annotations

import decimal
import fractions
import math
from decimal import Decimal

import dp_accounting
import opendp.prelude as dp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hush.privacy import calibration

dp.enable_features("contrib")  # what hush.privacy.mechanisms enables; nothing more

# (sensitivity, epsilon, delta) -> analytic sigma, from dp_accounting.get_sigma_gaussian.
ANALYTIC_REFERENCE = [
    (1, 1.0, 1e-5, 3.7306316348),
    (1, 0.1, 1e-5, 30.7495661320),
    (1, 1.0, 1e-9, 5.4952661572),
    (1, 5.0, 1e-3, 0.6898423270),
    (2, 1.0, 1e-5, 2 * 3.7306316348),
]


@pytest.mark.parametrize(("sensitivity", "epsilon", "delta", "sigma"), ANALYTIC_REFERENCE)
def test_analytic_gaussian_matches_the_reference(
    sensitivity: int, epsilon: float, delta: float, sigma: float
) -> None:
    assert calibration.gaussian_sigma(sensitivity, epsilon, delta) == pytest.approx(sigma, rel=1e-4)


def test_analytic_gaussian_is_much_tighter_than_the_classic_bound() -> None:
    # The numbers quoted in the design: 3.73 (analytic) against 4.84 (classic formula).
    analytic = calibration.gaussian_sigma(1, 1, 1e-5)
    classic_formula = math.sqrt(2 * math.log(1.25 / 1e-5)) / 1
    assert analytic == pytest.approx(3.7306, abs=1e-4)
    assert classic_formula == pytest.approx(4.8448, abs=1e-4)


def test_classic_gaussian_is_the_textbook_formula_and_refuses_large_epsilon() -> None:
    assert calibration.gaussian_sigma(1, 0.5, 1e-5, analytic=False) == pytest.approx(
        math.sqrt(2 * math.log(1.25 / 1e-5)) / 0.5, rel=1e-12
    )
    with pytest.raises(ValueError, match="epsilon < 1"):
        calibration.gaussian_sigma(1, 1, 1e-5, analytic=False)


@pytest.mark.parametrize("epsilon", [0.01, 0.1, 0.5, 1.0, 3.0, 10.0])
@pytest.mark.parametrize("delta", [1e-3, 1e-6, 1e-12])
def test_analytic_gaussian_agrees_with_dp_accounting_and_never_undershoots(
    epsilon: float, delta: float
) -> None:
    ours = calibration.gaussian_sigma(1, epsilon, delta)
    theirs = dp_accounting.get_sigma_gaussian(epsilon, delta)
    assert ours == pytest.approx(theirs, rel=1e-8)
    # dp-accounting's root has 1e-12 tolerance either way; ours errs towards more noise.
    assert ours >= theirs - 1e-11
    if epsilon < 1:
        assert ours < calibration.gaussian_sigma(1, epsilon, delta, analytic=False)


@pytest.mark.parametrize(("epsilon", "delta"), [(1.0, 1e-5), (0.1, 1e-9), (8.0, 1e-3)])
def test_analytic_sigma_achieves_delta_and_is_tight(epsilon: float, delta: float) -> None:
    sigma = calibration.gaussian_sigma(1, epsilon, delta)
    assert calibration.gaussian_log_delta(sensitivity=1, sigma=sigma, epsilon=epsilon) <= (
        math.log(delta)
    )
    smaller = sigma * (1 - 1e-6)
    assert calibration.gaussian_log_delta(sensitivity=1, sigma=smaller, epsilon=epsilon) > (
        math.log(delta)
    )


def test_gaussian_epsilon_inverts_the_calibration() -> None:
    # Reference for the basic-composition example: one release of sigma 10 at delta 1e-9.
    epsilon = calibration.gaussian_epsilon(sensitivity=1, sigma=10, delta=1e-9)
    assert epsilon == pytest.approx(dp_accounting.get_epsilon_gaussian(10, 1e-9), rel=1e-8)
    assert epsilon == pytest.approx(0.5351482, abs=1e-6)
    sigma = calibration.gaussian_sigma(1, epsilon, 1e-9)
    assert sigma == pytest.approx(10, rel=1e-8)


def test_laplace_scale_is_sensitivity_over_epsilon_rounded_up() -> None:
    assert calibration.laplace_scale(1, 1) == 1.0
    assert calibration.laplace_scale(2, 0.5) == 4.0
    scale = calibration.laplace_scale(1, 0.3)
    assert fractions.Fraction(scale) >= fractions.Fraction(10, 3)
    assert calibration.recorded_scale(scale) >= Decimal(10) / Decimal(3)
    assert calibration.discrete_laplace_scale(3, Decimal("0.5")) == 6.0


def test_discrete_gaussian_matches_opendps_own_conversion() -> None:
    sigma = calibration.discrete_gaussian_sigma(1, 1, 1e-5)
    assert sigma == pytest.approx(4.0451303, rel=1e-6)
    measurement = dp.c.make_zCDP_to_approxDP(
        dp.m.make_gaussian(
            dp.vector_domain(dp.atom_domain(T="i64")), dp.l2_distance(T="i64"), scale=sigma
        )
    )
    assert measurement.map(1).epsilon(1e-5) <= 1.0
    assert calibration.discrete_gaussian_epsilon(sensitivity=1, sigma=sigma, delta=1e-5) <= 1.0
    # Proven but looser than the continuous analytic value, by under 10% here.
    assert 1 < sigma / calibration.gaussian_sigma(1, 1, 1e-5) < 1.1


@pytest.mark.parametrize(("rho", "delta"), [(0.005, 1e-6), (5.0, 1e-6), (0.2, 1e-9)])
def test_tight_zcdp_conversion_matches_dp_accountings_rdp_conversion(
    rho: float, delta: float
) -> None:
    orders = dp_accounting.rdp.rdp_privacy_accountant.DEFAULT_RDP_ORDERS
    theirs, _ = dp_accounting.rdp.compute_epsilon(orders, [a * rho for a in orders], delta)
    ours = calibration.zcdp_epsilon(rho, delta)
    # A continuous search over orders can only do better than a grid, never much better.
    assert ours <= theirs + 1e-12
    assert ours == pytest.approx(theirs, rel=2e-3)


def test_scale_dispatches_on_the_mechanism() -> None:
    assert calibration.scale("laplace", sensitivity=1, epsilon=1, delta=0) == 1.0
    assert calibration.scale("discreteLaplace", sensitivity=2, epsilon=1, delta=0) == 2.0
    assert calibration.scale("gaussian", sensitivity=1, epsilon=1, delta=1e-5) == (
        calibration.gaussian_sigma(1, 1, 1e-5)
    )
    assert calibration.scale("discreteGaussian", sensitivity=1, epsilon=1, delta=1e-5) == (
        calibration.discrete_gaussian_sigma(1, 1, 1e-5)
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: calibration.laplace_scale(1, 0), "epsilon must be greater than 0"),
        (lambda: calibration.laplace_scale(-1, 1), "sensitivity must be greater than 0"),
        (lambda: calibration.gaussian_sigma(1, 1, 0), "delta must be greater than 0"),
        (lambda: calibration.gaussian_sigma(1, 1, 1), "delta must be greater than 0"),
        (lambda: calibration.laplace_scale(1, math.inf), "finite"),
    ],
)
def test_nonsense_is_refused(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]


def test_booleans_are_not_amounts() -> None:
    with pytest.raises(TypeError):
        calibration.laplace_scale(True, 1)


@given(st.floats(min_value=1e-300, max_value=1e300, allow_nan=False, allow_infinity=False))
def test_recorded_scale_never_exceeds_the_float_and_is_short(scale: float) -> None:
    recorded = calibration.recorded_scale(scale)
    assert recorded <= Decimal(scale)
    assert len(recorded.as_tuple().digits) <= calibration.SCALE_DIGITS
    assert (Decimal(scale) - recorded) / Decimal(scale) < Decimal("1e-16")


@given(
    st.decimals(min_value="0.001", max_value="1000", places=6),
    st.decimals(min_value="0.001", max_value="50", places=6),
)
def test_laplace_recorded_scale_still_meets_epsilon(
    sensitivity: decimal.Decimal, epsilon: decimal.Decimal
) -> None:
    scale = calibration.laplace_scale(sensitivity, epsilon)
    recorded = calibration.recorded_scale(scale)
    assert fractions.Fraction(sensitivity) / fractions.Fraction(recorded) <= fractions.Fraction(
        epsilon
    )
