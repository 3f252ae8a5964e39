"""The real noise, through the sidecar's release path: 20,000 releases of one fixed count
follow the declared mechanism at the declared scale, and 20,000 released means are unbiased
with the variance their calibration implies.

OpenDP draws from OpenSSL's CSPRNG and has no seeded test mode, so the test is not
deterministic; its thresholds make a false failure improbable instead:
- Kolmogorov-Smirnov against the exact declared distribution: fail only if p < 1e-7 (under
  the null hypothesis the p-value is uniform, so that happens with probability 1e-7);
- sample variance within 5% of sigma^2: for n = 20,000 Gaussian draws the sample variance
  has relative standard deviation sqrt(2/n) = 1%, so 5% is 5 standard deviations, a
  two-sided probability of 5.7e-7.
Together: a false failure with probability below 7e-7 < 1e-6 per run.

The pooled tests (``hush.privacy.noise_pool``, docs/design/0022-pooled-noise.md) repeat the
Gaussian KS/variance test and the empirical-epsilon tests with every sample taken from a
pool filled beforehand, each with the same per-test thresholds.

The mean test uses the same 5-standard-deviation thresholds (for the average and for the
variance; its noisy means are Gaussian to first order), so below 1.2e-6 per run.
"""

from __future__ import annotations

import math
import statistics

import scipy.stats

from hush.api import dppolicy
from hush.privacy import noise_pool, route_cost
from hush.sidecar import release

RELEASES = 20_000
TRUE_COUNT = 1000


def test_gaussian_releases_match_the_declared_scale() -> None:
    route = dppolicy.Route.model_validate(
        {
            "path": "/count",
            "mechanism": "gaussian",
            "epsilon": 1.0,
            "delta": 1e-6,
            "fields": [{"path": "$.count", "kind": "count"}],
        }
    )
    plan = route_cost.route_plan(route)
    [field] = plan.fields
    scale = field.plan.sampler.scale
    assert float(plan.charge.scale) <= scale  # the ledger never records more noise
    samples: list[float] = []
    for _ in range(RELEASES):
        value = release.release_document({"count": TRUE_COUNT}, plan, min_cohort=0).document
        samples.append(float(value["count"]))
    result = scipy.stats.kstest(samples, scipy.stats.norm(loc=TRUE_COUNT, scale=scale).cdf)
    assert result.pvalue > 1e-7, result
    variance = statistics.variance(samples, TRUE_COUNT)
    assert abs(variance / scale**2 - 1) < 0.05, (variance, scale**2)


def test_released_means_are_unbiased_with_the_calibrated_variance() -> None:
    """Each answer has 100 groups of n people with true mean m (one vector per field).

    To first order the released mean is ``m + Z_sum / n - m Z_count / n``, so its variance
    is ``(sigma_sum^2 + m^2 sigma_count^2) / n^2``; the neglected terms are of relative
    order ``(sigma_count / n)^2``, about 1e-6 here, far below what the test can see.
    """
    groups, answers, people, true_mean = 100, 200, 100_000, 50.0
    route = dppolicy.Route.model_validate(
        {
            "path": "/income",
            "mechanism": "gaussian",
            "epsilon": 1.0,
            "delta": 1e-6,
            "fields": [
                {
                    "path": "$.g[*].avg",
                    "kind": "mean",
                    "bounds": {"lower": 0, "upper": 100},
                    "countPath": "$.g[*].n",
                },
                {"path": "$.g[*].n", "kind": "count"},
            ],
            "domains": [{"path": "$.g[*]", "length": groups}],
        }
    )
    plan = route_cost.route_plan(route)
    sigma_sum, sigma_count = (field.plan.sampler.scale for field in plan.fields)
    document = {"g": [{"avg": true_mean, "n": people} for _ in range(groups)]}
    means: list[float] = []
    for _ in range(answers):
        released = release.release_document(document, plan, min_cohort=0).document
        means.extend(group["avg"] for group in released["g"])
    # The sums are calibrated to sensitivity max(|lower|, |upper|) = 100 times the count's.
    assert abs(sigma_sum / sigma_count - 100) < 1e-6
    expected_variance = (sigma_sum**2 + true_mean**2 * sigma_count**2) / people**2
    samples = len(means)
    average = statistics.fmean(means)
    assert abs(average - true_mean) < 5 * (expected_variance / samples) ** 0.5, average
    variance = statistics.variance(means, true_mean)
    assert abs(variance / expected_variance - 1) < 0.05, (variance, expected_variance)


# -- the empirical epsilon of neighbouring answers ------------------------------------------
#
# An auditor's check (Jagielski, Ullman & Oprea 2020; Nasr et al. 2021): release answers on two
# neighbouring datasets, a bin of c versus c + 1 people, and for a few output events E
# (``noisy >= t`` and ``noisy < t``) bound P[E | c + 1] from below and P[E | c] from above
# with one-sided Clopper-Pearson intervals. ``ln(lower / upper)`` is then a lower bound on the
# mechanism's true epsilon with confidence 1 - alpha (a Bonferroni split over the 2 * k
# bounds of the k events), whatever the sampler does inside. The test fails if that lower
# bound exceeds the claimed epsilon: with a correctly calibrated mechanism, with probability
# at most ALPHA = 1e-6 per run (the false-failure rate). The second test shows the check has
# teeth: the same route released at twice the epsilon (half the noise) is caught.
#
# The answers go through the release path (``route_plan``, ``release_document``) of a
# histogram over a declared length: its bins are disjoint, so each bin is noised at the
# sensitivity of one person (scale 1/epsilon), independently; 1,000 answers of 100 bins give
# 100,000 draws on each side.

ALPHA = 1e-6
BINS = 100
ANSWERS = 1_000


def _pooled_plan(
    route: dppolicy.Route, samples: int
) -> tuple[route_cost.RoutePlan, noise_pool.NoisePools]:
    """The route planned with pooled samplers, their pools filled with ``samples`` each.

    Filled once, up front, so that every release takes its noise from a pool; the caller
    checks ``pools.misses == 0`` afterwards (no fallback draw).
    """
    pools = noise_pool.NoisePools(size=samples)
    plan = route_cost.route_plan(route, planner=pools.plan)
    pools.refill_once()
    assert all(isinstance(field.plan.sampler, noise_pool.PooledSampler) for field in plan.fields)
    return plan, pools


def _gaussian_count_route() -> dppolicy.Route:
    return dppolicy.Route.model_validate(
        {
            "path": "/count",
            "mechanism": "gaussian",
            "epsilon": 1.0,
            "delta": 1e-6,
            "fields": [{"path": "$.count", "kind": "count"}],
        }
    )


def test_pooled_gaussian_releases_match_the_declared_scale() -> None:
    """The KS and variance test above, with every sample from a pool (noise_pool)."""
    plan, pools = _pooled_plan(_gaussian_count_route(), RELEASES)
    [field] = plan.fields
    scale = field.plan.sampler.scale
    assert scale == route_cost.route_plan(_gaussian_count_route()).fields[0].plan.sampler.scale
    samples = [
        float(release.release_document({"count": TRUE_COUNT}, plan, min_cohort=0).document["count"])
        for _ in range(RELEASES)
    ]
    assert pools.misses == 0
    pools.close()
    result = scipy.stats.kstest(samples, scipy.stats.norm(loc=TRUE_COUNT, scale=scale).cdf)
    assert result.pvalue > 1e-7, result
    variance = statistics.variance(samples, TRUE_COUNT)
    assert abs(variance / scale**2 - 1) < 0.05, (variance, scale**2)


def _histogram_draws(epsilon: float, true_count: int, *, pooled: bool = False) -> list[float]:
    route = dppolicy.Route.model_validate(
        {
            "path": "/bins",
            "mechanism": "laplace",
            "epsilon": epsilon,
            "fields": [{"path": "$.bins[*]", "kind": "histogram"}],
            "domains": [{"path": "$.bins[*]", "length": BINS}],
        }
    )
    pools = noise_pool.NoisePools(size=1)
    if pooled:
        plan, pools = _pooled_plan(route, BINS * ANSWERS)
    else:
        plan = route_cost.route_plan(route)
    document = {"bins": [true_count] * BINS}
    draws: list[float] = []
    for _ in range(ANSWERS):
        draws.extend(release.release_document(document, plan, min_cohort=0).document["bins"])
    assert pools.misses == 0
    pools.close()
    return draws


def _empirical_epsilon(neighbour: list[float], base: list[float], thresholds: list[float]) -> float:
    """The largest ``ln(P_lower[E | neighbour] / P_upper[E | base])`` over the events, both ways."""
    events = 2 * len(thresholds)
    level = ALPHA / (2 * events)  # one-sided, per bound
    best = 0.0
    for threshold in thresholds:
        for above in (True, False):
            # ``noisy >= t`` favours the larger count; ``noisy < t`` the smaller one.
            first, second = (neighbour, base) if above else (base, neighbour)
            hits_first = sum(1 for value in first if (value >= threshold) == above)
            hits_second = sum(1 for value in second if (value >= threshold) == above)
            lower = scipy.stats.beta.ppf(level, hits_first, len(first) - hits_first + 1)
            upper = scipy.stats.beta.ppf(1 - level, hits_second + 1, len(second) - hits_second)
            if lower > 0 and upper > 0:
                best = max(best, math.log(lower / upper))
    return best


def _thresholds(true_count: int) -> list[float]:
    # Where a Laplace count is most distinguishable: at and beyond the two means.
    return [true_count + offset for offset in (-1.0, 0.0, 0.5, 1.0, 2.0)]


def test_neighbouring_answers_show_no_more_than_the_claimed_epsilon() -> None:
    epsilon, count = 1.0, 1000
    base, neighbour = _histogram_draws(epsilon, count), _histogram_draws(epsilon, count + 1)
    assert len(base) == len(neighbour) == BINS * ANSWERS
    found = _empirical_epsilon(neighbour, base, _thresholds(count))
    assert found <= epsilon, found
    # The draws follow the declared Laplace too (KS, p > 1e-7) with its variance 2 b^2
    # (Laplace's sample variance has relative deviation sqrt(5 / n) = 0.7%: 5% is 7 of them).
    scale = 1 / epsilon
    result = scipy.stats.kstest(base, scipy.stats.laplace(loc=count, scale=scale).cdf)
    assert result.pvalue > 1e-7, result
    assert abs(statistics.variance(base, count) / (2 * scale**2) - 1) < 0.05


def test_the_empirical_epsilon_catches_a_mechanism_with_half_the_noise() -> None:
    """Claimed 1, released at 2: the bound comes out near 2 (with 100,000 draws a side, the
    Clopper-Pearson margins cost about 0.1), far above 1; missing it would take a deviation of
    tens of standard errors."""
    claimed, count = 1.0, 1000
    base, neighbour = _histogram_draws(2 * claimed, count), _histogram_draws(2 * claimed, count + 1)
    assert _empirical_epsilon(neighbour, base, _thresholds(count)) > claimed


def test_pooled_neighbouring_answers_show_no_more_than_the_claimed_epsilon() -> None:
    """The empirical epsilon, KS and variance tests above, with every sample from a pool."""
    epsilon, count = 1.0, 1000
    base = _histogram_draws(epsilon, count, pooled=True)
    neighbour = _histogram_draws(epsilon, count + 1, pooled=True)
    assert len(base) == len(neighbour) == BINS * ANSWERS
    found = _empirical_epsilon(neighbour, base, _thresholds(count))
    assert found <= epsilon, found
    scale = 1 / epsilon
    result = scipy.stats.kstest(base, scipy.stats.laplace(loc=count, scale=scale).cdf)
    assert result.pvalue > 1e-7, result
    assert abs(statistics.variance(base, count) / (2 * scale**2) - 1) < 0.05


def test_the_empirical_epsilon_catches_pooled_noise_at_half_the_scale() -> None:
    claimed, count = 1.0, 1000
    base = _histogram_draws(2 * claimed, count, pooled=True)
    neighbour = _histogram_draws(2 * claimed, count + 1, pooled=True)
    assert _empirical_epsilon(neighbour, base, _thresholds(count)) > claimed
