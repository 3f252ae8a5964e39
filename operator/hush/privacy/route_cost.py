"""What one release of a route costs, from the policy alone: sensitivities, noise, the charge.

The sidecar and the accountant call the same functions (docs/design/0018): the accountant
computes the charge from the policy it reads (``route_charge``) and ignores any number a
sidecar could report; the sidecar noises with the samplers of the same plan
(``route_plan``). Nothing here reads an answer, so the cost is data-independent.

Owns: the structural checks of a route that the cost and the released shape depend on
(``route_problems``: every wildcard has exactly one domain, no two paths collide, a mean
divides by a count of the same shape, partition selection has a count to select by); the
number of values per field (``field_lengths``); the per-field calibration and the one charge
(``route_plan``, ``route_charge``); the thresholds of partition selection. It does not read
or build documents (``hush.sidecar.release``) and does not add costs up
(``hush.privacy.accounting``).

Lengths. A field's values are the product of its domains' sizes over the wildcards of its
path: ``len(keys)``, ``length``, or, for partition selection, at most ``maxKeys`` released
values of which one individual can move at most ``maxPartitionsContributed`` (the L0 bound the
application enforces). Two lengths per field follow: the *released* length (``field_lengths``,
``maxKeys`` for a selected level) and the *sensitivity* length (``maxPartitionsContributed``
for a selected level), the number of values one individual's rows can move.

Sensitivity of a field's vector (``vector_sensitivity``), from the per-value sensitivity ``D``
(the larger of ``hush.privacy.sensitivity.derived`` and an explicit ``sensitivity``) and the
sensitivity length ``n``:

- ``histogram``: the bins are disjoint, so one individual's ``c`` rows move the vector by at
  most ``D = c`` in L1 and, all in one bin at worst, at most ``c`` in L2: ``D`` in both norms
  (parallel composition: the whole histogram is one release).
- ``count`` and ``sum``: nothing says the values are disjoint (``$.regions.*.count`` may
  count overlapping groups), so one individual may move all ``n``: ``n * D`` in L1,
  ``sqrt(n) * D`` in L2 (rounded up).
- ``mean`` (docs/design/0010-sidecar-means-and-quantiles.md): released as noisy sum over the
  noisy count of the route's ``count`` field at ``countPath`` (same wildcards, paired key by
  key). The reconstructed sums ``clamp(mean, bounds) * count`` are noised like a ``sum``
  (per value ``D = max(|lower|, |upper|) * c``, plus 1 for the discrete kinds, which round the
  reconstructed sum to an integer).
- ``quantile`` is refused (``RouteError``): a DP quantile needs the data, which the answer
  does not carry; the operator reports such a policy not Ready.

Several fields on one route (docs/design/0009-sidecar-release-accounting.md). The route's
declared (epsilon, delta) is charged once per answer, so the ``k`` fields share it. Field
``i`` gets weight ``w = 1/k`` and is calibrated *at the route's (epsilon, delta)* for an
inflated sensitivity ``S'_i = D_i / w`` (Laplace kinds) or ``D_i / sqrt(w)`` (Gaussian
kinds), where ``D_i`` already includes the lattice slack (``mechanisms.charged_sensitivity``).
Each field's own ``plan.release`` (S'_i, scale_i) therefore passes the accountant's
under-noise check by construction, and the release charged is the field's release with the
largest ratio ``S'_i / scale_i``:

- Laplace kinds: the answer's privacy loss is ``sum_i D_i / b_i = sum_i w (S'_i / b_i)
  <= max_i S'_i / b_i`` (a weighted mean is at most its maximum), which is the pure epsilon
  of the charged release. The Renyi curve of Laplace noise is convex in that epsilon with
  value 0 at 0, hence superadditive, so the composed answer's RDP (the sum of the fields')
  is also below the charged release's at every order; and its rho ``sum eps_i^2 / 2`` is
  below ``(sum eps_i)^2 / 2``, which zCDP accounting charges. So every accounting mode
  charges at least the true loss.
- Gaussian kinds: independent Gaussians compose exactly into one Gaussian with
  ``mu^2 = sum_i (D_i / sigma_i)^2 = sum_i w (S'_i / sigma_i)^2 <= max_i (S'_i/sigma_i)^2``
  (Dong, Roth & Su 2019, Cor. 3.3; the privacy-loss distributions are normal and add), and
  every Gaussian guarantee (eps-delta profile, rho, RDP) is monotone in mu.

With one field ``w = 1``: the field's plan is charged unchanged. The weights and lengths are
fixed by the policy, never by the answer, so the split itself reveals nothing. The argument
needs only that the lengths bound what one individual can move, which the declared domains
make data-independent (the previous sidecar counted the values it found in the answer).

Partition selection (open key sets; Korolova et al. 2009, Gopi et al. 2020, Rogers et al.
2023, OpenDP's ``make_laplace_threshold``/``make_gaussian_threshold``). The application
answers a value per key it has; the sidecar noises *every* candidate key's values with the
plan's samplers and releases a key only when its noisy count (the route's ``count`` or
``histogram`` field directly under the domain) is at least the threshold ``T``, keeping the
``maxKeys`` largest (post-processing). For neighbouring datasets ``x`` (with one more
individual) and ``x'``: keys present in both have values that move within the sensitivity
above, so their noisy values are (epsilon, delta_noise)-indistinguishable by the calibration
argument; the at most ``k = maxPartitionsContributed`` keys present only in ``x`` hold only
that individual's rows (a count of at most ``c``, the count field's per-value sensitivity),
and are released with probability ``delta_T = 1 - (1 - P[c + Z >= T])^k``. Conditioning on
that event (independent of the other keys' noise) gives, in both directions,
``P[M(x) in S] <= e^eps P[M(x') in S] + delta_noise + delta_T`` (for the direction from
``x'`` to ``x``, the worst case ``e^eps P[shared in S] = 1`` turns the conditional factor
``1 - delta_T`` into the additive ``delta_T``). ``T`` is the smallest integer with
``delta_T`` (OpenDP's privacy map of the threshold measurement at the count field's actual
scale, L0 ``k``, L-infinity ``ceil(c)``) within the route's share: all of the route's delta
for the Laplace kinds (whose noise is pure), half of it for the Gaussian kinds (the other half
calibrates the noise), split evenly over the route's selected domains (union bound). So the
charged (epsilon, delta) covers noise and selection. The delta is approximate-DP delta: pure
accounting charges it; zCDP and RDP accounting, which convert the noise alone, must add
``threshold_delta`` on top (the operator reports such a policy not Ready meanwhile).
"""

from __future__ import annotations

import dataclasses
import decimal
import functools
import math
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from typing import Any

import opendp.prelude as dp
from opendp.mod import OpenDPException

from hush.api import dppolicy, jsonpath
from hush.privacy import accounting, amounts, kinds, mechanisms, sensitivity

Planner = Callable[..., mechanisms.Plan]
"""``mechanisms.plan``'s signature: (mechanism, *, sensitivity, epsilon, delta, length)."""

# Thresholds are searched over the integers up to this; beyond, delta is unreachable.
_LARGEST_THRESHOLD = 2**40
# At most this many values in one released document (a policy limit, not a privacy one: the
# sidecar builds and noises every declared value of every answer).
LARGEST_RELEASE = 100_000
# Shares of delta are rounded down, so that they never add up to more than the route's.
_DOWN = decimal.Context(prec=40, rounding=decimal.ROUND_FLOOR)


class RouteError(ValueError):
    """No answer of the route can be released soundly; the message says how to fix it."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# -- the shape the policy declares ---------------------------------------------------------


def _domains_by_path(route: dppolicy.Route) -> dict[str, dppolicy.Domain]:
    return {domain.path: domain for domain in route.domains}


def field_domains(route: dppolicy.Route, path: str) -> tuple[dppolicy.Domain, ...]:
    """The domain of each wildcard of ``path``, outermost first; ``RouteError`` if one lacks."""
    by_path = _domains_by_path(route)
    found: list[dppolicy.Domain] = []
    for prefix in jsonpath.wildcard_prefixes(path):
        domain = by_path.get(prefix)
        if domain is None:
            raise RouteError(
                "DomainMissing",
                f"Field {path} of route {route.path} selects {prefix}, which has no domain: "
                f"add {{path: {prefix}, keys: [...]}} (or length, or partitionSelection) to "
                "the route's domains; the keys and lengths of a release are declared, not read",
            )
        found.append(domain)
    return tuple(found)


def domain_size(domain: dppolicy.Domain) -> int:
    """The most values one level of the domain releases."""
    if domain.keys is not None:
        return len(domain.keys)
    if domain.length is not None:
        return domain.length
    if domain.partition_selection is not None:
        return domain.partition_selection.max_keys
    raise RouteError("DomainInvalid", f"Domain {domain.path} declares no keys, length or selection")


def domain_reach(domain: dppolicy.Domain) -> int:
    """How many values of one level one individual's rows can move."""
    if domain.partition_selection is not None:
        return domain.partition_selection.max_partitions_contributed
    return domain_size(domain)


def field_lengths(route: dppolicy.Route) -> tuple[int, ...]:
    """How many values each field releases at most: the product of its domains' sizes."""
    return tuple(
        math.prod(domain_size(domain) for domain in field_domains(route, field.path))
        for field in route.fields
    )


def sensitivity_lengths(route: dppolicy.Route) -> tuple[int, ...]:
    """How many values of each field one individual can move (``maxPartitionsContributed``
    for a selected level)."""
    return tuple(
        math.prod(domain_reach(domain) for domain in field_domains(route, field.path))
        for field in route.fields
    )


def mean_count_field(route: dppolicy.Route, mean: dppolicy.Field) -> int | None:
    """The index in ``route.fields`` of the ``count`` field that ``mean`` divides by."""
    for index, other in enumerate(route.fields):
        if other.kind == "count" and other.path == mean.count_path:
            return index
    return None


def mean_count_problem(route: dppolicy.Route, mean: dppolicy.Field) -> str | None:
    """Why ``mean`` cannot be released from its route's answer, or None.

    A mean is released as noisy sum / noisy count, and the count is the route's own
    ``count`` field at ``countPath`` (noised once, released consistently with the mean),
    over the same wildcards, so that the two are paired key by key.
    """
    where = f"Field {mean.path} of route {route.path}"
    if mean.bounds is None or mean.count_path is None:
        return f"{where} is a mean without bounds or countPath: set both"
    index = mean_count_field(route, mean)
    if index is None:
        return (
            f"{where} is a mean whose countPath {mean.count_path} is not a count field of "
            f"the same route: add {{path: {mean.count_path}, kind: count}} to the route's "
            "fields, so that the count is noised and the mean divides by the noisy count"
        )
    count = route.fields[index]
    if count.contributions_per_individual < mean.contributions_per_individual:
        return (
            f"{where} is a mean over rows of which one person contributes up to "
            f"{mean.contributions_per_individual}, but its count field {count.path} "
            f"declares only {count.contributions_per_individual}: the count counts the "
            "same rows, so raise the count's contributionsPerIndividual"
        )
    if jsonpath.wildcard_prefixes(mean.path) != jsonpath.wildcard_prefixes(count.path):
        return (
            f"{where} is a mean whose countPath {count.path} has other wildcards: a mean "
            "and its count are paired key by key, so put the count beside the mean (e.g. "
            "$.groups[*].mean with $.groups[*].count)"
        )
    return None


def selecting_field(route: dppolicy.Route, domain: dppolicy.Domain) -> int | None:
    """The index of the count (or histogram) field whose noisy values select ``domain``'s keys.

    The first such field that sits directly at the domain (``$.bins.*``) or one key below
    it (``$.regions.*.count``, ``$.groups[*].count``).
    """
    prefix = jsonpath.parse(domain.path)
    for index, field in enumerate(route.fields):
        steps = jsonpath.parse(field.path)
        if field.kind not in ("count", "histogram") or steps[: len(prefix)] != prefix:
            continue
        rest = steps[len(prefix) :]
        if not rest or (len(rest) == 1 and rest[0].kind == "key"):
            return index
    return None


def _domain_problem(route: dppolicy.Route, domain: dppolicy.Domain) -> tuple[str, str] | None:
    """The apiserver's CEL rules on a domain, for policies that did not pass through it."""
    where = f"Domain {domain.path} of route {route.path}"
    declared = [domain.keys is not None, domain.length is not None]
    declared.append(domain.partition_selection is not None)
    array = domain.path.endswith("[*]")
    if sum(declared) != 1:
        return ("DomainInvalid", f"{where} needs exactly one of keys, length or partitionSelection")
    if domain.keys is not None and len(set(domain.keys)) != len(domain.keys):
        return ("DomainInvalid", f"{where} lists a key twice: each key is one released value")
    if not (array or domain.path.endswith(".*")):
        return ("DomainInvalid", f"{where}: a domain's path must end in [*] or .*")
    if domain.length is not None and (not array or domain.key_field is not None):
        return ("DomainInvalid", f"{where}: length is only for an array ([*]) without keyField")
    if domain.key_field is not None and not array:
        return ("DomainInvalid", f"{where}: keyField is only for an array ([*])")
    if array and domain.length is None and domain.key_field is None:
        return (
            "DomainInvalid",
            f"{where}: an array ([*]) with keys or partitionSelection needs keyField, the "
            "member that names each element",
        )
    if domain.partition_selection is not None:
        if any(step.wildcard for step in jsonpath.parse(domain.path)[:-1]):
            return (
                "PartitionSelectionNested",
                f"{where} selects partitions below another wildcard: partition selection is "
                "only supported for a wildcard with no wildcard before it (e.g. $.regions.*)",
            )
        if selecting_field(route, domain) is None:
            return (
                "SelectionCountMissing",
                f"{where} uses partitionSelection but no count or histogram field sits at it "
                f"or one key below it: add e.g. {{path: {domain.path}.count, kind: count}}; "
                "its noisy count decides which keys are released",
            )
        if route.delta <= 0:
            return (
                "PartitionSelectionNeedsDelta",
                f"{where} uses partitionSelection, which needs the route's delta > 0",
            )
    return None


def _collision_problems(route: dppolicy.Route) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    places = [("constant", constant.path) for constant in route.constants]
    places += [("field", field.path) for field in route.fields]
    for index, (kind, path) in enumerate(places):
        for other_kind, other in places[index + 1 :]:
            if jsonpath.collide(path, other):
                problems.append(
                    (
                        "PathsCollide",
                        f"The {kind} path {path} and the {other_kind} path {other} of route "
                        f"{route.path} name the same place (or one inside the other): give "
                        "each value its own place in the released document",
                    )
                )
    for domain in route.domains:
        if domain.key_field is None:
            continue
        member = f"{domain.path}.{domain.key_field}"
        for field in route.fields:
            if field.path == domain.path or jsonpath.collide(field.path, member):
                problems.append(
                    (
                        "PathsCollide",
                        f"Field {field.path} of route {route.path} would replace the keyField "
                        f"{domain.key_field} (or the whole element) of {domain.path}: an "
                        "element is released as {keyField: key, ...fields}, so name the "
                        "field's member differently",
                    )
                )
    return problems


def route_problems(route: dppolicy.Route) -> list[tuple[str, str]]:
    """Every reason (code, message) no answer of ``route`` can be released soundly."""
    problems: list[tuple[str, str]] = []
    for field in route.fields:
        where = f"Field {field.path} of route {route.path}"
        if field.kind == "quantile":
            problems.append(
                (
                    "QuantileUnsupported",
                    f"{where} is a quantile, which the sidecar cannot release: it sees only "
                    "the application's aggregate answer, and a differentially private "
                    "quantile needs the data itself. Publish a histogram over fixed bins "
                    "(kind histogram) and read the quantile from the noisy histogram, or a "
                    "mean (kind mean with countPath)",
                )
            )
        if field.kind == "mean":
            problem = mean_count_problem(route, field)
            if problem is not None:
                problems.append(("MeanCountNotCovered", problem))
        try:
            field_domains(route, field.path)
        except RouteError as error:
            problems.append((error.reason, str(error)))
        if field.path.startswith("$[*]"):
            problems.append(
                (
                    "DocumentNotAnObject",
                    f"{where} makes the whole answer an array: the released document is an "
                    "object, so put the array under a key (e.g. $.rows[*])",
                )
            )
    used = {prefix for field in route.fields for prefix in jsonpath.wildcard_prefixes(field.path)}
    seen: set[str] = set()
    for domain in route.domains:
        if domain.path in seen:
            problems.append(
                ("DomainDuplicated", f"Route {route.path} declares domain {domain.path} twice")
            )
        seen.add(domain.path)
        if domain.path not in used:
            problems.append(
                (
                    "DomainUnused",
                    f"Domain {domain.path} of route {route.path} is not a wildcard of any "
                    "field path: remove it, or fix its path to the wildcard prefix of a field "
                    "(e.g. $.regions.* for $.regions.*.count)",
                )
            )
        domain_problem = _domain_problem(route, domain)
        if domain_problem is not None:
            problems.append(domain_problem)
    problems += _collision_problems(route)
    if not problems:
        total = sum(field_lengths(route))
        if total > LARGEST_RELEASE:
            problems.append(
                (
                    "ReleaseTooLarge",
                    f"Route {route.path} declares {total} values per answer (the product of "
                    f"each field's domains), more than {LARGEST_RELEASE}: split the route or "
                    "declare fewer keys",
                )
            )
    return problems


def check_route(route: dppolicy.Route) -> None:
    """Raise ``RouteError`` (the first problem) unless ``route`` can be released."""
    problems = route_problems(route)
    if problems:
        raise RouteError(*problems[0])


# -- sensitivity and calibration -------------------------------------------------------------


def _ceil_sqrt(value: int) -> Decimal:
    """sqrt(value) rounded up to 6 decimals, exactly."""
    scaled = math.isqrt(value * 10**12)
    if scaled * scaled < value * 10**12:
        scaled += 1
    return Decimal(scaled).scaleb(-6)


def value_sensitivity(field: dppolicy.Field) -> Decimal:
    """The per-value sensitivity: the derived one, or a larger explicit one."""
    derived = sensitivity.derived(field)
    if field.sensitivity is None:
        return derived
    return max(derived, amounts.exact(field.sensitivity))


def vector_sensitivity(field: dppolicy.Field, mechanism: kinds.Mechanism, length: int) -> Decimal:
    """The sensitivity (in the mechanism's norm) of ``length`` values one individual moves.

    For a ``mean`` those are the reconstructed sums; the discrete kinds round each to an
    integer, which can move two neighbouring sums apart by 1 more.
    """
    if field.kind == "quantile":
        raise RouteError("QuantileUnsupported", f"Field {field.path} is a quantile")
    per_value = value_sensitivity(field)
    if field.kind == "mean" and kinds.is_discrete(mechanism):
        per_value += 1
    if field.kind == "histogram" or length <= 1:
        return per_value
    if kinds.norm(mechanism) == "L1":
        return per_value * length
    return per_value * _ceil_sqrt(length)


def field_sensitivity_for_route(
    field: dppolicy.Field,
    mechanism: kinds.Mechanism,
    length: int,
    field_count: int,
    *,
    slack_length: int | None = None,
) -> Decimal:
    """``S'``: the sensitivity to calibrate at the route's full (epsilon, delta).

    ``length`` is the sensitivity length, ``slack_length`` (default ``length``) the number of
    coordinates whose lattice rounding is charged.
    """
    base = vector_sensitivity(field, mechanism, length)
    if field_count == 1:
        return base
    slack = length if slack_length is None else slack_length
    charged = mechanisms.charged_sensitivity(mechanism, base, length=slack)
    if kinds.norm(mechanism) == "L1":
        return charged * field_count
    return charged * _ceil_sqrt(field_count)


def ratio(release: accounting.Release) -> Fraction:
    """Sensitivity over scale: what every guarantee of one release is monotone in."""
    return Fraction(release.sensitivity) / Fraction(release.scale)


# -- partition selection ----------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _threshold_delta(
    mechanism: kinds.Mechanism, scale: float, partitions: int, cap: int
) -> Callable[[int], float]:
    """A function threshold -> OpenDP's delta of releasing a key absent from a neighbour."""
    integer = kinds.is_discrete(mechanism)
    gaussian = kinds.is_gaussian(mechanism)
    value_type = "i64" if integer else "f64"
    value_domain = dp.atom_domain(T=value_type) if integer else dp.atom_domain(T="f64", nan=False)
    domain = dp.map_domain(dp.atom_domain(T=str), value_domain)
    if gaussian:
        metric = dp.l02inf_distance(dp.absolute_distance(T=value_type))
        make = dp.m.make_gaussian_threshold
        norm_distance: float | int = math.ceil(math.sqrt(partitions) * cap)
    else:
        metric = dp.l01inf_distance(dp.absolute_distance(T=value_type))
        make = dp.m.make_laplace_threshold
        norm_distance = partitions * cap
    distance: tuple[int, float | int, float | int]
    if integer:
        distance = (partitions, int(norm_distance), cap)
    else:
        distance = (partitions, float(norm_distance), float(cap))
    granularity = None if integer else mechanisms.LATTICE_EXPONENT

    def delta_at(threshold: int) -> float:
        bound: float | int = threshold if integer else float(threshold)
        measurement: Any = make(domain, metric, scale=scale, threshold=bound, k=granularity)
        return float(measurement.map(distance)[1])

    return delta_at


@functools.lru_cache(maxsize=256)
def selection_threshold(
    mechanism: kinds.Mechanism, *, scale: float, partitions: int, cap: int, delta: Decimal
) -> int:
    """The smallest integer threshold whose selection delta is at most ``delta``.

    ``partitions`` is ``maxPartitionsContributed`` (L0), ``cap`` the largest count a key can
    hold when only one individual's rows fall under it (L-infinity, rounded up).
    """
    if delta <= 0:
        raise RouteError("PartitionSelectionNeedsDelta", "partition selection needs delta > 0")
    target = float(delta)
    if Decimal(target) > delta:  # never round the target up
        target = math.nextafter(target, 0.0)
    try:
        delta_at = _threshold_delta(mechanism, scale, partitions, cap)
        low, high = cap, max(cap, 1)
        while delta_at(high) > target:
            low, high = high, high * 2
            if high > _LARGEST_THRESHOLD:
                raise RouteError(
                    "SelectionDeltaUnreachable",
                    f"No threshold reaches a selection delta of {amounts.display(delta)} with "
                    f"{mechanism} noise of scale {scale:.6g}: raise the route's delta "
                    "(e.g. 1e-9)",
                )
        while low < high:  # invariant: delta_at(high) <= target
            middle = (low + high) // 2
            if delta_at(middle) <= target:
                high = middle
            else:
                low = middle + 1
        return high
    except (OpenDPException, TypeError, ValueError, OverflowError) as error:
        if isinstance(error, RouteError):
            raise
        raise RouteError(
            "SelectionThresholdFailed", f"OpenDP could not set the threshold: {error}"
        ) from error


def threshold_delta(route: dppolicy.Route) -> Decimal:
    """The part of the route's delta that its partition selections spend (0 without one)."""
    if not any(domain.partition_selection is not None for domain in route.domains):
        return Decimal(0)
    delta = amounts.exact(route.delta)
    if kinds.is_gaussian(kinds.parse(route.mechanism)):
        return _DOWN.divide(delta, 2)
    return delta


# -- the plan ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class FieldPlan:
    """How one field of every answer is noised."""

    field: dppolicy.Field
    domains: tuple[dppolicy.Domain, ...]  # one per wildcard of the path, outermost first
    length: int  # values released at most (``field_lengths``)
    sensitivity_length: int  # values one individual can move
    plan: mechanisms.Plan  # the sampler, and the field's release at the route's (eps, delta)
    count_index: int | None = None  # for a mean: its count field's index


@dataclasses.dataclass(frozen=True, kw_only=True)
class Selection:
    """Partition selection of one domain: keys whose noisy count reaches ``threshold``."""

    domain: dppolicy.Domain
    field_index: int  # the count or histogram field whose noisy values select
    threshold: int
    delta: Decimal  # what this selection spends of the route's delta

    @property
    def max_keys(self) -> int:
        selection = self.domain.partition_selection
        return selection.max_keys if selection is not None else 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class RoutePlan:
    """Everything one release of the route needs, fixed by the policy: noise and the charge."""

    route: dppolicy.Route
    mechanism: kinds.Mechanism
    fields: tuple[FieldPlan, ...]
    selections: tuple[Selection, ...]
    charge: accounting.Release

    @property
    def integer(self) -> bool:
        return kinds.is_discrete(self.mechanism)

    def selection_for(self, domain_path: str) -> Selection | None:
        for selection in self.selections:
            if selection.domain.path == domain_path:
                return selection
        return None


def route_plan(route: dppolicy.Route, *, planner: Planner = mechanisms.plan) -> RoutePlan:
    """Calibrate every field of ``route`` and derive the one charge; ``RouteError`` if unsound."""
    check_route(route)
    mechanism = kinds.parse(route.mechanism)
    epsilon = amounts.exact(route.epsilon)
    delta = amounts.exact(route.delta)
    spent_on_selection = threshold_delta(route)
    noise_delta = delta - spent_on_selection
    lengths = field_lengths(route)
    reaches = sensitivity_lengths(route)
    field_count = len(route.fields)
    plans: list[FieldPlan] = []
    charge: accounting.Release | None = None
    for field, length, reach in zip(route.fields, lengths, reaches, strict=True):
        # Lattice slack for every coordinate that can differ, and for every released one.
        slack_length = max(length, reach)
        try:
            calibrated = field_sensitivity_for_route(
                field, mechanism, reach, field_count, slack_length=slack_length
            )
            plan = planner(
                mechanism,
                sensitivity=calibrated,
                epsilon=epsilon,
                delta=noise_delta,
                length=slack_length,
            )
        except (ValueError, mechanisms.SamplerError) as error:
            raise RouteError(
                "NoiseUnavailable", f"Could not plan the noise of field {field.path}: {error}"
            ) from error
        if charge is None or ratio(plan.release) > ratio(charge):
            charge = plan.release
        count_index = mean_count_field(route, field) if field.kind == "mean" else None
        plans.append(
            FieldPlan(
                field=field,
                domains=field_domains(route, field.path),
                length=length,
                sensitivity_length=reach,
                plan=plan,
                count_index=count_index,
            )
        )
    if charge is None:  # a route has at least one field (min_length=1)
        raise RouteError("NoFields", f"Route {route.path} declares no fields")
    selected = [domain for domain in route.domains if domain.partition_selection is not None]
    selections: list[Selection] = []
    for domain in selected:
        index = selecting_field(route, domain)
        selection = domain.partition_selection
        if index is None or selection is None:  # check_route refused it
            raise RouteError("SelectionCountMissing", f"Domain {domain.path} has no count")
        share = _DOWN.divide(spent_on_selection, len(selected))  # the shares never add up to more
        cap = math.ceil(value_sensitivity(route.fields[index]))
        threshold = selection_threshold(
            mechanism,
            scale=plans[index].plan.sampler.scale,
            partitions=selection.max_partitions_contributed,
            cap=cap,
            delta=share,
        )
        selections.append(
            Selection(domain=domain, field_index=index, threshold=threshold, delta=share)
        )
    return RoutePlan(
        route=route,
        mechanism=mechanism,
        fields=tuple(plans),
        selections=tuple(selections),
        # The route's whole (epsilon, delta): the noise's and the selections' share.
        charge=dataclasses.replace(charge, delta=delta),
    )


@functools.lru_cache(maxsize=512)
def _charge_of(route_json: str) -> accounting.Release:
    return route_plan(dppolicy.Route.model_validate_json(route_json)).charge


def route_charge(route: dppolicy.Route) -> accounting.Release:
    """What one release of ``route`` costs: the release the accountant records and charges.

    A function of the policy only (cached by the route's canonical JSON); ``RouteError``
    when the route cannot be released.
    """
    return _charge_of(route.model_dump_json(by_alias=True))
