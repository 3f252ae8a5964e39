"""The ``DPPolicy`` resource: what each route of an application's aggregate API may release.

Owns the wire shape and the CEL rules the apiserver enforces. A policy names the budget
(and the team quota in it) that its releases are charged to, the application's upstream
port, and per route: the fields to noise, how (mechanism, epsilon, delta), the small-cohort
suppression threshold and how long a noisy answer is cached (so that repeating a query
cannot average the noise away).

The released document is built from the policy, never copied from the application's answer
(docs/design/0018-release-built-from-the-policy.md): a route declares its ``constants``, one
``domain`` per wildcard selection (fixed keys, a fixed length, or differentially private
partition selection), an imputation default per field, the query parameters it accepts and
the request headers the application answers differently for.

Sensitivity follows from a field's kind, bounds and contributions per individual; an
explicit ``sensitivity`` may only raise it. That check needs arithmetic per kind, so it
lives in ``hush.reconcile.dppolicy`` and is reported as a condition, not in CEL, as are the
checks that relate two fields (a ``mean``'s ``countPath`` must be a ``count`` field of the
same route), the checks that relate fields, domains and constants (every wildcard has exactly
one domain, no two paths collide: ``hush.privacy.route_cost.route_problems``) and the refusal
of ``quantile`` (docs/design/0010-sidecar-means-and-quantiles.md).
"""

from __future__ import annotations

from typing import Annotated, Literal

import pydantic

from hush.api import common

Mechanism = Literal["laplace", "gaussian", "discreteLaplace", "discreteGaussian"]
QueryKind = Literal["count", "sum", "mean", "histogram", "quantile"]
HttpMethod = Literal["GET", "POST", "HEAD"]

# The documented JSON-path subset: `$`, then `.key`, `[*]` (every array element) or `.*`
# (every value of a map), e.g. `$.regions[*].count` or `$.histogram.*`.
JSON_PATH_PATTERN = r"^\$((\.[A-Za-z_][A-Za-z0-9_-]*)|(\[\*\])|(\.\*))*$"
# A constant's path: keys only, no wildcard (it names one place in the document).
CONSTANT_PATH_PATTERN = r"^\$(\.[A-Za-z_][A-Za-z0-9_-]*)+$"
# A domain's path: the wildcard prefix of one or more field paths, ending in [*] or .*.
DOMAIN_PATH_PATTERN = r"^\$((\.[A-Za-z_][A-Za-z0-9_-]*)|(\[\*\])|(\.\*))*((\[\*\])|(\.\*))$"
ROUTE_PATH_PATTERN = r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/{}-]*$"
# Pass-through paths are exact: no {param} segments, no query string.
EXACT_PATH_PATTERN = r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$"
# RFC 3986 unreserved characters: a parameter name that needs no percent-encoding.
QUERY_PARAMETER_PATTERN = r"^[A-Za-z0-9_.~-]{1,64}$"
# RFC 9110 field-name (a token).
HEADER_NAME_PATTERN = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$"
# A key of a fixed-key domain (a histogram bin, a region): any short string.
DOMAIN_KEY_MAX_LENGTH = 256

HeaderName = Annotated[str, pydantic.StringConstraints(pattern=HEADER_NAME_PATTERN, max_length=64)]
DomainKey = Annotated[str, pydantic.StringConstraints(max_length=DOMAIN_KEY_MAX_LENGTH)]


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
            (
                "(self.kind == 'mean') == has(self.countPath)",
                "countPath is required for kind mean and only allowed there: the JSON path "
                "of the count (a count field of the same route) that the mean divides by",
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
    count_path: str | None = pydantic.Field(
        default=None,
        max_length=256,
        pattern=JSON_PATH_PATTERN,
        description=(
            "For kind mean: JSON path of the cohort count(s) of the mean(s), in the same "
            "answer; must be the path of a count field of the same route."
        ),
    )
    quantile: float | None = pydantic.Field(
        default=None,
        description="For kind quantile: which quantile (0 < q < 1). Not supported yet: "
        "the operator reports such a policy as not Ready.",
        json_schema_extra=common.cel(
            ("self > 0.0 && self < 1.0", "quantile must be between 0 and 1 (e.g. 0.5)")
        ),
    )
    impute: float | None = pydantic.Field(
        default=None,
        description=(
            "The value used when the application's value is missing, not a number, NaN, "
            "infinite or of the wrong type (then clamped and noised like any value). Default: "
            "0 for count, histogram and sum; bounds.lower for mean."
        ),
    )
    post_process: PostProcess = pydantic.Field(default_factory=PostProcess)


class Constant(common.ResourceModel):
    """A string the released document always carries at ``path`` (a unit, a version)."""

    path: str = pydantic.Field(
        max_length=256,
        pattern=CONSTANT_PATH_PATTERN,
        description="JSON path of keys only, no wildcard: $.unit.",
    )
    value: str = pydantic.Field(max_length=256, description="The string released there.")


class PartitionSelection(common.ResourceModel):
    """An open key set: keys are released only when their noisy count passes a threshold."""

    max_partitions_contributed: int = pydantic.Field(
        default=1,
        ge=1,
        description=(
            "How many keys one individual's rows can fall under (the L0 bound the application "
            "enforces); the noise and the threshold scale with it."
        ),
        json_schema_extra=common.cel(("self >= 1", "maxPartitionsContributed must be at least 1")),
    )
    max_keys: int = pydantic.Field(
        default=100,
        ge=1,
        le=1000,
        description="At most this many keys are released (those with the largest noisy counts).",
        json_schema_extra=common.cel(
            ("self >= 1 && self <= 1000", "maxKeys must be between 1 and 1000")
        ),
    )


class Domain(common.ResourceModel):
    """The keys or length a wildcard selects: the shape of the release is declared, not read."""

    model_config = pydantic.ConfigDict(
        json_schema_extra=common.cel(
            (
                "(has(self.keys) ? 1 : 0) + (has(self.length) ? 1 : 0) "
                "+ (has(self.partitionSelection) ? 1 : 0) == 1",
                "a domain needs exactly one of keys, length or partitionSelection",
            ),
            (
                "self.path.endsWith('[*]') || self.path.endsWith('.*')",
                "a domain's path must end in [*] or .* (the wildcard whose keys it declares)",
            ),
            (
                "!has(self.length) || (self.path.endsWith('[*]') && !has(self.keyField))",
                "length is only for an array ([*]) without keyField: element i of N",
            ),
            (
                "!has(self.keyField) || self.path.endsWith('[*]')",
                "keyField is only for an array ([*]): the member naming each element",
            ),
            (
                "!self.path.endsWith('[*]') || has(self.length) || has(self.keyField)",
                "an array ([*]) with keys or partitionSelection needs keyField: the member "
                "that names each element",
            ),
        )
    )

    path: str = pydantic.Field(
        max_length=256,
        pattern=DOMAIN_PATH_PATTERN,
        description="The wildcard prefix of field paths: $.regions.* or $.groups[*].",
    )
    keys: list[DomainKey] | None = pydantic.Field(
        default=None,
        min_length=1,
        max_length=1000,
        description="The fixed keys, in release order (missing ones imputed, others dropped).",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    length: int | None = pydantic.Field(
        default=None,
        ge=1,
        le=10000,
        description="For [*] without keyField: elements 0..length-1 (missing ones imputed).",
        json_schema_extra=common.cel(
            ("self >= 1 && self <= 10000", "length must be between 1 and 10000")
        ),
    )
    key_field: str | None = pydantic.Field(
        default=None,
        max_length=64,
        pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$",
        description="For [*]: the member that names an element, released as {keyField: key}.",
    )
    partition_selection: PartitionSelection | None = pydantic.Field(
        default=None,
        description="Open key set: differentially private partition selection (needs delta).",
    )


class QueryParameter(common.ResourceModel):
    """A query parameter the route accepts; any other one is refused before any charge."""

    name: str = pydantic.Field(max_length=64, pattern=QUERY_PARAMETER_PATTERN)
    repeated: bool = pydantic.Field(
        default=False, description="May appear more than once (order is kept)."
    )


class Route(common.ResourceModel):
    """One API route whose answers are released under differential privacy."""

    model_config = pydantic.ConfigDict(
        json_schema_extra=common.cel(
            (
                "!(self.mechanism in ['gaussian', 'discreteGaussian']) || self.delta > 0.0",
                "gaussian mechanisms need delta > 0 (e.g. 1e-7)",
            ),
            (
                "!(self.mechanism in ['laplace', 'discreteLaplace']) || self.delta == 0.0 "
                "|| (has(self.domains) && self.domains.exists(d, has(d.partitionSelection)))",
                "laplace mechanisms are pure epsilon-DP: set delta to 0 or use a gaussian "
                "mechanism (only a route with partitionSelection spends delta, on its "
                "threshold)",
            ),
            (
                "!has(self.domains) || !self.domains.exists(d, has(d.partitionSelection)) "
                "|| self.delta > 0.0",
                "a route with partitionSelection needs delta > 0 (e.g. 1e-7): the threshold "
                "that keeps rare keys private is set from delta",
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
    release_deadline: str = pydantic.Field(
        default="5ms",
        max_length=32,
        pattern=common.DURATION_PATTERN,
        description=(
            "The noising step of every answer is padded to this time, so that response "
            "times do not reveal the noise; 0s turns padding off."
        ),
    )
    fields: list[Field] = pydantic.Field(min_length=1, max_length=64)
    constants: list[Constant] = pydantic.Field(
        default_factory=list,
        max_length=64,
        description="Strings released at fixed paths; nothing else but the fields is released.",
        json_schema_extra=common.list_map("path"),
    )
    domains: list[Domain] = pydantic.Field(
        default_factory=list,
        max_length=16,
        description="One per wildcard prefix of the field paths: its keys, length or selection.",
        json_schema_extra=common.list_map("path"),
    )
    query_parameters: list[QueryParameter] = pydantic.Field(
        default_factory=list,
        max_length=32,
        description="The query parameters the route accepts; others are refused (400).",
        json_schema_extra=common.list_map("name"),
    )
    vary_headers: list[HeaderName] = pydantic.Field(
        default_factory=list,
        max_length=16,
        description=(
            "Request headers the application answers differently for: forwarded, and part "
            "of the cache key (Authorization and Cookie always are)."
        ),
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )


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
        description=(
            "Exact paths forwarded without noise, GET/HEAD only, no query string (health "
            "checks only; never data)."
        ),
        json_schema_extra={
            "items": {"type": "string", "maxLength": 512, "pattern": EXACT_PATH_PATTERN}
        },
    )


RolloutState = Literal["Complete", "Progressing", "Stalled"]


class WorkloadRollout(common.ResourceModel):
    """How far one workload that uses the policy has rolled to the current hash."""

    kind: Literal["Deployment", "StatefulSet", "DaemonSet"]
    name: str = pydantic.Field(max_length=253)
    desired_hash: str = pydantic.Field(max_length=80)
    updated_pods: int = pydantic.Field(ge=0, description="Pods running the current hash.")
    stale_pods: int = pydantic.Field(
        ge=0, description="Pods running another hash (they refuse to release)."
    )
    total_pods: int = pydantic.Field(ge=0)
    desired_pods: int = pydantic.Field(ge=0)
    state: RolloutState
    message: str | None = pydantic.Field(
        default=None, max_length=512, description="Why a stalled workload cannot roll."
    )


class Rollout(common.ResourceModel):
    """Rollout of the current policy hash to the workloads whose pods use the policy."""

    desired_hash: str = pydantic.Field(max_length=80)
    total_workloads: int = pydantic.Field(ge=0)
    complete_workloads: int = pydantic.Field(ge=0)
    unlisted_workloads: int = pydantic.Field(
        default=0, ge=0, description="Workloads beyond the listed 200 (status stays small)."
    )
    workloads: list[WorkloadRollout] = pydantic.Field(default_factory=list, max_length=200)


DriftReason = Literal[
    "SidecarMissing",
    "StampMissing",
    "ImageChanged",
    "ConfigMismatch",
    "SecurityContextChanged",
    "EphemeralContainers",
]


class DriftedPod(common.ResourceModel):
    name: str = pydantic.Field(max_length=253)
    reasons: list[DriftReason] = pydantic.Field(max_length=8)


class Drift(common.ResourceModel):
    """Pods whose sidecar is not what the policy and the injector would produce now."""

    drifted_pods: int = pydantic.Field(ge=0)
    pods: list[DriftedPod] = pydantic.Field(
        default_factory=list, max_length=50, description="The first 50 drifted pods, by name."
    )


class DPPolicyStatus(common.ResourceModel):
    """What the operator observed and decided."""

    observed_generation: int = pydantic.Field(default=0, ge=0)
    conditions: list[common.Condition] = common.conditions_field()
    policy_hash: str = pydantic.Field(
        default="", max_length=80, description="Hash of the normalised spec, baked into pods."
    )
    rollout: Rollout | None = pydantic.Field(
        default=None, description="Written by the rollout controller; absent until it has run."
    )
    drift: Drift | None = pydantic.Field(
        default=None, description="Written by the rollout controller; absent until it has run."
    )
