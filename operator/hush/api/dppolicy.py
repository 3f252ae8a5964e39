"""The ``DPPolicy`` resource: what each route of an application's aggregate API may release.

Owns the wire shape and the CEL rules the apiserver enforces. A policy names the budget
(and the team quota in it) that its releases are charged to, the application's upstream
port, and per route: the fields to noise, how (mechanism, epsilon, delta), the small-cohort
suppression threshold and how long a noisy answer is cached (so that repeating a query
cannot average the noise away).

Sensitivity follows from a field's kind, bounds and contributions per individual; an
explicit ``sensitivity`` may only raise it. That check needs arithmetic per kind, so it
lives in ``hush.reconcile.dppolicy`` and is reported as a condition, not in CEL.
"""

from __future__ import annotations

from typing import Literal

import pydantic

from hush.api import common

Mechanism = Literal["laplace", "gaussian", "discreteLaplace", "discreteGaussian"]
QueryKind = Literal["count", "sum", "mean", "histogram", "quantile"]
HttpMethod = Literal["GET", "POST", "HEAD"]

# The documented JSON-path subset: `$`, then `.key`, `[*]` (every array element) or `.*`
# (every value of a map), e.g. `$.regions[*].count` or `$.histogram.*`.
JSON_PATH_PATTERN = r"^\$((\.[A-Za-z_][A-Za-z0-9_-]*)|(\[\*\])|(\.\*))*$"
ROUTE_PATH_PATTERN = r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/{}-]*$"


def _get_only() -> list[HttpMethod]:
    return ["GET"]


class BudgetReference(common.ResourceModel):
    """The PrivacyBudget (same namespace) and the team quota that releases are charged to."""

    name: str = pydantic.Field(
        max_length=253, pattern=common.DNS_SUBDOMAIN_PATTERN, description="PrivacyBudget name."
    )
    team: str = pydantic.Field(
        max_length=63, pattern=common.DNS_LABEL_PATTERN, description="Team quota to charge."
    )


class Upstream(common.ResourceModel):
    """Where the application's own aggregate API listens inside the pod."""

    port: int = pydantic.Field(
        description="The application's container port.",
        json_schema_extra=common.cel(
            ("self >= 1 && self <= 65535", "upstream.port must be a TCP port (1-65535)")
        ),
    )


class Bounds(common.ResourceModel):
    """The range each individual's value is clamped to before aggregation."""

    model_config = pydantic.ConfigDict(
        json_schema_extra=common.cel(
            ("self.lower < self.upper", "bounds.lower must be less than bounds.upper")
        )
    )

    lower: float
    upper: float


class PostProcess(common.ResourceModel):
    """Post-processing applied after noise; it cannot weaken the guarantee."""

    clamp_non_negative: bool = pydantic.Field(
        default=False, description="Replace negative noisy values with 0."
    )
    round: bool = pydantic.Field(default=False, description="Round to the nearest integer.")


class Field(common.ResourceModel):
    """One value (or set of values) in the JSON answer that is released with noise."""

    model_config = pydantic.ConfigDict(
        json_schema_extra=common.cel(
            (
                "!(self.kind in ['sum', 'mean', 'quantile']) || has(self.bounds)",
                "sum, mean and quantile fields need bounds {lower, upper}: the sensitivity "
                "follows from them",
            ),
            (
                "(self.kind == 'quantile') == has(self.quantile)",
                "quantile is required for kind quantile and only allowed there (e.g. 0.5)",
            ),
        )
    )

    path: str = pydantic.Field(
        max_length=256,
        pattern=JSON_PATH_PATTERN,
        description="JSON path of the value(s): $.key, [*] for array items, .* for map values.",
    )
    kind: QueryKind = pydantic.Field(description="What aggregate the value is.")
    bounds: Bounds | None = pydantic.Field(
        default=None, description="Clamping range for sum, mean and quantile."
    )
    sensitivity: float | None = pydantic.Field(
        default=None,
        description="Explicit sensitivity; may raise, never lower, the derived one.",
        json_schema_extra=common.cel(("self > 0.0", "sensitivity must be greater than 0")),
    )
    contributions_per_individual: int = pydantic.Field(
        default=1,
        description="How many rows one person can contribute (scales the sensitivity).",
        json_schema_extra=common.cel(
            ("self >= 1", "contributionsPerIndividual must be at least 1")
        ),
    )
    quantile: float | None = pydantic.Field(
        default=None,
        description="For kind quantile: which quantile (0 < q < 1).",
        json_schema_extra=common.cel(
            ("self > 0.0 && self < 1.0", "quantile must be between 0 and 1 (e.g. 0.5)")
        ),
    )
    post_process: PostProcess = pydantic.Field(default_factory=PostProcess)


class Route(common.ResourceModel):
    """One API route whose answers are released under differential privacy."""

    model_config = pydantic.ConfigDict(
        json_schema_extra=common.cel(
            (
                "!(self.mechanism in ['gaussian', 'discreteGaussian']) || self.delta > 0.0",
                "gaussian mechanisms need delta > 0 (e.g. 1e-7)",
            ),
            (
                "!(self.mechanism in ['laplace', 'discreteLaplace']) || self.delta == 0.0",
                "laplace mechanisms are pure epsilon-DP: set delta to 0 or use a gaussian "
                "mechanism",
            ),
        )
    )

    path: str = pydantic.Field(
        max_length=512,
        pattern=ROUTE_PATH_PATTERN,
        description="Path pattern; {name} matches one path segment, e.g. /stats/{region}.",
    )
    methods: list[HttpMethod] = pydantic.Field(
        default_factory=_get_only, min_length=1, max_length=3
    )
    mechanism: Mechanism = pydantic.Field(description="Noise mechanism.")
    epsilon: float = pydantic.Field(
        description="Epsilon charged for one release of this route's answer.",
        json_schema_extra=common.cel(("self > 0.0", "epsilon must be greater than 0")),
    )
    delta: float = pydantic.Field(
        default=0.0,
        description="Delta charged for one release.",
        json_schema_extra=common.cel(
            ("self >= 0.0 && self < 1.0", "delta must be at least 0 and less than 1")
        ),
    )
    min_cohort: int = pydantic.Field(
        default=0,
        description="Answers about fewer individuals than this are suppressed (null).",
        json_schema_extra=common.cel(("self >= 0", "minCohort must not be negative")),
    )
    cache_ttl: str = pydantic.Field(
        default="5m",
        alias="cacheTTL",
        max_length=32,
        pattern=common.DURATION_PATTERN,
        description="Identical queries within this time get the identical noisy answer.",
    )
    fields: list[Field] = pydantic.Field(min_length=1, max_length=64)


class DPPolicySpec(common.ResourceModel):
    """What the privacy owner allows an application's aggregate API to release."""

    model_config = pydantic.ConfigDict(
        json_schema_extra=common.cel(
            (
                "self.routes.all(r, self.routes.exists_one(s, s.path == r.path))",
                "each route path may appear only once",
            ),
        )
    )

    budget_ref: BudgetReference
    upstream: Upstream
    routes: list[Route] = pydantic.Field(min_length=1, max_length=64)
    pass_through: list[str] = pydantic.Field(
        default_factory=list,
        max_length=16,
        description="Paths forwarded without noise (health checks only; never data).",
        json_schema_extra={
            "items": {"type": "string", "maxLength": 512, "pattern": ROUTE_PATH_PATTERN}
        },
    )


class DPPolicyStatus(common.ResourceModel):
    """What the operator observed and decided."""

    observed_generation: int = pydantic.Field(default=0, ge=0)
    conditions: list[common.Condition] = common.conditions_field()
    policy_hash: str = pydantic.Field(
        default="", max_length=80, description="Hash of the normalised spec, baked into pods."
    )
