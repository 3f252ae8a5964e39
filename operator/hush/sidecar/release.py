"""One route release, as pure functions: what to noise, what it costs, the noisy answer.

``prepare`` selects every covered value of a parsed answer, checks it is a number, and plans
the noise of each field; ``Prepared.charge`` is the one ``accounting.Release`` the accountant
is asked to reserve for the whole answer. ``apply`` then noises (randomness only through the
planned samplers), post-processes and suppresses small cohorts, in place.

Sensitivity of a field's vector of ``n`` selected values (``vector_sensitivity``), from the
per-value sensitivity ``D`` (the larger of ``hush.privacy.sensitivity.derived`` and an
explicit ``sensitivity``):

- ``histogram``: the bins are disjoint, so one individual's ``c`` rows move the vector by at
  most ``D = c`` in L1 and, all in one bin at worst, at most ``c`` in L2: ``D`` in both norms
  (parallel composition: the whole histogram is one release).
- ``count`` and ``sum``: nothing says the selected values are disjoint (``$.regions[*].count``
  may count overlapping groups), so one individual may move all ``n``: ``n * D`` in L1,
  ``sqrt(n) * D`` in L2 (rounded up).
- ``mean`` (docs/design/0010-sidecar-means-and-quantiles.md): the field names its cohort
  count (``countPath``), which must be a ``count`` field of the same route. The sidecar
  reconstructs each sum as ``clamp(mean, bounds) * count`` and noises that vector like a
  ``sum`` (per value ``D = max(|lower|, |upper|) * c``, plus 1 for the discrete kinds, which
  round the reconstructed sum to an integer); the released mean is
  ``clamp(noisy sum / max(noisy count, 1), bounds)``, post-processing of two noisy vectors
  of the same release. A count that is suppressed nulls its mean.
- ``quantile`` is refused (``UnsupportedFieldError``, 501): a DP quantile needs the data,
  which the answer does not carry; the operator reports such a policy not Ready.

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

With one field ``w = 1``: the field's plan is charged unchanged. The weights are fixed by the
policy (the number of fields), never by the answer, so the split itself reveals nothing.

``render`` turns the released document into the answer's bytes; the proxy runs ``apply``
and ``render`` together under the route's release deadline (``hush.sidecar.deadline``).

What this module does not do: talk to anyone (``proxy``), cache (``cache``), or clamp the
rows behind a ``sum`` or ``mean`` (only the application sees rows; the bounds are its
contract, and its floating-point sum or mean is taken as exact).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from typing import Any

from hush.api import dppolicy
from hush.privacy import accounting, amounts, kinds, mechanisms, sensitivity
from hush.reconcile import dppolicy as policy_reconcile
from hush.sidecar import jsonpath

Planner = Callable[..., mechanisms.Plan]
"""``mechanisms.plan``'s signature: (mechanism, *, sensitivity, epsilon, delta, length)."""


class ReleaseError(Exception):
    """The answer cannot be released; ``reason`` is a stable code, the message has no values."""

    reason = "release-failed"
    status = 502


class FieldValueError(ReleaseError):
    reason = "covered-field-invalid"


class MissingFieldError(ReleaseError):
    reason = "covered-field-missing"


class UnsupportedFieldError(ReleaseError):
    reason = "field-kind-unsupported"
    status = 501


class NoiseError(ReleaseError):
    reason = "noise-failed"
    status = 500


@dataclasses.dataclass(frozen=True)
class PreparedField:
    field: dppolicy.Field
    locations: tuple[jsonpath.Location, ...]
    values: tuple[float | int, ...]  # what is noised: for a mean, the reconstructed sums
    plan: mechanisms.Plan | None  # None when the path selected nothing
    count_index: int | None = None  # for a mean: its count field's index in ``fields``


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A parsed answer whose covered values are located and whose noise is planned."""

    document: Any
    route: dppolicy.Route
    fields: tuple[PreparedField, ...]
    charge: accounting.Release | None  # None when no covered value was selected


@dataclasses.dataclass(frozen=True)
class Released:
    document: Any
    suppressed: tuple[str, ...]  # concrete JSON paths set to null


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


def _refuse_quantile(field: dppolicy.Field) -> None:
    if field.kind == "quantile":
        raise UnsupportedFieldError(
            f"Field {field.path} is a quantile: the sidecar sees only the aggregate answer, "
            "and a differentially private quantile needs the data; publish a histogram over "
            "fixed bins instead"
        )


def vector_sensitivity(field: dppolicy.Field, mechanism: kinds.Mechanism, length: int) -> Decimal:
    """The sensitivity (in the mechanism's norm) of the ``length`` values a field noises.

    For a ``mean`` those are the reconstructed sums; the discrete kinds round each to an
    integer, which can move two neighbouring sums apart by 1 more.
    """
    _refuse_quantile(field)
    per_value = value_sensitivity(field)
    if field.kind == "mean" and kinds.is_discrete(mechanism):
        per_value += 1
    if field.kind == "histogram" or length <= 1:
        return per_value
    if kinds.norm(mechanism) == "L1":
        return per_value * length
    return per_value * _ceil_sqrt(length)


def field_sensitivity_for_route(
    field: dppolicy.Field, mechanism: kinds.Mechanism, length: int, field_count: int
) -> Decimal:
    """``S'``: the sensitivity to calibrate at the route's full (epsilon, delta)."""
    base = vector_sensitivity(field, mechanism, length)
    if field_count == 1:
        return base
    charged = mechanisms.charged_sensitivity(mechanism, base, length=length)
    if kinds.norm(mechanism) == "L1":
        return charged * field_count
    return charged * _ceil_sqrt(field_count)


def _number(location: jsonpath.Location, *, integer: bool) -> float | int:
    value = location.get()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FieldValueError(f"Covered value {location.path} is not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise FieldValueError(f"Covered value {location.path} is not finite")
    if integer:
        if isinstance(value, float):
            if not value.is_integer():
                raise FieldValueError(
                    f"Covered value {location.path} is not an integer, which a discrete "
                    "mechanism needs"
                )
            return int(value)
        return value
    return value


def _reconstructed_sums(
    item: dppolicy.Field,
    locations: tuple[jsonpath.Location, ...],
    count: PreparedField,
    *,
    integer: bool,
) -> tuple[float | int, ...]:
    """``clamp(mean, bounds) * count`` for each (mean, count) pair, in selection order.

    A mean may be null (or anything) only where its count is 0: its sum is then 0.
    """
    if item.bounds is None:  # check_route refused it already
        raise UnsupportedFieldError(f"Mean field {item.path} has no bounds")
    if len(locations) != len(count.locations):
        raise FieldValueError(
            f"Mean field {item.path} selects {len(locations)} values but its countPath "
            f"{item.count_path} selects {len(count.locations)}; they are paired in order"
        )
    lower, upper = item.bounds.lower, item.bounds.upper
    sums: list[float | int] = []
    for location, count_location, cohort in zip(
        locations, count.locations, count.values, strict=True
    ):
        if cohort < 0:
            raise FieldValueError(f"Count {count_location.path} of a mean is negative")
        if cohort == 0:
            sums.append(0)
            continue
        mean = float(_number(location, integer=False))
        reconstructed = min(max(mean, lower), upper) * cohort
        if not math.isfinite(reconstructed):
            raise FieldValueError(f"Mean {location.path} times its count is not finite")
        sums.append(round(reconstructed) if integer else reconstructed)
    return tuple(sums)


def ratio(release: accounting.Release) -> Fraction:
    """Sensitivity over scale: what every guarantee of one release is monotone in."""
    return Fraction(release.sensitivity) / Fraction(release.scale)


def check_route(route: dppolicy.Route) -> None:
    """Refuse (``UnsupportedFieldError``) a route that no answer could be released for.

    A quantile field, or a mean without a count field of the route to divide by: known from
    the policy alone, so the proxy checks it once at start and refuses before asking the
    application.
    """
    for field in route.fields:
        _refuse_quantile(field)
        if field.kind == "mean":
            problem = policy_reconcile.mean_count_problem(route, field)
            if problem is not None:
                raise UnsupportedFieldError(problem)


def prepare(document: Any, route: dppolicy.Route, *, planner: Planner) -> Prepared:
    """Locate and check the covered values, plan their noise and the one charge."""
    mechanism = kinds.parse(route.mechanism)
    integer = kinds.is_discrete(mechanism)
    epsilon = amounts.exact(route.epsilon)
    delta = amounts.exact(route.delta)
    field_count = len(route.fields)
    check_route(route)
    claimed: set[tuple[int, str | int]] = set()
    selected = [_select(document, route, field, claimed) for field in route.fields]
    # Raw values first: a mean's values are rebuilt from its count field's raw values.
    unplanned = [
        PreparedField(
            field, locations, () if field.kind == "mean" else _numbers(locations, integer), None
        )
        for field, locations in zip(route.fields, selected, strict=True)
    ]
    prepared: list[PreparedField] = []
    charge: accounting.Release | None = None
    for item in unplanned:
        count_index = None
        values = item.values
        if item.field.kind == "mean":
            count_index = policy_reconcile.mean_count_field(route, item.field)
            if count_index is None:  # check_route refused it
                raise UnsupportedFieldError(f"Mean field {item.field.path} has no count field")
            values = _reconstructed_sums(
                item.field, item.locations, unplanned[count_index], integer=integer
            )
        plan = None
        if values:
            calibrated = field_sensitivity_for_route(
                item.field, mechanism, len(values), field_count
            )
            try:
                plan = planner(
                    mechanism,
                    sensitivity=calibrated,
                    epsilon=epsilon,
                    delta=delta,
                    length=len(values),
                )
            except (ValueError, mechanisms.SamplerError) as error:
                raise NoiseError(f"Could not plan the noise of field {item.field.path}") from error
            if charge is None or ratio(plan.release) > ratio(charge):
                charge = plan.release
        prepared.append(
            dataclasses.replace(item, values=values, plan=plan, count_index=count_index)
        )
    return Prepared(document=document, route=route, fields=tuple(prepared), charge=charge)


def _select(
    document: Any, route: dppolicy.Route, field: dppolicy.Field, claimed: set[tuple[int, str | int]]
) -> tuple[jsonpath.Location, ...]:
    """The field's locations; a value already claimed by another field refuses the answer."""
    try:
        locations = tuple(jsonpath.select(document, field.path))
    except jsonpath.MissingFieldError as error:
        raise MissingFieldError(str(error)) from error
    for location in locations:
        identity = (id(location.container), location.key)
        if identity in claimed:
            raise UnsupportedFieldError(
                f"Value {location.path} is selected by two fields of route {route.path}"
            )
        claimed.add(identity)
    return locations


def _numbers(locations: tuple[jsonpath.Location, ...], integer: bool) -> tuple[float | int, ...]:
    return tuple(_number(location, integer=integer) for location in locations)


def _post_process(value: float | int, post: dppolicy.PostProcess) -> float | int:
    if post.clamp_non_negative and value < 0:
        value = 0 if isinstance(value, int) else 0.0
    if post.round and isinstance(value, float):
        value = round(value)
    return value


def noisy_mean(noisy_sum: float | int, noisy_count: float | int, bounds: dppolicy.Bounds) -> float:
    """The released mean: noisy sum over noisy count (at least 1), clamped to the bounds.

    Post-processing of two noisy values, so free; clamping helps because the true mean of
    clamped rows always lies within the bounds.
    """
    value = float(noisy_sum) / max(float(noisy_count), 1.0)
    return min(max(value, bounds.lower), bounds.upper)


def apply(prepared: Prepared, *, min_cohort: int) -> Released:
    """Noise, post-process and suppress, in place; returns the answer and what was nulled.

    Suppression is post-processing of noisy values: a ``count`` or ``histogram`` value whose
    noisy value is below ``min_cohort`` becomes null, and so does every value of the route's
    *other* fields that sits in the same JSON object (the sum of a suppressed group), and
    every mean that divides by it.
    """
    noisy = _sample(prepared)
    released = [
        (prepared.fields[index], _released_values(prepared, index, noisy)) for index in noisy
    ]
    suppressed: list[str] = []
    small_groups: dict[int, dppolicy.Field] = {}  # id(JSON object) -> the field it failed
    for item, values in released:
        for location, value in zip(item.locations, values, strict=True):
            result: float | int | None = _post_process(value, item.field.post_process)
            cohort_kind = item.field.kind in ("count", "histogram")
            if cohort_kind and min_cohort > 0 and result is not None and result < min_cohort:
                result = None
                suppressed.append(location.path)
                if isinstance(location.container, dict):
                    small_groups[id(location.container)] = item.field
            location.set(result)
    for item, _ in released:
        for position, location in enumerate(item.locations):
            owner = small_groups.get(id(location.container))
            same_group = owner is not None and owner is not item.field
            if (same_group or _count_suppressed(prepared, item, position)) and (
                location.get() is not None
            ):
                location.set(None)
                suppressed.append(location.path)
    return Released(document=prepared.document, suppressed=tuple(suppressed))


def _sample(prepared: Prepared) -> dict[int, list[float | int]]:
    """The noisy values of every field that selected something, by field index."""
    noisy: dict[int, list[float | int]] = {}
    for index, item in enumerate(prepared.fields):
        if item.plan is None:
            continue
        try:
            values = item.plan.sampler.release(list(item.values))
        except (mechanisms.SamplerError, ValueError, OverflowError) as error:
            raise NoiseError(f"The sampler failed for field {item.field.path}") from error
        if len(values) != len(item.values):
            raise NoiseError(f"The sampler returned the wrong shape for field {item.field.path}")
        noisy[index] = values
    return noisy


def _released_values(
    prepared: Prepared, index: int, noisy: dict[int, list[float | int]]
) -> list[float | int]:
    """A field's noisy values; for a mean, noisy sums divided by its noisy counts."""
    item = prepared.fields[index]
    if item.count_index is None or item.field.bounds is None:
        return noisy[index]
    bounds = item.field.bounds
    return [
        noisy_mean(total, cohort, bounds)
        for total, cohort in zip(noisy[index], noisy[item.count_index], strict=True)
    ]


def _count_suppressed(prepared: Prepared, item: PreparedField, position: int) -> bool:
    """True when ``item`` is a mean whose count at ``position`` was nulled."""
    if item.count_index is None:
        return False
    return prepared.fields[item.count_index].locations[position].get() is None


def render(released: Released, route: dppolicy.Route) -> bytes:
    """The answer's body: the released document, annotated when values were suppressed."""
    document = released.document
    if released.suppressed and isinstance(document, dict) and "_dp" not in document:
        document["_dp"] = {
            "suppressed": list(released.suppressed),
            "reason": f"Fewer than minCohort={route.min_cohort} individuals (noisy count); "
            "the values are null",
        }
    try:
        return json.dumps(document, separators=(",", ":"), allow_nan=False).encode()
    except ValueError as error:  # a non-finite value: never send it
        raise NoiseError(f"The released answer on route {route.path} is not valid JSON") from error
