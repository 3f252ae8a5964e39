"""One route release, as pure functions: the released document, *built* from the policy.

The application's answer is input, never output (release-contract.md; docs/design/0018).
``release_document`` reads, for every declared field, the value at each concrete location its
domains declare, cleans it (imputes what is missing or unusable, clamps, rounds for the
discrete kinds), noises each field's vector with the plan's sampler, selects the keys of open
key sets by their noisy counts, post-processes and suppresses small cohorts, and writes a
*new* document holding the declared constants and those values, nothing else. ``render``
encodes it; ``failure_body`` is the one generic answer of a whole-answer failure.

What leaves, exactly:
- the constants, at their paths;
- every field at every location its domains declare: fixed keys in declared order, elements
  ``0..length-1``, keyed arrays ``[{keyField: key, member: value, ...}, ...]`` in declared key
  order; for partition selection, only keys (from the answer) whose noisy count reaches the
  plan's threshold, at most ``maxKeys`` (the largest noisy counts), in key order. A key the
  policy does not declare is dropped; a declared key the answer lacks is a noisy imputed value;
- nothing else: no upstream key, string, number, array length or annotation.

Per-value cleaning (``clean_value``; the client cannot tell an imputed value from a real one):
not a number (missing, a string, a bool, null, an object), NaN or infinite -> ``impute``
(default 0 for count, histogram and sum, ``bounds.lower`` for mean); counts and histogram bins
below 0 -> 0; every value clamped to +-``LARGEST_VALUE`` (2**53, where floats stop being exact
integers) and a mean to its bounds; the discrete kinds round to an integer. Clamping is
1-Lipschitz, so it never raises a sensitivity; imputation replaces only what an honest
application never produces. A mean is noised as its reconstructed sum
``clamp(mean, bounds) * count`` (docs/design/0010), the count being the cleaned value of its
count field at the same location, and released as ``clamp(noisy sum / max(noisy count, 1),
bounds)``.

Suppression is post-processing of noisy values: a ``count`` or ``histogram`` value whose
post-processed noisy value is below ``min_cohort`` becomes null, and so does every value of
the route's *other* fields in the same JSON object (the sum of a suppressed group) and every
mean that divides by it. ``Released.suppressed`` counts the nulls for the ``X-DP-Suppressed``
header; the body carries no annotation (its paths are the policy's).

The cost (sensitivities, weights, thresholds, the one charge) is ``hush.privacy.route_cost``'s,
fixed by the policy before the answer is read. Randomness only through the plan's samplers.
``release_document`` never raises because of the answer (any JSON value: wrong types, extra
keys, NaN, huge numbers, deep nesting); only a failing sampler raises (``NoiseError``), and
the caller then sends ``failure_body`` (charged, like every outcome after the upstream call).

What this module does not do: talk to anyone (``proxy``), cache (``cache``), or clamp the
rows behind a ``sum`` or ``mean`` (only the application sees rows; the bounds are its
contract, and its floating-point sum or mean is taken as exact).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Iterator
from typing import Any

from hush.api import dppolicy
from hush.api import jsonpath as paths
from hush.privacy import mechanisms, route_cost

# Where floats stop being exact integers; every cleaned value lies within +-2**53.
LARGEST_VALUE = 2**53
# Longer keys of an open key set are dropped (before selection: a per-key rule).
LARGEST_KEY = dppolicy.DOMAIN_KEY_MAX_LENGTH

_FAILURE_BODY = json.dumps(
    {
        "error": "release-failed",
        "message": "The answer could not be released. This outcome was charged like a release "
        "and says nothing about the data; retrying within the cache TTL returns it again.",
    },
    separators=(",", ":"),
).encode()


class NoiseError(RuntimeError):
    """The noise library failed (never because of the answer); send ``failure_body``."""


@dataclasses.dataclass(frozen=True)
class Released:
    """The document to send and how many values in it were suppressed (nulled)."""

    document: dict[str, Any]
    suppressed: int


Cell = tuple[str | int, ...]  # one key (or index) per wildcard of a field path
_MISSING = object()


# -- reading the answer ----------------------------------------------------------------------


class _Reader:
    """Looks values up in the parsed answer by policy path and cell; never raises."""

    def __init__(self, upstream: Any) -> None:
        self._upstream = upstream
        self._keyed: dict[tuple[int, str], dict[str, Any]] = {}

    def _element(self, array: list[Any], key_field: str, key: str) -> Any:
        """The first element of ``array`` whose ``key_field`` member is ``key``."""
        index = self._keyed.get((id(array), key_field))
        if index is None:
            index = {}
            for element in array:
                if isinstance(element, dict):
                    name = element.get(key_field)
                    if isinstance(name, str) and name not in index:
                        index[name] = element
            self._keyed[(id(array), key_field)] = index
        return index.get(key, _MISSING)

    def container(self, steps: tuple[paths.Step, ...]) -> Any:
        """The value at a path of keys only (a partition-selection domain's parent)."""
        node = self._upstream
        for step in steps:
            if step.kind != "key" or not isinstance(node, dict):
                return _MISSING
            node = node.get(step.key, _MISSING)
        return node

    def value(
        self,
        steps: tuple[paths.Step, ...],
        domains: tuple[dppolicy.Domain, ...],
        cell: Cell,
    ) -> Any:
        node = self._upstream
        wildcard = 0
        for step in steps:
            if node is _MISSING:
                return _MISSING
            if step.kind == "key":
                node = node.get(step.key, _MISSING) if isinstance(node, dict) else _MISSING
                continue
            domain, key = domains[wildcard], cell[wildcard]
            wildcard += 1
            if step.kind == "values":
                node = node.get(key, _MISSING) if isinstance(node, dict) else _MISSING
            elif not isinstance(node, list):
                node = _MISSING
            elif domain.key_field is not None:
                node = self._element(node, domain.key_field, str(key))
            else:
                position = int(key)
                node = node[position] if position < len(node) else _MISSING
        return node


def _candidate_keys(reader: _Reader, domain: dppolicy.Domain) -> list[str]:
    """The keys the answer offers for an open key set, in key order (the noise is per key)."""
    steps = paths.parse(domain.path)
    parent = reader.container(steps[:-1])
    found: set[str] = set()
    if isinstance(parent, dict) and steps[-1].kind == "values":
        found = {key for key in parent if isinstance(key, str)}
    elif isinstance(parent, list) and domain.key_field is not None:
        for element in parent:
            if isinstance(element, dict):
                name = element.get(domain.key_field)
                if isinstance(name, str):
                    found.add(name)
    return sorted(key for key in found if len(key) <= LARGEST_KEY)


def _cells(
    domains: tuple[dppolicy.Domain, ...], candidates: dict[str, list[str]]
) -> Iterator[Cell]:
    """Every cell the domains declare (a selected level: every candidate key), in order."""
    levels: list[list[str | int]] = []
    for domain in domains:
        if domain.keys is not None:
            levels.append(list(domain.keys))
        elif domain.length is not None:
            levels.append(list(range(domain.length)))
        else:
            levels.append(list(candidates.get(domain.path, [])))
    return itertools.product(*levels)


# -- cleaning ----------------------------------------------------------------------------------


def _default(field: dppolicy.Field) -> float:
    if field.impute is not None:
        return field.impute
    if field.kind == "mean" and field.bounds is not None:
        return field.bounds.lower
    return 0.0


def _number(raw: Any) -> int | float | None:
    """``raw`` if it is a usable number (not a bool, finite), else None."""
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return None
    if isinstance(raw, float) and not math.isfinite(raw):
        return None
    return raw


def _clamp(value: int | float, lower: float, upper: float) -> int | float:
    # Compared exactly (a huge int against a float is exact in Python), then narrowed.
    if value < lower:
        return lower
    if value > upper:
        return upper
    return value


def clean_value(raw: Any, field: dppolicy.Field, *, integer: bool) -> int | float:
    """The value noised for ``raw``: imputed if unusable, clamped, rounded for discrete kinds.

    For a mean: the clamped mean itself (its sum is reconstructed with the count).
    """
    value = _number(raw)
    if value is None:
        value = _default(field)
    if field.kind == "mean" and field.bounds is not None:
        value = _clamp(value, field.bounds.lower, field.bounds.upper)
        return float(value)
    lower = 0 if field.kind in ("count", "histogram") else -LARGEST_VALUE
    value = _clamp(value, lower, LARGEST_VALUE)
    if integer:
        return value if isinstance(value, int) else round(value)
    return float(value)


def _reconstructed_sum(mean: float, cohort: int | float, *, integer: bool) -> int | float:
    """``clamp(mean) * count``, clamped like any value; 0 for an empty cohort."""
    if cohort <= 0:
        return 0 if integer else 0.0
    total = mean * float(cohort)
    if not math.isfinite(total):
        total = math.copysign(float(LARGEST_VALUE), total)
    total = float(_clamp(total, -LARGEST_VALUE, LARGEST_VALUE))
    return round(total) if integer else total


# -- the release -----------------------------------------------------------------------------


@dataclasses.dataclass
class _FieldValues:
    """One field's cells and values through the stages of a release."""

    plan: route_cost.FieldPlan
    steps: tuple[paths.Step, ...]
    cells: list[Cell]
    clean: list[int | float]
    noisy: list[int | float] = dataclasses.field(default_factory=list)
    released: dict[Cell, int | float | None] = dataclasses.field(default_factory=dict)


def _sample(plan: route_cost.FieldPlan, values: list[int | float]) -> list[int | float]:
    if not values:
        return []
    try:
        noisy = plan.plan.sampler.release(values)
    except (mechanisms.SamplerError, ValueError, OverflowError, TypeError) as error:
        raise NoiseError(f"The sampler failed for field {plan.field.path}") from error
    if len(noisy) != len(values) or not all(
        isinstance(value, int | float) and math.isfinite(value) for value in noisy
    ):
        raise NoiseError(f"The sampler returned an unusable vector for field {plan.field.path}")
    return list(noisy)


def _selected_keys(selection: route_cost.Selection, counts: _FieldValues) -> set[str]:
    """Keys whose noisy count reaches the threshold; the ``maxKeys`` largest (post-processing)."""
    passing = [
        (noisy, str(cell[0]))
        for cell, noisy in zip(counts.cells, counts.noisy, strict=True)
        if noisy >= selection.threshold
    ]
    passing.sort(key=lambda pair: (-pair[0], pair[1]))
    return {key for _, key in passing[: selection.max_keys]}


def _post_process(value: int | float, post: dppolicy.PostProcess) -> int | float:
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


def release_document(upstream: Any, plan: route_cost.RoutePlan, *, min_cohort: int) -> Released:
    """The released document for ``upstream`` (any parsed JSON) under ``plan``.

    Never raises because of ``upstream``; ``NoiseError`` only when a sampler fails.
    """
    reader = _Reader(upstream)
    integer = plan.integer
    candidates = {
        selection.domain.path: _candidate_keys(reader, selection.domain)
        for selection in plan.selections
    }
    fields: list[_FieldValues] = []
    for item in plan.fields:
        steps = paths.parse(item.field.path)
        cells = list(_cells(item.domains, candidates))
        clean = [
            clean_value(reader.value(steps, item.domains, cell), item.field, integer=integer)
            for cell in cells
        ]
        fields.append(_FieldValues(item, steps, cells, clean))
    # A mean noises its reconstructed sums, from its count field's cleaned values.
    for values in fields:
        count_index = values.plan.count_index
        if count_index is not None:
            cohorts = dict(zip(fields[count_index].cells, fields[count_index].clean, strict=True))
            values.clean = [
                _reconstructed_sum(float(mean), cohorts.get(cell, 0), integer=integer)
                for cell, mean in zip(values.cells, values.clean, strict=True)
            ]
    for values in fields:
        values.noisy = _sample(values.plan, values.clean)
    selected = {
        selection.domain.path: _selected_keys(selection, fields[selection.field_index])
        for selection in plan.selections
    }
    for values in fields:
        _release_values(values, fields, selected)
    suppressed = _suppress(fields, min_cohort)
    return Released(document=_build(plan.route, fields), suppressed=suppressed)


def _keeps(values: _FieldValues, cell: Cell, selected: dict[str, set[str]]) -> bool:
    for domain, key in zip(values.plan.domains, cell, strict=True):
        keys = selected.get(domain.path)
        if keys is not None and key not in keys:
            return False
    return True


def _release_values(
    values: _FieldValues, fields: list[_FieldValues], selected: dict[str, set[str]]
) -> None:
    """The field's post-processed noisy values at its kept cells (a mean: sum over count)."""
    field = values.plan.field
    counts: dict[Cell, int | float] = {}
    if values.plan.count_index is not None:
        count = fields[values.plan.count_index]
        counts = dict(zip(count.cells, count.noisy, strict=True))
    for cell, noisy in zip(values.cells, values.noisy, strict=True):
        if selected and not _keeps(values, cell, selected):
            continue
        value: int | float = noisy
        if values.plan.count_index is not None and field.bounds is not None:
            value = noisy_mean(noisy, counts.get(cell, 0), field.bounds)
        values.released[cell] = _post_process(value, field.post_process)


def _parent(values: _FieldValues, cell: Cell) -> tuple[object, ...]:
    """The concrete JSON object a value sits in (its path without the last step)."""
    concrete: list[object] = []
    wildcard = 0
    for step in values.steps[:-1]:
        if step.kind == "key":
            concrete.append(step.key)
        else:
            concrete.append((step.kind, cell[wildcard]))
            wildcard += 1
    return tuple(concrete)


def _suppress(fields: list[_FieldValues], min_cohort: int) -> int:
    """Null small cohorts, their groups and the means dividing by them; the number nulled."""
    if min_cohort <= 0:
        return 0
    nulled = 0
    small_groups: dict[tuple[object, ...], int] = {}  # parent -> the field index that failed
    for index, values in enumerate(fields):
        if values.plan.field.kind not in ("count", "histogram"):
            continue
        for cell, value in values.released.items():
            if value is not None and value < min_cohort:
                values.released[cell] = None
                nulled += 1
                small_groups.setdefault(_parent(values, cell), index)
    for index, values in enumerate(fields):
        count_index = values.plan.count_index
        for cell, value in values.released.items():
            if value is None:
                continue
            owner = small_groups.get(_parent(values, cell))
            in_small_group = owner is not None and owner != index
            count_nulled = (
                count_index is not None and fields[count_index].released.get(cell, 0) is None
            )
            if in_small_group or count_nulled:
                values.released[cell] = None
                nulled += 1
    return nulled


# -- writing the document ------------------------------------------------------------------


class _Keyed:
    """A keyed array being built: key -> element object, in insertion order."""

    def __init__(self, key_field: str) -> None:
        self.key_field = key_field
        self.elements: dict[str, dict[str, Any]] = {}


class _Indexed:
    """An array of declared length being built: index -> element."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.elements: dict[int, Any] = {}


def _container(step: paths.Step, domain: dppolicy.Domain | None) -> Any:
    """The empty node that ``step`` reads from: an array for ``[*]``, an object otherwise."""
    if step.kind != "items" or domain is None:
        return {}
    if domain.key_field is not None:
        return _Keyed(domain.key_field)
    return _Indexed(domain.length or 0)


def _write(
    root: dict[str, Any],
    steps: tuple[paths.Step, ...],
    domains: tuple[dppolicy.Domain, ...],
    cell: Cell,
    value: Any,
) -> None:
    """Put ``value`` at the concrete location (``steps``, ``cell``), creating its containers."""
    node: Any = root
    wildcard = 0
    for position, step in enumerate(steps):
        last = position == len(steps) - 1
        key: str | int = step.key
        if step.wildcard:
            key = cell[wildcard]
            wildcard += 1
        if isinstance(node, _Keyed):
            # route_cost refuses a field path that ends at a keyed array's element.
            name = str(key)
            node = node.elements.setdefault(name, {node.key_field: name})
            continue
        holder: Any = node.elements if isinstance(node, _Indexed) else node
        slot: str | int = int(key) if isinstance(node, _Indexed) else str(key)
        if last:
            holder[slot] = value
            return
        if slot not in holder:
            next_domain = domains[wildcard] if wildcard < len(domains) else None
            holder[slot] = _container(steps[position + 1], next_domain)
        node = holder[slot]


def _finish(node: Any) -> Any:
    """Builders to plain JSON: objects in insertion order, arrays in declared order."""
    if isinstance(node, _Keyed):
        return [_finish(element) for element in node.elements.values()]
    if isinstance(node, _Indexed):
        return [_finish(node.elements.get(index)) for index in range(node.length)]
    if isinstance(node, dict):
        return {key: _finish(child) for key, child in node.items()}
    return node


def _build(route: dppolicy.Route, fields: list[_FieldValues]) -> dict[str, Any]:
    """The document: the constants, then every field's released values, nothing else."""
    root: dict[str, Any] = {}
    for constant in route.constants:
        _write(root, paths.parse(constant.path), (), (), constant.value)
    for values in fields:
        domains = values.plan.domains
        first_wildcard = next(
            (index for index, step in enumerate(values.steps) if step.wildcard), None
        )
        if first_wildcard is not None:  # an empty selection still has its container
            _touch(root, values.steps, domains, first_wildcard)
        for cell, value in values.released.items():
            _write(root, values.steps, domains, cell, value)
    finished = _finish(root)
    return finished if isinstance(finished, dict) else {}


def _touch(
    root: dict[str, Any],
    steps: tuple[paths.Step, ...],
    domains: tuple[dppolicy.Domain, ...],
    first_wildcard: int,
) -> None:
    """Create the container the first wildcard of a path reads (``$.regions`` of ``.*``)."""
    node: Any = root
    for step in steps[: first_wildcard - 1]:
        node = node.setdefault(step.key, {}) if isinstance(node, dict) else node
    if first_wildcard == 0 or not isinstance(node, dict):
        return
    name = steps[first_wildcard - 1].key
    if name not in node:
        node[name] = _container(steps[first_wildcard], domains[0] if domains else None)


def render(released: Released) -> bytes:
    """The answer's body: compact JSON, keys in the policy's order; never NaN or Infinity."""
    try:
        return json.dumps(released.document, separators=(",", ":"), allow_nan=False).encode()
    except ValueError as error:  # a non-finite value cannot come from the samplers
        raise NoiseError("The released document is not valid JSON") from error


def failure_body() -> bytes:
    """The one body of every whole-answer failure: constant, carries nothing from upstream."""
    return _FAILURE_BODY
