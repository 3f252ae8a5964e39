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
- ``mean`` and ``quantile`` are refused (``UnsupportedFieldError``): a sound noisy mean needs
  the noisy count too, and a quantile needs the data, neither of which the answer carries.

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

What this module does not do: talk to anyone (``proxy``), cache (``cache``), or clamp the
rows behind a ``sum`` (only the application sees rows; the bounds are its contract).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from typing import Any

from hush.api import dppolicy
from hush.privacy import accounting, amounts, kinds, mechanisms, sensitivity
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
    values: tuple[float | int, ...]
    plan: mechanisms.Plan | None  # None when the path selected nothing


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


def vector_sensitivity(field: dppolicy.Field, mechanism: kinds.Mechanism, length: int) -> Decimal:
    """The sensitivity (in the mechanism's norm) of the ``length`` values a field selects."""
    if field.kind in ("mean", "quantile"):
        raise UnsupportedFieldError(
            f"Field {field.path} is a {field.kind}: the sidecar cannot noise it soundly from "
            "the answer alone; publish a sum and a count instead"
        )
    per_value = value_sensitivity(field)
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


def ratio(release: accounting.Release) -> Fraction:
    """Sensitivity over scale: what every guarantee of one release is monotone in."""
    return Fraction(release.sensitivity) / Fraction(release.scale)


def prepare(document: Any, route: dppolicy.Route, *, planner: Planner) -> Prepared:
    """Locate and check the covered values, plan their noise and the one charge."""
    mechanism = kinds.parse(route.mechanism)
    integer = kinds.is_discrete(mechanism)
    epsilon = amounts.exact(route.epsilon)
    delta = amounts.exact(route.delta)
    field_count = len(route.fields)
    prepared: list[PreparedField] = []
    charge: accounting.Release | None = None
    claimed: set[tuple[int, str | int]] = set()
    for field in route.fields:
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
        values = tuple(_number(location, integer=integer) for location in locations)
        plan = None
        if locations:
            calibrated = field_sensitivity_for_route(field, mechanism, len(values), field_count)
            try:
                plan = planner(
                    mechanism,
                    sensitivity=calibrated,
                    epsilon=epsilon,
                    delta=delta,
                    length=len(values),
                )
            except (ValueError, mechanisms.SamplerError) as error:
                raise NoiseError(f"Could not plan the noise of field {field.path}") from error
            if charge is None or ratio(plan.release) > ratio(charge):
                charge = plan.release
        prepared.append(PreparedField(field, locations, values, plan))
    return Prepared(document=document, route=route, fields=tuple(prepared), charge=charge)


def _post_process(value: float | int, post: dppolicy.PostProcess) -> float | int:
    if post.clamp_non_negative and value < 0:
        value = 0 if isinstance(value, int) else 0.0
    if post.round and isinstance(value, float):
        value = round(value)
    return value


def apply(prepared: Prepared, *, min_cohort: int) -> Released:
    """Noise, post-process and suppress, in place; returns the answer and what was nulled.

    Suppression is post-processing of noisy values: a ``count`` or ``histogram`` value whose
    noisy value is below ``min_cohort`` becomes null, and so does every value of the route's
    *other* fields that sits in the same JSON object (the sum of a suppressed group).
    """
    noisy_fields: list[tuple[PreparedField, list[float | int]]] = []
    for item in prepared.fields:
        if item.plan is None:
            continue
        try:
            noisy = item.plan.sampler.release(list(item.values))
        except (mechanisms.SamplerError, ValueError, OverflowError) as error:
            raise NoiseError(f"The sampler failed for field {item.field.path}") from error
        if len(noisy) != len(item.values):
            raise NoiseError(f"The sampler returned the wrong shape for field {item.field.path}")
        noisy_fields.append((item, noisy))
    suppressed: list[str] = []
    small_groups: set[int] = set()
    small_owner: dict[int, dppolicy.Field] = {}
    for item, noisy in noisy_fields:
        for location, value in zip(item.locations, noisy, strict=True):
            released: float | int | None = _post_process(value, item.field.post_process)
            cohort_kind = item.field.kind in ("count", "histogram")
            if cohort_kind and min_cohort > 0 and released is not None and released < min_cohort:
                released = None
                suppressed.append(location.path)
                if isinstance(location.container, dict):
                    small_groups.add(id(location.container))
                    small_owner[id(location.container)] = item.field
            location.set(released)
    for item, _ in noisy_fields:
        for location in item.locations:
            container = id(location.container)
            if (
                container in small_groups
                and small_owner[container] is not item.field
                and location.get() is not None
            ):
                location.set(None)
                suppressed.append(location.path)
    return Released(document=prepared.document, suppressed=tuple(suppressed))
