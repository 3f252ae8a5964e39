"""The real noise, through the sidecar's release path: 20,000 releases of one fixed count
follow the declared mechanism at the declared scale.

OpenDP draws from OpenSSL's CSPRNG and has no seeded test mode, so the test is not
deterministic; its thresholds make a false failure improbable instead:
- Kolmogorov-Smirnov against the exact declared distribution: fail only if p < 1e-7 (under
  the null hypothesis the p-value is uniform, so that happens with probability 1e-7);
- sample variance within 5% of sigma^2: for n = 20,000 Gaussian draws the sample variance
  has relative standard deviation sqrt(2/n) = 1%, so 5% is 5 standard deviations, a
  two-sided probability of 5.7e-7.
Together: a false failure with probability below 7e-7 < 1e-6 per run.
"""

from __future__ import annotations

import statistics

import scipy.stats

from hush.api import dppolicy
from hush.privacy import mechanisms
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
    samples: list[float] = []
    scale = None
    for _ in range(RELEASES):
        prepared = release.prepare({"count": TRUE_COUNT}, route, planner=mechanisms.plan)
        [field] = prepared.fields
        assert field.plan is not None
        assert prepared.charge is not None
        scale = field.plan.sampler.scale
        assert float(prepared.charge.scale) <= scale  # the ledger never records more noise
        value = release.apply(prepared, min_cohort=0).document["count"]
        samples.append(float(value))
    assert scale is not None
    result = scipy.stats.kstest(samples, scipy.stats.norm(loc=TRUE_COUNT, scale=scale).cdf)
    assert result.pvalue > 1e-7, result
    variance = statistics.variance(samples, TRUE_COUNT)
    assert abs(variance / scale**2 - 1) < 0.05, (variance, scale**2)
