"""Accounting: reference compositions, exact rounding, and no sequence of charges overspends.

Reference values (1000 Gaussian releases, sensitivity 1, delta 1e-6), from the issue and
re-derived live from Google's dp-accounting:

========  =====================  =====  ===================  ==============  =====
sigma     basic (pure, d/1000)   zCDP   RDP filter (d/46)    RDP, one order  PLD
========  =====================  =====  ===================  ==============  =====
10        535.15                 21.62  22.79                20.55           19.42
50        100.44                 3.52   3.60                 3.13            2.92
========  =====================  =====  ===================  ==============  =====

"Basic" is basic composition of 1000 (eps_i, 1e-9) releases, each eps_i the analytic
Gaussian's epsilon at delta 1e-9 (so the deltas add up to 1e-6): 1000 x 0.5351 = 535.15.
"RDP filter" is what the rdp mode charges: the best of its 46 orders, each converted at
delta/46, because the order is not fixed in advance (docs/design/0019-rdp-filter.md); "RDP,
one order" is dp-accounting's get_epsilon at the full delta, valid only for a composition
fixed in advance (the rdp mode's old, unsound stopping rule).
"""

from __future__ import annotations

import decimal
import math
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction

import dp_accounting
import pytest
from dp_accounting.rdp import rdp_privacy_accountant
from hypothesis import given, settings
from hypothesis import strategies as st

from hush.privacy import accounting, calibration, kinds, renyi

DELTA = Decimal("1e-6")
ORDERS = [float(order) for order in accounting.RDP_ORDERS]
SHARE = len(ORDERS)  # the rdp filter's union bound: each order converts at delta / 46
MODES: tuple[accounting.Mode, ...] = ("pure", "zcdp", "rdp")


def _compose(mode: accounting.Mode, release: accounting.Release, count: int) -> accounting.Cost:
    accountant = accounting.accountant(mode)
    cost = accountant.release_cost(release)
    spent = accountant.zero()
    for _ in range(count):
        spent = accountant.add(spent, cost)
    return spent


def _gaussian_release(sigma: int, *, per_release_delta: Decimal) -> accounting.Release:
    epsilon = calibration.gaussian_epsilon(sensitivity=1, sigma=sigma, delta=per_release_delta)
    return accounting.Release(
        mechanism="gaussian",
        epsilon=Decimal(math.ceil(epsilon * 1e9)).scaleb(-9),
        delta=per_release_delta,
        sensitivity=Decimal(1),
        scale=Decimal(sigma),
    )


@pytest.mark.parametrize(
    ("sigma", "basic", "zcdp", "rdp"),
    [(10, 535.148, 21.6226, 22.7885), (50, 100.436, 3.5245, 3.5993)],
)
def test_reference_composition_of_1000_gaussian_releases(
    sigma: int, basic: float, zcdp: float, rdp: float
) -> None:
    release = _gaussian_release(sigma, per_release_delta=Decimal("1e-9"))
    pure = accounting.accountant("pure")
    spent = _compose("pure", release, 1000)
    assert float(pure.epsilon_spent(spent, DELTA)) == pytest.approx(basic, abs=1e-3)
    assert accounting.PureAccountant().delta_spent(spent) == DELTA
    for mode, expected in (("zcdp", zcdp), ("rdp", rdp)):
        spent = _compose(mode, release, 1000)
        value = float(accounting.accountant(mode).epsilon_spent(spent, DELTA))
        assert value == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize("sigma", [10, 50])
def test_our_rdp_filter_is_dp_accountings_epsilon_at_delta_over_the_orders(sigma: int) -> None:
    release = _gaussian_release(sigma, per_release_delta=Decimal("1e-9"))
    ours = float(accounting.accountant("rdp").epsilon_spent(_compose("rdp", release, 1000), DELTA))
    # Same orders, each at delta/46: equal up to our rounding up (1e-9).
    same_grid = dp_accounting.rdp.RdpAccountant(orders=ORDERS)
    same_grid.compose(dp_accounting.GaussianDpEvent(sigma), 1000)
    reference = same_grid.get_epsilon(float(DELTA) / SHARE)
    assert reference - 1e-9 <= ours <= reference + 2e-9
    # dp-accounting's own, denser grid at delta/46 is within 0.1% of ours.
    default_grid = dp_accounting.rdp.RdpAccountant()
    default_grid.compose(dp_accounting.GaussianDpEvent(sigma), 1000)
    assert (
        default_grid.get_epsilon(float(DELTA) / SHARE)
        <= ours
        <= (default_grid.get_epsilon(float(DELTA) / SHARE) * 1.001)
    )
    # The union bound's price over the (unsound) single conversion at the full delta.
    unsound = same_grid.get_epsilon(float(DELTA))
    assert 1.08 < ours / unsound < 1.16


@pytest.mark.parametrize(
    ("epsilon", "delta", "sigma", "admitted", "unsound"),
    [
        (3, "1e-6", 10, 28, 37),
        (10, "1e-6", 10, 250, 307),
        (10, "1e-6", 3, 22, 27),
        (1, "1e-6", 10, 3, 4),
    ],
)
def test_the_filter_admits_as_many_gaussian_releases_as_dp_accounting_allows(
    epsilon: int, delta: str, sigma: int, admitted: int, unsound: int
) -> None:
    """The counts in docs/design/0019-rdp-filter.md, re-derived from dp-accounting."""
    rdp = accounting.accountant("rdp")
    release = accounting.Release(
        mechanism="gaussian",
        epsilon=Decimal(epsilon),
        delta=Decimal(delta),
        sensitivity=Decimal(1),
        scale=Decimal(sigma),
    )
    capacity = rdp.capacity(Decimal(epsilon), Decimal(delta))
    cost = rdp.release_cost(release)
    spent, count = rdp.zero(), 0
    while rdp.fits(rdp.add(spent, cost), capacity):
        spent, count = rdp.add(spent, cost), count + 1
    assert count == admitted

    def theirs(releases: int, at_delta: float) -> float:
        reference = dp_accounting.rdp.RdpAccountant(orders=ORDERS)
        reference.compose(dp_accounting.GaussianDpEvent(sigma), releases)
        return float(reference.get_epsilon(at_delta))

    share = float(delta) / SHARE
    assert theirs(admitted, share) <= epsilon < theirs(admitted + 1, share)
    # What "fits at some order, each at the full delta" admitted: more, and unsoundly.
    assert theirs(unsound, float(delta)) <= epsilon < theirs(unsound + 1, float(delta))


def test_each_orders_capacity_is_converted_at_its_share_of_delta() -> None:
    rdp = accounting.accountant("rdp")
    capacity = rdp.capacity(Decimal(5), DELTA)
    for order, units in zip(ORDERS, capacity.units, strict=True):
        # dp-accounting's conversion of an RDP of 1 at this single order, at delta/46.
        converted, _ = rdp_privacy_accountant.compute_epsilon([order], [1.0], float(DELTA) / SHARE)
        conversion = converted - 1
        assert units * 1e-9 <= 5 - conversion + 1e-9
        assert units * 1e-9 >= 5 - conversion - 1e-8


@pytest.mark.parametrize(("sigma", "pld"), [(10, 19.42), (50, 2.92)])
def test_pld_reference_values(sigma: int, pld: float) -> None:
    release = _gaussian_release(sigma, per_release_delta=Decimal("1e-9"))
    assert accounting.pld_epsilon([release] * 1000, DELTA) == pytest.approx(pld, abs=0.01)


def test_pld_of_nothing_is_zero() -> None:
    assert accounting.pld_epsilon([], DELTA) == 0.0


# -- per-release costs ---------------------------------------------------------------------


def _release(
    mechanism: kinds.Mechanism, *, sensitivity: str, epsilon: str, delta: str = "0"
) -> accounting.Release:
    if kinds.is_gaussian(mechanism) and delta == "0":
        delta = "1e-7"
    scale = calibration.scale(
        mechanism, sensitivity=Decimal(sensitivity), epsilon=Decimal(epsilon), delta=Decimal(delta)
    )
    return accounting.Release(
        mechanism=mechanism,
        epsilon=Decimal(epsilon),
        delta=Decimal(delta),
        sensitivity=Decimal(sensitivity),
        scale=calibration.recorded_scale(scale),
    )


def test_laplace_rdp_matches_mironovs_formula_as_computed_by_dp_accounting() -> None:
    release = _release("laplace", sensitivity="1", epsilon="0.7")
    cost = accounting.accountant("rdp").release_cost(release)
    pure = float(1 / Fraction(release.scale))
    for order, units in zip(accounting.RDP_ORDERS, cost.units, strict=True):
        reference = rdp_privacy_accountant._laplace_rdp(pure, float(order))
        assert reference <= units * 1e-9 + 1e-12
        assert units * 1e-9 <= reference + 1e-9 + 1e-12 * reference


def test_discrete_laplace_costs_at_least_laplace_and_at_most_its_pure_epsilon() -> None:
    for epsilon in ("0.01", "0.5", "3"):
        pure = Fraction(Decimal(epsilon))
        for order in accounting.RDP_ORDERS:
            laplace = renyi.laplace_rdp_upper(order, pure)
            worst = renyi.pure_dp_rdp_upper(order, pure)
            assert laplace <= worst + Decimal("1e-25")
            assert Fraction(worst) <= pure * (1 + Fraction(1, 10**25))
            assert Fraction(worst) <= Fraction(order) * pure**2 / 2 * (1 + Fraction(1, 10**25))


def test_zcdp_costs_are_exact_rho_rounded_up() -> None:
    zcdp = accounting.accountant("zcdp")
    gaussian = accounting.Release(
        mechanism="gaussian",
        epsilon=Decimal(1),
        delta=Decimal("1e-5"),
        sensitivity=Decimal(1),
        scale=Decimal(10),
    )
    assert zcdp.release_cost(gaussian).units == (5_000_000_000,)  # rho = 1/200 exactly
    laplace = accounting.Release(
        mechanism="laplace",
        epsilon=Decimal(1),
        delta=Decimal(0),
        sensitivity=Decimal(1),
        scale=Decimal(3),
    )
    # rho = (1/3)^2 / 2 = 1/18 = 0.0555...; rounded up to 1e-12.
    assert zcdp.release_cost(laplace).units == (55_555_555_556,)


@given(st.decimals(min_value="0", max_value="1000", places=12))
def test_pure_costs_round_up_and_capacities_round_down(epsilon: Decimal) -> None:
    pure = accounting.accountant("pure")
    release = accounting.Release(
        mechanism="laplace",
        epsilon=epsilon + Decimal("0.001"),
        delta=Decimal(0),
        sensitivity=Decimal(1),
        scale=Decimal(1000),
    )
    charged = Fraction(pure.release_cost(release).units[0], 10**9)
    assert Fraction(release.epsilon) <= charged < Fraction(release.epsilon) + Fraction(1, 10**9)
    held = Fraction(pure.capacity(epsilon, Decimal(0)).units[0], 10**9)
    assert Fraction(epsilon) - Fraction(1, 10**9) < held <= Fraction(epsilon)


def test_under_noised_releases_are_refused_in_pure_mode() -> None:
    pure = accounting.accountant("pure")
    too_little_laplace = accounting.Release(
        mechanism="laplace",
        epsilon=Decimal(1),
        delta=Decimal(0),
        sensitivity=Decimal(1),
        scale=Decimal("0.999"),
    )
    with pytest.raises(accounting.UnderNoisedError, match="more than the declared epsilon"):
        pure.release_cost(too_little_laplace)
    sigma = Decimal(calibration.gaussian_sigma(1, 1, 1e-5))
    too_little_gaussian = accounting.Release(
        mechanism="gaussian",
        epsilon=Decimal(1),
        delta=Decimal("1e-5"),
        sensitivity=Decimal(1),
        scale=sigma * Decimal("0.9999"),
    )
    with pytest.raises(accounting.UnderNoisedError, match="does not achieve"):
        pure.release_cost(too_little_gaussian)
    dsigma = Decimal(calibration.discrete_gaussian_sigma(1, 1, 1e-5))
    too_little_discrete = accounting.Release(
        mechanism="discreteGaussian",
        epsilon=Decimal(1),
        delta=Decimal("1e-5"),
        sensitivity=Decimal(1),
        scale=dsigma * Decimal("0.9999"),
    )
    with pytest.raises(accounting.UnderNoisedError, match="does not achieve"):
        pure.release_cost(too_little_discrete)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"mechanism": "exponential"}, "unknown mechanism"),
        ({"epsilon": Decimal(-1)}, "epsilon must not be negative"),
        ({"delta": Decimal(1)}, "delta must be at least 0 and less than 1"),
        ({"scale": Decimal(0)}, "greater than 0"),
        ({"sensitivity": Decimal("NaN")}, "finite Decimal"),
        ({"epsilon": 0.5}, "finite Decimal"),
    ],
)
def test_nonsense_releases_are_refused(changes: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {
        "mechanism": "laplace",
        "epsilon": Decimal(1),
        "delta": Decimal(0),
        "sensitivity": Decimal(1),
        "scale": Decimal(1),
    }
    fields.update(changes)
    with pytest.raises(ValueError, match=message):
        accounting.Release(**fields)  # type: ignore[arg-type]


# -- the algebra of costs ------------------------------------------------------------------


def _costs(mode: accounting.Mode) -> st.SearchStrategy[accounting.Cost]:
    length = len(accounting.accountant(mode).zero().units)
    return st.lists(
        st.integers(min_value=0, max_value=10**15), min_size=length, max_size=length
    ).map(lambda units: accounting.Cost(tuple(units)))


@pytest.mark.parametrize("mode", MODES)
def test_add_is_associative_and_commutative(mode: accounting.Mode) -> None:
    accountant = accounting.accountant(mode)

    @given(_costs(mode), _costs(mode), _costs(mode))
    @settings(max_examples=30)
    def check(a: accounting.Cost, b: accounting.Cost, c: accounting.Cost) -> None:
        assert accountant.add(a, b) == accountant.add(b, a)
        assert accountant.add(accountant.add(a, b), c) == accountant.add(a, accountant.add(b, c))
        assert accountant.add(a, accountant.zero()) == a
        assert accountant.from_json(accountant.to_json(a)) == a

    check()


@pytest.mark.parametrize("mode", MODES)
def test_json_is_validated(mode: accounting.Mode) -> None:
    accountant = accounting.accountant(mode)
    length = len(accountant.zero().units)
    with pytest.raises(ValueError, match="expected a list"):
        accountant.from_json([0] * (length + 1))
    with pytest.raises(ValueError, match="integers"):
        accountant.from_json([True] * length)  # type: ignore[list-item]
    assert accountant.from_json([]) == accountant.zero()
    with pytest.raises(ValueError, match="expected a cost"):
        accountant.add(accountant.zero(), accounting.Cost((0,) * (length + 1)))


@pytest.mark.parametrize("mode", MODES)
def test_nothing_spent_is_zero_epsilon(mode: accounting.Mode) -> None:
    accountant = accounting.accountant(mode)
    assert accountant.epsilon_spent(accountant.zero(), DELTA) == 0


@pytest.mark.parametrize("mode", ["zcdp", "rdp"])
def test_conversions_need_a_positive_delta(mode: accounting.Mode) -> None:
    with pytest.raises(ValueError, match="needs 0 < delta < 1"):
        accounting.accountant(mode).capacity(Decimal(1), Decimal(0))


def test_unknown_modes_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown accounting mode"):
        accounting.accountant("basic")  # type: ignore[arg-type]


def test_rdp_orders_whose_conversion_exceeds_the_quota_never_fit() -> None:
    rdp = accounting.accountant("rdp")
    capacity = rdp.capacity(Decimal("0.5"), Decimal("1e-9"))
    assert min(capacity.units) < 0
    assert max(capacity.units) > 0
    assert not rdp.fits(rdp.zero(), rdp.capacity(Decimal(0), Decimal("1e-9")))


# -- no sequence of charges overspends -----------------------------------------------------


def _pool() -> list[accounting.Release]:
    pool = []
    for mechanism in kinds.MECHANISMS:
        for sensitivity in ("1", "2.5"):
            for epsilon in ("0.05", "0.3", "1"):
                pool.append(_release(mechanism, sensitivity=sensitivity, epsilon=epsilon))
    return pool


POOL = _pool()
_charges = st.lists(st.integers(min_value=0, max_value=len(POOL) - 1), max_size=150)
_quota_epsilon = st.decimals(min_value="0", max_value="30", places=4)
_quota_delta = st.sampled_from([Decimal("1e-5"), Decimal("1e-6"), Decimal("1e-9")])


def _gate(
    mode: accounting.Mode, charges: list[int], epsilon: Decimal, delta: Decimal
) -> tuple[accounting.Cost, list[accounting.Release]]:
    """Charge greedily, as the ledger does: accept each charge whose new total fits."""
    accountant = accounting.accountant(mode)
    capacity = accountant.capacity(epsilon, delta)
    spent = accountant.zero()
    accepted = []
    for index in charges:
        total = accountant.add(spent, accountant.release_cost(POOL[index]))
        if accountant.fits(total, capacity):
            spent = total
            accepted.append(POOL[index])
    assert accountant.epsilon_spent(spent, delta) <= epsilon
    return spent, accepted


@given(_charges, _quota_epsilon, _quota_delta)
@settings(max_examples=60, deadline=None)
def test_pure_charges_never_exceed_the_quota(
    charges: list[int], epsilon: Decimal, delta: Decimal
) -> None:
    _, accepted = _gate("pure", charges, epsilon, delta)
    assert sum((Fraction(release.epsilon) for release in accepted), Fraction(0)) <= epsilon
    assert sum((Fraction(release.delta) for release in accepted), Fraction(0)) <= delta


def _true_rho(release: accounting.Release) -> Fraction:
    if kinds.is_gaussian(kinds.parse(release.mechanism)):
        return Fraction(release.sensitivity) ** 2 / (2 * Fraction(release.scale) ** 2)
    return (Fraction(release.sensitivity) / Fraction(release.scale)) ** 2 / 2


@given(_charges, _quota_epsilon, _quota_delta)
@settings(max_examples=60, deadline=None)
def test_zcdp_charges_never_exceed_the_quota(
    charges: list[int], epsilon: Decimal, delta: Decimal
) -> None:
    _, accepted = _gate("zcdp", charges, epsilon, delta)
    rho = sum((_true_rho(release) for release in accepted), Fraction(0))
    with decimal.localcontext(decimal.Context(prec=50)):
        rho_decimal = Decimal(rho.numerator) / Decimal(rho.denominator)
        spent = rho_decimal + 2 * (rho_decimal * -delta.ln()).sqrt()
    assert spent <= epsilon + Decimal("1e-40")


def _true_rdp(release: accounting.Release, order: float) -> float:
    mechanism = kinds.parse(release.mechanism)
    if kinds.is_gaussian(mechanism):
        return float(order * _true_rho(release))
    pure = float(Fraction(release.sensitivity) / Fraction(release.scale))
    if mechanism == "laplace":
        return float(rdp_privacy_accountant._laplace_rdp(pure, order))
    # randomized response, the worst t-DP pair, in log-sum-exp form
    top = max(order * pure, (1 - order) * pure)
    log_numerator = top + math.log(
        math.exp(order * pure - top) + math.exp((1 - order) * pure - top)
    )
    return (log_numerator - (pure + math.log1p(math.exp(-pure)))) / (order - 1)


@given(_charges, _quota_epsilon, _quota_delta)
@settings(max_examples=60, deadline=None)
def test_rdp_charges_never_exceed_the_quota(
    charges: list[int], epsilon: Decimal, delta: Decimal
) -> None:
    _, accepted = _gate("rdp", charges, epsilon, delta)
    if not accepted:
        return
    curve = [math.fsum(_true_rdp(release, order) for release in accepted) for order in ORDERS]
    # The filter's guarantee: some order fits at its share of delta, delta/46.
    reference, _ = rdp_privacy_accountant.compute_epsilon(ORDERS, curve, float(delta) / SHARE)
    assert reference <= float(epsilon) * (1 + 1e-12) + 1e-9


@pytest.mark.parametrize("mode", MODES)
def test_a_quota_is_used_up_to_the_last_unit(mode: accounting.Mode) -> None:
    """Capacity is not needlessly conservative: refusals come only at the quota."""
    accountant = accounting.accountant(mode)
    release = _release("gaussian", sensitivity="1", epsilon="0.1", delta="1e-8")
    quota = Decimal(2)
    spent = accountant.zero()
    cost = accountant.release_cost(release)
    capacity = accountant.capacity(quota, DELTA)
    count = 0
    while accountant.fits(accountant.add(spent, cost), capacity):
        spent = accountant.add(spent, cost)
        count += 1
    shown = accountant.epsilon_spent(spent, DELTA)
    assert shown <= quota
    after = accountant.epsilon_spent(accountant.add(spent, cost), DELTA)
    assert after > quota or mode == "pure"
    if mode == "pure":
        assert count == 20  # 20 x 0.1 = 2 exactly, no rounding loss
        # refused on delta or on epsilon, never earlier than an exact ledger would be
        assert accountant.add(spent, cost).units[0] > capacity.units[0] or (
            accountant.add(spent, cost).units[1] > capacity.units[1]
        )


def test_a_single_release_costs_what_calibration_promised() -> None:
    """Charging one release calibrated for (eps, delta) never shows more than eps + rounding."""
    checks: list[tuple[accounting.Mode, Callable[[Decimal], bool]]] = [
        ("pure", lambda shown: shown == Decimal("0.5")),
        ("rdp", lambda shown: shown > Decimal("0.5")),  # RDP is loose for one release
    ]
    release = _release("laplace", sensitivity="1", epsilon="0.5")
    for mode, expected in checks:
        accountant = accounting.accountant(mode)
        assert expected(accountant.epsilon_spent(accountant.release_cost(release), DELTA))
