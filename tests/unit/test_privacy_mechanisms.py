"""Samplers: safe library settings, shapes and types, and distributions within proven bounds.

Distribution tests never depend on luck: each compares the empirical CDF of N samples with the
exact CDF under the Dvoretzky-Kiefer-Wolfowitz inequality (Massart's constant),
P(sup |F_N - F| > t) <= 2 exp(-2 N t^2), with t chosen so that a correct sampler fails a
test with probability below 1e-10 (below 1e-9 for the whole file). A sampler whose scale
were off by 50%, or whose noise were not centred on the answer, fails every time.
"""

from __future__ import annotations

import bisect
import math
from decimal import Decimal

import opendp.mod
import opendp.prelude as dp
import pytest

from hush.privacy import accounting, kinds, mechanisms

SAMPLES = 20_000
FALSE_FAILURE = 1e-10
DKW_BOUND = math.sqrt(math.log(2 / FALSE_FAILURE) / (2 * SAMPLES))  # ~0.0244


def test_only_the_contrib_feature_is_enabled() -> None:
    assert "contrib" in opendp.mod.GLOBAL_FEATURES
    assert "floating-point" not in opendp.mod.GLOBAL_FEATURES
    assert "honest-but-curious" not in opendp.mod.GLOBAL_FEATURES


def test_samplers_are_cached_per_mechanism_scale_and_kind() -> None:
    first = mechanisms.build("laplace", 1.5, integer=False)
    assert mechanisms.build("laplace", 1.5, integer=False) is first
    assert mechanisms.build("laplace", 2.5, integer=False) is not first
    assert mechanisms.build("gaussian", 1.5, integer=False) is not first


@pytest.mark.parametrize(
    ("mechanism", "integer", "message"),
    [
        ("laplace", True, "integer answers need discreteLaplace or discreteGaussian"),
        ("discreteGaussian", False, "real answers need laplace or gaussian"),
        ("exponential", False, "unknown mechanism"),
    ],
)
def test_mechanism_and_answer_type_must_agree(mechanism: str, integer: bool, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mechanisms.build(mechanism, 1.0, integer=integer)


@pytest.mark.parametrize("scale", [0.0, -1.0, math.inf, math.nan])
def test_scale_must_be_positive_and_finite(scale: float) -> None:
    with pytest.raises(ValueError, match="positive finite"):
        mechanisms.build("laplace", scale, integer=False)


@pytest.mark.parametrize("mechanism", ["laplace", "gaussian"])
def test_real_answers_come_back_as_floats_of_the_same_length(mechanism: str) -> None:
    sampler = mechanisms.build(mechanism, 1.0, integer=False)
    noisy = sampler.release([1.0, 2, -3.5])
    assert len(noisy) == 3
    assert all(isinstance(value, float) and math.isfinite(value) for value in noisy)
    assert sampler.release([]) == []


@pytest.mark.parametrize("mechanism", ["discreteLaplace", "discreteGaussian"])
def test_integer_answers_come_back_as_integers(mechanism: str) -> None:
    sampler = mechanisms.build(mechanism, 2.0, integer=True)
    noisy = sampler.release([10, 0, -7, 2**40])
    assert len(noisy) == 4
    assert all(type(value) is int for value in noisy)


@pytest.mark.parametrize(
    ("mechanism", "integer", "values", "message"),
    [
        ("laplace", False, [math.nan], "finite"),
        ("laplace", False, [math.inf], "finite"),
        ("gaussian", False, [True], "numbers"),
        ("gaussian", False, ["1"], "numbers"),
        ("discreteLaplace", True, [1.5], "integers"),
        ("discreteLaplace", True, [False], "integers"),
        ("discreteGaussian", True, [2**63], "64 bits"),
    ],
)
def test_answers_that_cannot_be_noised_safely_are_refused(
    mechanism: str, integer: bool, values: list[object], message: str
) -> None:
    sampler = mechanisms.build(mechanism, 1.0, integer=integer)
    with pytest.raises(ValueError, match=message):
        sampler.release(values)  # type: ignore[arg-type]


def test_repeated_answers_get_fresh_noise() -> None:
    # Equal with probability < 0.4**64 for the discrete sampler, 0 for the continuous one.
    for mechanism, integer, value in (("gaussian", False, 5.0), ("discreteGaussian", True, 5)):
        sampler = mechanisms.build(mechanism, 1.0, integer=integer)
        assert sampler.release([value] * 64) != sampler.release([value] * 64)


# -- distributions -------------------------------------------------------------------------


def _laplace_cdf(x: float, scale: float) -> float:
    return 0.5 * math.exp(x / scale) if x < 0 else 1 - 0.5 * math.exp(-x / scale)


def _gaussian_cdf(x: float, sigma: float) -> float:
    return 0.5 * math.erfc(-x / (sigma * math.sqrt(2)))


def _discrete_cdf(weights: dict[int, float]) -> dict[int, float]:
    total = math.fsum(weights.values())
    cdf: dict[int, float] = {}
    running = 0.0
    for point in sorted(weights):
        running += weights[point] / total
        cdf[point] = running
    return cdf


def _sup_distance_continuous(samples: list[float], cdf: object) -> float:
    ordered = sorted(samples)
    n = len(ordered)
    worst = 0.0
    for index, value in enumerate(ordered):
        probability = cdf(value)  # type: ignore[operator]
        worst = max(worst, abs(probability - index / n), abs(probability - (index + 1) / n))
    return worst


def _sup_distance_discrete(samples: list[int], cdf: dict[int, float]) -> float:
    ordered = sorted(samples)
    n = len(ordered)
    worst = 0.0
    for point, probability in cdf.items():
        empirical = bisect.bisect_right(ordered, point) / n
        worst = max(worst, abs(empirical - probability))
    return worst


@pytest.mark.parametrize(("mechanism", "scale"), [("laplace", 2.0), ("gaussian", 3.0)])
def test_continuous_noise_has_the_calibrated_distribution(mechanism: str, scale: float) -> None:
    answer = 100.25
    sampler = mechanisms.build(mechanism, scale, integer=False)
    noise = [float(value) - answer for value in sampler.release([answer] * SAMPLES)]

    def cdf(x: float) -> float:
        return _laplace_cdf(x, scale) if mechanism == "laplace" else _gaussian_cdf(x, scale)

    assert _sup_distance_continuous(noise, cdf) < DKW_BOUND

    def wrong(x: float) -> float:
        wider = scale * 1.5
        return _laplace_cdf(x, wider) if mechanism == "laplace" else _gaussian_cdf(x, wider)

    # The test has power: the two CDFs are more than twice the DKW bound apart, so whenever
    # the samples are within the bound of the true CDF they are outside it of the wrong one.
    grid = [scale * i / 100 for i in range(-1000, 1001)]
    assert max(abs(cdf(x) - wrong(x)) for x in grid) > 2 * DKW_BOUND
    assert _sup_distance_continuous(noise, wrong) > DKW_BOUND


@pytest.mark.parametrize(
    ("mechanism", "scale"), [("discreteLaplace", 2.0), ("discreteGaussian", 3.0)]
)
def test_discrete_noise_has_the_calibrated_distribution(mechanism: str, scale: float) -> None:
    answer = 1_000
    sampler = mechanisms.build(mechanism, scale, integer=True)
    noise = [int(value) - answer for value in sampler.release([answer] * SAMPLES)]
    support = range(-int(40 * scale), int(40 * scale) + 1)
    if mechanism == "discreteLaplace":
        weights = {x: math.exp(-abs(x) / scale) for x in support}
    else:
        weights = {x: math.exp(-(x * x) / (2 * scale * scale)) for x in support}
    assert min(noise) >= support.start
    assert max(noise) < support.stop
    assert _sup_distance_discrete(noise, _discrete_cdf(weights)) < DKW_BOUND


# -- lattice slack and plans ---------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 7, 1000])
@pytest.mark.parametrize("mechanism", ["laplace", "gaussian"])
def test_charged_sensitivity_covers_opendps_privacy_map(mechanism: str, length: int) -> None:
    sensitivity = Decimal("0.001")
    scale = 0.01
    gaussian = kinds.is_gaussian(mechanism)
    measurement = (dp.m.make_gaussian if gaussian else dp.m.make_laplace)(
        dp.vector_domain(dp.atom_domain(T="f64", nan=False), size=length),
        (dp.l2_distance if gaussian else dp.l1_distance)(T="f64"),
        scale=scale,
        k=mechanisms.LATTICE_EXPONENT,
    )
    proven = Decimal(measurement.map(float(sensitivity)))
    charged = mechanisms.charged_sensitivity(mechanism, sensitivity, length=length)
    ours = charged**2 / (2 * Decimal(scale) ** 2) if gaussian else charged / Decimal(scale)
    assert charged > sensitivity
    # OpenDP rounds its map up in floating point; it is never above what we charge by more
    # than that rounding, and the slack itself is what it charges.
    assert proven <= ours * (1 + Decimal("1e-15"))


def test_discrete_mechanisms_have_no_lattice_slack() -> None:
    assert mechanisms.charged_sensitivity("discreteLaplace", Decimal(3), length=50) == 3


@pytest.mark.parametrize("mechanism", kinds.MECHANISMS)
def test_a_plan_noises_with_the_scale_it_records_and_passes_the_ledgers_check(
    mechanism: kinds.Mechanism,
) -> None:
    delta = Decimal("1e-6") if kinds.is_gaussian(mechanism) else Decimal(0)
    plan = mechanisms.plan(
        mechanism, sensitivity=Decimal(1), epsilon=Decimal("0.5"), delta=delta, length=3
    )
    assert plan.release.scale <= Decimal(plan.sampler.scale)
    assert plan.release.sensitivity >= 1
    assert plan.sampler.integer == kinds.is_discrete(mechanism)
    values: list[float | int] = [1, 2, 3] if plan.sampler.integer else [1.0, 2.0, 3.0]
    assert len(plan.sampler.release(values)) == 3
    # Pure accounting refuses releases whose scale does not deliver the declared epsilon.
    assert accounting.accountant("pure").release_cost(plan.release).units[0] == 500_000_000
