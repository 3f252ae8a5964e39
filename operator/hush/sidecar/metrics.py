"""Prometheus metrics of the sidecar (served on its admin port at ``/metrics``).

Labels are bounded: the route *pattern* (from the baked policy, never the concrete path)
and an outcome code. Never a request id, a query string or a value.
"""

from __future__ import annotations

import prometheus_client

REQUESTS = prometheus_client.Counter(
    "hush_sidecar_requests",
    "Requests answered by the sidecar, by route pattern and outcome.",
    ["route", "outcome"],
)
EPSILON_CHARGED = prometheus_client.Counter(
    "hush_sidecar_epsilon_charged",
    "Epsilon charged at the accountant, one route's epsilon per release (a released "
    "document or the generic failure: both are charged).",
    ["route"],
)
SUPPRESSIONS = prometheus_client.Counter(
    "hush_sidecar_suppressed_values",
    "Released values replaced by null because their noisy cohort was below minCohort.",
    ["route"],
)
CACHE_HITS = prometheus_client.Counter(
    "hush_sidecar_cache_hits",
    "Requests answered from the no-averaging cache (not charged again).",
    ["route"],
)
LATENCY = prometheus_client.Histogram(
    "hush_sidecar_request_seconds",
    "Time from receiving a request to answering it, by route pattern.",
    ["route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
)
DEADLINE_OVERRUNS = prometheus_client.Counter(
    "hush_sidecar_release_deadline_overruns",
    "Answers whose release step (parse, build, noise, encode) took longer than the route's "
    "releaseDeadline (released, padded to the next multiple of it); raise the deadline if "
    "this is not rare.",
    ["route"],
)
POLICY_CHECKS = prometheus_client.Counter(
    "hush_sidecar_policy_checks",
    "Polls of the accountant's policy status, by outcome (current, stale, failed).",
    ["outcome"],
)
