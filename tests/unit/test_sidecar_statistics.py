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

The mean test uses the same 5-standard-deviation thresholds (for the average and for the
variance; its noisy means are Gaussian to first order), so below 1.2e-6 per run.
"""

from __future__ import annotations

import statistics

import scipy.stats

from hush.api import dppolicy
from hush.privacy import route_cost
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
