"""hush.privacy.accuracy against references computed without OpenDP: the closed forms of the
Laplace and Gaussian tails, the discrete Laplace's geometric tail, and the discrete Gaussian's
probability mass summed term by term; suppression by minCohort against the same tails; a
mean's half-width against simulated releases; releases left against charging one by one."""

from __future__ import annotations

import math
from decimal import Decimal
from statistics import NormalDist

import numpy as np
import pytest

from hush.api import dppolicy
from hush.privacy import accounting, accuracy, route_cost

LEVELS = (0.5, 0.8, 0.95, 0.99, 0.999)
SCALES = (0.5, 1.0, 3.0, 10.0, 59.0669126140953, 250.0)


def _discrete_gaussian_mass(sigma: float) -> dict[int, float]:
    reach = int(40 * sigma) + 10
    weights = {k: math.exp(-(k * k) / (2 * sigma * sigma)) for k in range(-reach, reach + 1)}
    total = math.fsum(weights.values())
    return {k: weight / total for k, weight in weights.items()}


def _discrete_gaussian_reference(sigma: float, alpha: float) -> int:
    """The smallest integer a with P[|X| >= a] <= alpha, by summing the mass."""
    mass = _discrete_gaussian_mass(sigma)
    a = 0
    while math.fsum(p for k, p in mass.items() if abs(k) >= a) > alpha:
        a += 1
    return a


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("scale", SCALES)
def test_laplace_half_width_is_b_ln_one_over_alpha(scale: float, level: float) -> None:
    expected = scale * math.log(1 / (1 - level))
    assert accuracy.half_width("laplace", scale, level) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("scale", SCALES)
def test_gaussian_half_width_is_sigma_times_the_normal_quantile(scale: float, level: float) -> None:
    expected = scale * NormalDist().inv_cdf(1 - (1 - level) / 2)
    assert accuracy.half_width("gaussian", scale, level) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("scale", SCALES)
def test_discrete_laplace_half_width_solves_its_geometric_tail(scale: float, level: float) -> None:
    # P[|X| >= a] = 2 r^a / (1 + r), r = e^(-1/t), solved for a.
    alpha = 1 - level
    r = math.exp(-1 / scale)
    expected = scale * math.log(2 / (alpha * (1 + r)))
    assert accuracy.half_width("discreteLaplace", scale, level) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("level", [0.8, 0.95, 0.99])
@pytest.mark.parametrize("scale", [0.5, 1.0, 3.0, 10.0, 59.0669126140953])
def test_discrete_gaussian_half_width_matches_the_summed_mass(scale: float, level: float) -> None:
    width = accuracy.half_width("discreteGaussian", scale, level)
    assert width == _discrete_gaussian_reference(scale, 1 - level)


def test_levels_outside_zero_one_and_bad_scales_are_refused() -> None:
    for level in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="confidence level"):
            accuracy.half_width("laplace", 1.0, level)
    for scale in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="scale"):
            accuracy.half_width("laplace", scale)


# -- the noise's distribution and suppression --------------------------------------------------


@pytest.mark.parametrize("sigma", [0.7, 3.0, 25.0])
def test_discrete_gaussian_distribution_is_the_summed_mass(sigma: float) -> None:
    mass = _discrete_gaussian_mass(sigma)
    for k in (-60, -7, -1, 0, 2, 9, 80):
        expected = math.fsum(p for j, p in mass.items() if j <= k)
        assert accuracy.noise_at_most("discreteGaussian", sigma, k) == pytest.approx(
            expected, abs=1e-12
        )
    # Beyond the summed widths, the normal with a continuity correction.
    wide = accuracy.noise_at_most("discreteGaussian", 5000.0, 3000)
    assert wide == pytest.approx(NormalDist(0, 5000.0).cdf(3000.5), abs=1e-9)


def test_laplace_and_discrete_laplace_distributions() -> None:
    assert accuracy.noise_at_most("laplace", 2.0, 0.0) == pytest.approx(0.5)
    assert accuracy.noise_at_most("laplace", 2.0, -3.0) == pytest.approx(0.5 * math.exp(-1.5))
    assert accuracy.noise_at_most("laplace", 2.0, 3.0) == pytest.approx(1 - 0.5 * math.exp(-1.5))
    # Discrete Laplace of scale t: P[Z = k] = (1 - r) / (1 + r) r^|k|, summed directly.
    t = 4.0
    r = math.exp(-1 / t)
    pmf = {k: (1 - r) / (1 + r) * r ** abs(k) for k in range(-400, 401)}
    for k in (-9, -1, 0, 1, 5):
        expected = math.fsum(p for j, p in pmf.items() if j <= k)
        assert accuracy.noise_at_most("discreteLaplace", t, k) == pytest.approx(expected)
    assert accuracy.noise_at_most("discreteLaplace", t, 2.7) == accuracy.noise_at_most(
        "discreteLaplace", t, 2
    )


def test_suppression_of_a_discrete_laplace_count() -> None:
    # The demo's population route: discreteLaplace, scale 10, minCohort 20.
    t, m = 10.0, 20
    r = math.exp(-1 / t)
    held = accuracy.suppression("discreteLaplace", t, m, rounds=False)
    assert held is not None
    # Nulled when c + Z <= 19: at c = 19, P[Z <= 0] = 1 / (1 + r) >= 1/2; at 20, r / (1 + r).
    assert held.half_suppressed_up_to == 19
    # An empty cohort is released when Z >= 20: r^20 / (1 + r) = 7.1 % > 5 %.
    assert r**20 / (1 + r) > 0.05
    assert held.mostly_suppressed_up_to is None
    # Released with >= 95 %: 1 - r^(c - m + 1) / (1 + r) >= 0.95.
    expected = math.ceil(m - 1 + t * math.log(1 / (0.05 * (1 + r))))
    assert held.mostly_released_from == expected == 43


@pytest.mark.parametrize("rounds", [False, True])
def test_suppression_of_a_gaussian_count(rounds: bool) -> None:
    sigma, m = 4.0, 50
    held = accuracy.suppression("gaussian", sigma, m, rounds=rounds)
    assert held is not None
    shift = 0.5 if rounds else 0.0  # a rounded value is nulled below m - 0.5
    z = NormalDist().inv_cdf(0.95)
    assert held.half_suppressed_up_to == math.floor(m - shift)
    assert held.mostly_suppressed_up_to == math.floor(m - shift - sigma * z)
    assert held.mostly_released_from == math.ceil(m - shift + sigma * z)


def test_suppression_probability_is_the_noise_tail_and_off_without_min_cohort() -> None:
    assert accuracy.suppression("laplace", 3.0, 0, rounds=False) is None
    assert accuracy.suppression_probability("laplace", 3.0, 0, 5, rounds=False) == 0.0
    # Laplace: nulled when c + Z < m; c = m + 3 needs Z < -3: 0.5 e^(-1).
    assert accuracy.suppression_probability("laplace", 3.0, 10, 13, rounds=False) == (
        pytest.approx(0.5 * math.exp(-1))
    )


# -- a route ---------------------------------------------------------------------------------


def _route(**changes: object) -> dppolicy.Route:
    raw: dict[str, object] = {
        "path": "/stats",
        "mechanism": "gaussian",
        "epsilon": 0.5,
        "delta": 1e-6,
        "minCohort": 10,
        "fields": [
            {"path": "$.total", "kind": "sum", "bounds": {"lower": 0, "upper": 100}},
            {
                "path": "$.average",
                "kind": "mean",
                "bounds": {"lower": 0, "upper": 100},
                "countPath": "$.people",
            },
            {"path": "$.people", "kind": "count"},
        ],
        **changes,
    }
    return dppolicy.Route.model_validate(raw)


def test_route_accuracy_uses_the_plans_scales() -> None:
    route = _route()
    plan = route_cost.route_plan(route)
    explained = accuracy.route_accuracy(route, level=0.9)
    assert explained.charge == plan.charge
    total, average, people = explained.fields
    z = NormalDist().inv_cdf(0.95)
    assert total.scale == plan.fields[0].plan.sampler.scale
    assert total.half_width == pytest.approx(total.scale * z, rel=1e-9)
    assert total.suppression is None
    assert people.half_width == pytest.approx(plan.fields[2].plan.sampler.scale * z, rel=1e-9)
    assert people.suppression is not None
    assert people.suppression.min_cohort == 10
    # A mean's half-width needs a cohort; without one only the bounds hold.
    assert average.half_width == 100
    assert average.count_path == "$.people"
    assert average.count_scale == people.scale


def test_rounding_a_real_release_adds_half_a_unit() -> None:
    route = dppolicy.Route.model_validate(
        {
            "path": "/c",
            "mechanism": "laplace",
            "epsilon": 1.0,
            "fields": [{"path": "$.c", "kind": "count", "postProcess": {"round": True}}],
        }
    )
    [field] = accuracy.route_accuracy(route).fields
    assert field.half_width == pytest.approx(field.scale * math.log(20) + 0.5, rel=1e-9)


def test_selected_fields_carry_their_threshold() -> None:
    route = dppolicy.Route.model_validate(
        {
            "path": "/top",
            "mechanism": "laplace",
            "epsilon": 0.5,
            "delta": 1e-7,
            "domains": [
                {
                    "path": "$.occupations.*",
                    "partitionSelection": {"maxPartitionsContributed": 1, "maxKeys": 50},
                }
            ],
            "fields": [{"path": "$.occupations.*.count", "kind": "count"}],
        }
    )
    [field] = accuracy.route_accuracy(route).fields
    [selection] = route_cost.route_plan(route).selections
    assert field.selection_threshold == selection.threshold
    assert field.values == 50


def test_an_unsound_route_raises_the_route_error() -> None:
    route = _route(fields=[{"path": "$.q", "kind": "quantile", "quantile": 0.5,
                            "bounds": {"lower": 0, "upper": 1}}])  # fmt: skip
    with pytest.raises(route_cost.RouteError):
        accuracy.route_accuracy(route)


# -- means -----------------------------------------------------------------------------------


def test_mean_half_width_formula() -> None:
    bounds = dppolicy.Bounds(lower=-20, upper=100)
    each = 1 - 0.05 / 2
    sum_width = 50 * NormalDist().inv_cdf(1 - (1 - each) / 2)
    count_width = 3 * NormalDist().inv_cdf(1 - (1 - each) / 2)
    expected = (sum_width + 100 * count_width) / (1000 - count_width)
    assert accuracy.mean_half_width(
        "gaussian", sum_scale=50, count_scale=3, bounds=bounds, cohort=1000
    ) == pytest.approx(expected, rel=1e-9)
    # A cohort within the count's noise: only the bounds bound the error.
    assert (
        accuracy.mean_half_width("gaussian", sum_scale=50, count_scale=3, bounds=bounds, cohort=5)
        == 120
    )
    with pytest.raises(ValueError, match="at least one person"):
        accuracy.mean_half_width("gaussian", sum_scale=1, count_scale=1, bounds=bounds, cohort=0)


@pytest.mark.parametrize("true_mean", [5.0, 60.0, 95.0])
def test_mean_half_width_covers_simulated_releases(true_mean: float) -> None:
    # Released mean = clamp((S + Z_S) / max(n + Z_C, 1)); the half-width must hold >= 95 %.
    generator = np.random.default_rng(20261208)
    bounds = dppolicy.Bounds(lower=0, upper=100)
    n, sum_scale, count_scale = 200, 400.0, 4.0
    width = accuracy.mean_half_width(
        "laplace", sum_scale=sum_scale, count_scale=count_scale, bounds=bounds, cohort=n
    )
    draws = 50_000
    sums = true_mean * n + generator.laplace(0, sum_scale, draws)
    counts = np.maximum(n + generator.laplace(0, count_scale, draws), 1)
    released = np.clip(sums / counts, 0, 100)
    covered = float(np.mean(np.abs(released - true_mean) <= width))
    assert covered >= 0.95
    assert width < 100  # and it says something


# -- the header ------------------------------------------------------------------------------


def test_round_up_never_understates() -> None:
    assert accuracy.round_up(2.9957322735) == "2.996"
    assert accuracy.round_up(30.0) == "30.00"
    assert accuracy.round_up(24110966.18) == "24120000"
    assert accuracy.round_up(0.0012345) == "0.001235"
    for value in (1e-7, 0.33333, 7.0, 123456.7, 9.99999):
        assert float(accuracy.round_up(value)) >= value


def test_accuracy_header_names_every_field() -> None:
    explained = accuracy.route_accuracy(_route())
    header = accuracy.accuracy_header(explained)
    parts = dict(part.split("=") for part in header.split(";"))
    assert list(parts) == ["$.total", "$.average", "$.people"]
    for field in explained.fields:
        value = float(parts[field.path])
        assert value >= field.half_width
        assert value <= field.half_width * 1.001


# -- releases left ---------------------------------------------------------------------------


def _one_by_one(
    accountant: accounting.Accountant,
    spent: accounting.Cost,
    capacity: accounting.Cost,
    cost: accounting.Cost,
) -> int:
    count = 0
    while True:
        spent = accountant.add(spent, cost)
        if not accountant.fits(spent, capacity):
            return count
        count += 1


@pytest.mark.parametrize("mode", ["pure", "zcdp", "rdp"])
@pytest.mark.parametrize(
    "mechanism", ["laplace", "gaussian", "discreteLaplace", "discreteGaussian"]
)
def test_releases_left_is_what_charging_one_by_one_admits(mode: str, mechanism: str) -> None:
    gaussian = "aussian" in mechanism
    route = dppolicy.Route.model_validate(
        {
            "path": "/c",
            "mechanism": mechanism,
            "epsilon": 0.05,
            "delta": 1e-8 if gaussian else 0,
            "fields": [{"path": "$.c", "kind": "count"}],
        }
    )
    charge = route_cost.route_charge(route)
    accountant = accounting.accountant(mode)  # type: ignore[arg-type]
    capacity = accountant.capacity(Decimal("1.5"), Decimal("1e-6"))
    cost = accountant.release_cost(charge)
    for already in (0, 3):
        spent = accountant.zero()
        for _ in range(already):
            spent = accountant.add(spent, cost)
        expected = _one_by_one(accountant, spent, capacity, cost)
        assert accuracy.releases_left(accountant, spent, capacity, cost) == expected
        if mode == "pure":
            assert expected == 30 - already  # 1.5 / 0.05; delta (100 releases) binds later


def test_releases_left_pure_is_remaining_over_epsilon() -> None:
    accountant = accounting.accountant("pure")
    capacity = accountant.capacity(Decimal("2.5"), Decimal(0))
    cost = accounting.Cost((100_000_000, 0))  # epsilon 0.1
    assert accuracy.releases_left(accountant, accountant.zero(), capacity, cost) == 25
    assert (
        accuracy.releases_left(accountant, accounting.Cost((2_450_000_000, 0)), capacity, cost) == 0
    )
    assert accuracy.releases_left(accountant, accountant.zero(), capacity, accountant.zero()) == (
        accuracy.MOST_RELEASES
    )


@pytest.mark.parametrize(
    ("mechanism", "epsilon", "delta"),
    [
        ("laplace", 0.5, 0.0),
        ("gaussian", 0.5, 1e-7),
        ("discreteLaplace", 0.1, 0.0),
        ("discreteGaussian", 0.3, 1e-8),
    ],
)
def test_real_noise_stays_within_the_half_width_95_percent_of_the_time(
    mechanism: str, epsilon: float, delta: float
) -> None:
    # 20,000 draws of OpenDP's own sampler at the plan's scale: |noisy - true| < half-width
    # for 95 % +-1 % of them (6.5 standard errors). The discrete half-widths are integers, so
    # their exact coverage is a little above 95 % (95.06 % and 95.27 % here).
    route = dppolicy.Route.model_validate(
        {
            "path": "/c",
            "mechanism": mechanism,
            "epsilon": epsilon,
            "delta": delta,
            "fields": [{"path": "$.c", "kind": "count"}],
        }
    )
    [field] = accuracy.route_accuracy(route).fields
    sampler = route_cost.route_plan(route).fields[0].plan.sampler
    true = 1234
    noisy = sampler.release([true] * 20_000)
    covered = sum(abs(value - true) < field.half_width for value in noisy) / len(noisy)
    assert 0.94 <= covered <= 0.96
