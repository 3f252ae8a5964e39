"""Property tests of the pure release core (issue 14's acceptance, the pure part).

For arbitrary upstream JSON (any types, extra keys, NaN/Infinity, huge numbers, deep nesting,
odd shapes) and policies with constants and every kind of domain:

(a) the released document's paths are exactly the policy's declared paths (for partition
    selection: declared-shape paths whose keys are upstream keys, at most ``maxKeys``);
(b) every leaf is a declared constant, a declared key, or a field's value computed from the
    imputed-or-clamped upstream value plus the (fake, recognisable) noise;
(c) ``release_document`` never raises.

The noise is a fixed shift (0.3125 for the real kinds, 7 for the discrete ones) so that each
released number can be recomputed by an independent oracle here.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from typing import Any

import hypothesis
from hypothesis import strategies

from hush.api import dppolicy
from hush.api import jsonpath as paths
from hush.privacy import kinds, mechanisms, route_cost
from hush.sidecar import release

REAL_SHIFT = 0.3125
INTEGER_SHIFT = 7
LARGEST = 2**53


@dataclasses.dataclass
class ShiftSampler:
    shift: float | int
    mechanism: kinds.Mechanism
    scale: float
    integer: bool

    def release(self, values: Sequence[float | int]) -> list[float | int]:
        return [value + self.shift for value in values]


def shifting_planner(mechanism: str, **arguments: Any) -> mechanisms.Plan:
    real = mechanisms.plan(mechanism, **arguments)
    parsed = kinds.parse(mechanism)
    integer = kinds.is_discrete(parsed)
    shift = INTEGER_SHIFT if integer else REAL_SHIFT
    return dataclasses.replace(
        real, sampler=ShiftSampler(shift, parsed, real.sampler.scale, integer)
    )


# -- policies ----------------------------------------------------------------------------------

MECHANISMS = strategies.sampled_from(["laplace", "gaussian", "discreteLaplace", "discreteGaussian"])
KEYS = ["a", "b", "c", "d"]
MEAN_BOUNDS = {"lower": -3, "upper": 9}


@strategies.composite
def routes(draw: strategies.DrawFn) -> dppolicy.Route:
    mechanism = draw(MECHANISMS)
    constants = [
        {"path": f"$.c{i}", "value": f"constant-{i}"}
        for i in range(draw(strategies.integers(0, 2)))
    ]
    fields: list[dict[str, Any]] = []
    domains: list[dict[str, Any]] = []
    if draw(strategies.booleans()):  # top level: a count, a sum, a mean
        fields.append({"path": "$.t.n", "kind": "count"})
        fields.append({"path": "$.t.s", "kind": "sum", "bounds": {"lower": -5, "upper": 5}})
        fields.append(
            {"path": "$.t.m", "kind": "mean", "bounds": MEAN_BOUNDS, "countPath": "$.t.n"}
        )
    if draw(strategies.booleans()):  # a histogram over fixed keys
        keys = draw(strategies.lists(strategies.sampled_from(KEYS), min_size=1, unique=True))
        domains.append({"path": "$.h.*", "keys": keys})
        impute = draw(strategies.sampled_from([None, 2.0, -4.0]))
        fields.append({"path": "$.h.*", "kind": "histogram", "impute": impute})
    if draw(strategies.booleans()):  # an array of fixed length
        domains.append({"path": "$.l[*]", "length": draw(strategies.integers(1, 4))})
        fields.append({"path": "$.l[*]", "kind": "count"})
    if draw(strategies.booleans()):  # a keyed array with a mean and its count
        keys = draw(strategies.lists(strategies.sampled_from(KEYS), min_size=1, unique=True))
        domains.append({"path": "$.k[*]", "keyField": "name", "keys": keys})
        fields.append({"path": "$.k[*].n", "kind": "count"})
        fields.append(
            {"path": "$.k[*].m", "kind": "mean", "bounds": MEAN_BOUNDS, "countPath": "$.k[*].n"}
        )
    selected = draw(strategies.booleans())
    if selected or not fields:  # an open key set
        max_keys = draw(strategies.integers(1, 3))
        domains.append({"path": "$.p.*", "partitionSelection": {"maxKeys": max_keys}})
        fields.append({"path": "$.p.*.n", "kind": "count"})
        fields.append({"path": "$.p.*.s", "kind": "sum", "bounds": {"lower": 0, "upper": 3}})
    needs_delta = kinds.is_gaussian(kinds.parse(mechanism)) or selected or len(fields) == 2
    return dppolicy.Route.model_validate(
        {
            "path": "/q",
            "mechanism": mechanism,
            "epsilon": 1.0,
            "delta": 1e-6 if needs_delta else 0.0,
            "constants": constants,
            "fields": fields,
            "domains": domains,
        }
    )


# -- upstream answers ----------------------------------------------------------------------------

NUMBERS = strategies.one_of(
    strategies.integers(-(10**6), 10**6),
    strategies.integers(-(10**400), 10**400),
    strategies.floats(allow_nan=True, allow_infinity=True),
    strategies.sampled_from([0, 1, 1000, 10**5, 2**53 + 1, -(2**63), 1e308, 5e-324, -0.0]),
)
SCALARS = strategies.one_of(
    strategies.none(),
    strategies.booleans(),
    NUMBERS,
    strategies.text(max_size=12),
    strategies.sampled_from([*KEYS, "name", "n", "s", "m", "x" * 300]),
)
NAMES = strategies.one_of(
    strategies.sampled_from([*KEYS, "t", "h", "l", "k", "p", "n", "s", "m", "c0", "name"]),
    strategies.text(max_size=8),
)
JSON = strategies.recursive(
    SCALARS,
    lambda children: strategies.one_of(
        strategies.lists(children, max_size=5),
        strategies.dictionaries(NAMES, children, max_size=6),
    ),
    max_leaves=40,
)


@strategies.composite
def shaped(draw: strategies.DrawFn) -> Any:
    """An answer close to the policies' shape, with junk mixed in (so that paths do match)."""
    plausible = strategies.integers(0, 10**6) | strategies.floats(-10.0, 10**6)
    value = plausible | plausible | NUMBERS | JSON
    member = strategies.sampled_from(["n", "s", "m", "name", "x"])
    group = strategies.dictionaries(member, value, max_size=4)
    key = strategies.sampled_from([*KEYS, "x" * 300]) | NAMES
    answer: dict[str, Any] = draw(strategies.dictionaries(NAMES, JSON, max_size=3))
    answer["t"] = draw(group | JSON)
    answer["h"] = draw(strategies.dictionaries(key, value, max_size=6) | JSON)
    answer["l"] = draw(strategies.lists(value, max_size=6) | JSON)
    elements = strategies.builds(
        lambda name, n, m, rest: {**rest, "name": name, "n": n, "m": m},
        strategies.sampled_from(KEYS) | SCALARS,
        value,
        value,
        group,
    )
    answer["k"] = draw(strategies.lists(elements, max_size=6) | JSON)
    open_group = strategies.builds(
        lambda n, s: {"n": n, "s": s}, strategies.integers(10**4, 10**7) | value, value
    )
    answer["p"] = draw(strategies.dictionaries(key, open_group, max_size=6) | JSON)
    return answer


def deep(depth: int) -> Any:
    node: Any = 1
    for level in range(depth):
        node = [node] if level % 2 else {"t": node, "p": node}
    return node


# Mostly answers that come close to the declared shape (so that paths match and open key
# sets select), and arbitrary JSON, deep nesting and bare scalars too.
UPSTREAM = strategies.one_of(
    shaped(),
    shaped(),
    shaped(),
    shaped(),
    JSON,
    strategies.integers(50, 3000).map(deep),
    strategies.just(float("nan")),
)


# -- the oracle --------------------------------------------------------------------------------


def _number(raw: Any) -> int | float | None:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return None
    if isinstance(raw, float) and not math.isfinite(raw):
        return None
    return raw


def clean(raw: Any, field: dppolicy.Field, integer: bool) -> int | float:
    """The documented cleaning: impute, clamp, round (for discrete kinds)."""
    value = _number(raw)
    if value is None:
        if field.impute is not None:
            value = field.impute
        elif field.kind == "mean" and field.bounds is not None:
            value = field.bounds.lower
        else:
            value = 0
    if field.kind == "mean" and field.bounds is not None:
        return float(min(max(value, field.bounds.lower), field.bounds.upper))
    lower = 0 if field.kind in ("count", "histogram") else -LARGEST
    value = min(max(value, lower), LARGEST)
    return round(value) if integer else float(value)


def lookup(upstream: Any, concrete: list[tuple[str, Any]]) -> Any:
    """The upstream value at a concrete location: ("key", k), ("index", i), ("named", f, k)."""
    node = upstream
    for step in concrete:
        if step[0] == "key":
            if not isinstance(node, dict) or step[1] not in node:
                return None
            node = node[step[1]]
        elif step[0] == "index":
            if not isinstance(node, list) or step[1] >= len(node):
                return None
            node = node[step[1]]
        else:
            _, key_field, key = step
            if not isinstance(node, list):
                return None
            matches = [e for e in node if isinstance(e, dict) and e.get(key_field) == key]
            if not matches:
                return None
            node = matches[0]
    return node


@dataclasses.dataclass(frozen=True)
class Expected:
    """A declared leaf: its location in the answer and in the released document."""

    field: dppolicy.Field
    upstream: tuple[tuple[Any, ...], ...]
    released: tuple[str | int, ...]


def declared(
    the_route: dppolicy.Route, selected_keys: dict[str, list[str]]
) -> dict[tuple[str | int, ...], Expected]:
    """Every field leaf the policy declares, by its path in the released document."""
    found: dict[tuple[str | int, ...], Expected] = {}
    domains = {domain.path: domain for domain in the_route.domains}
    for field in the_route.fields:
        locations: list[tuple[list[tuple[Any, ...]], list[str | int]]] = [([], [])]
        steps = paths.parse(field.path)
        for index, step in enumerate(steps):
            prefix = paths.render(steps[: index + 1])
            grown: list[tuple[list[tuple[Any, ...]], list[str | int]]] = []
            for upstream, out in locations:
                if step.kind == "key":
                    grown.append(([*upstream, ("key", step.key)], [*out, step.key]))
                    continue
                domain = domains[prefix]
                if domain.partition_selection is not None:
                    keys: list[str | int] = list(selected_keys.get(prefix, []))
                elif domain.keys is not None:
                    keys = list(domain.keys)
                else:
                    keys = list(range(domain.length or 0))
                for position, key in enumerate(keys):
                    if step.kind == "values":
                        grown.append(([*upstream, ("key", key)], [*out, key]))
                    elif domain.key_field is not None:
                        grown.append(
                            ([*upstream, ("named", domain.key_field, key)], [*out, position])
                        )
                    else:
                        grown.append(([*upstream, ("index", key)], [*out, position]))
            locations = grown
        for upstream, out in locations:
            found[tuple(out)] = Expected(field, tuple(upstream), tuple(out))
    return found


def leaves(node: Any, here: tuple[str | int, ...] = ()) -> dict[tuple[str | int, ...], Any]:
    if isinstance(node, dict):
        found: dict[tuple[str | int, ...], Any] = {}
        for key, child in node.items():
            found.update(leaves(child, (*here, key)))
        return found
    if isinstance(node, list):
        found = {}
        for index, child in enumerate(node):
            found.update(leaves(child, (*here, index)))
        return found
    return {here: node}


# -- the properties ---------------------------------------------------------------------------


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(the_route=routes(), upstream=UPSTREAM)
def test_the_release_is_the_policys_document_and_nothing_else(
    the_route: dppolicy.Route, upstream: Any
) -> None:
    plan = route_cost.route_plan(the_route, planner=shifting_planner)
    result = release.release_document(upstream, plan, min_cohort=0)  # (c): never raises
    body = release.render(result)
    assert json.loads(body) == result.document
    assert result.suppressed == 0
    integer = plan.integer
    shift = INTEGER_SHIFT if integer else REAL_SHIFT
    document = result.document

    # Which keys the open key set released: upstream keys only, at most maxKeys, and exactly
    # those whose noisy count reaches the threshold (the largest ones when there are more).
    selected_keys: dict[str, list[str]] = {}
    for selection in plan.selections:
        released_keys = list(document.get("p", {}))
        offered = upstream.get("p") if isinstance(upstream, dict) else None
        offered_keys = (
            [key for key in offered if len(key) <= release.LARGEST_KEY]
            if isinstance(offered, dict)
            else []
        )
        assert set(released_keys) <= set(offered_keys)
        assert len(released_keys) <= selection.max_keys
        assert released_keys == sorted(released_keys)
        count_field = the_route.fields[selection.field_index]
        passing = sorted(
            (
                -(
                    clean(
                        lookup(upstream, [("key", "p"), ("key", k), ("key", "n")]),
                        count_field,
                        integer,
                    )
                    + shift
                ),
                k,
            )
            for k in offered_keys
            if clean(
                lookup(upstream, [("key", "p"), ("key", k), ("key", "n")]), count_field, integer
            )
            + shift
            >= selection.threshold
        )
        assert set(released_keys) == {key for _, key in passing[: selection.max_keys]}
        selected_keys[selection.domain.path] = released_keys

    expected = declared(the_route, selected_keys)
    constants = {
        (constant.path.removeprefix("$.")): constant.value for constant in the_route.constants
    }
    found = leaves(document)
    # A keyed array's elements carry their key: ("k", position, "name") -> the declared key.
    key_fields: dict[tuple[str | int, ...], str] = {}
    for domain in the_route.domains:
        if domain.key_field is not None and domain.keys is not None:
            for position, key in enumerate(domain.keys):
                key_fields[("k", position, domain.key_field)] = key

    # (a) exactly the declared paths: constants, key fields of keyed arrays, field values.
    assert set(found) == set(expected) | {(name,) for name in constants} | set(key_fields)
    # ... and an empty open key set is still its (empty) container.
    if plan.selections:
        assert isinstance(document.get("p"), dict)

    # (b) every leaf is a constant, a declared key, or f(cleaned upstream) + noise.
    for path, value in found.items():
        if path in key_fields:
            assert value == key_fields[path]
            continue
        if len(path) == 1 and path[0] in constants:
            assert value == constants[path[0]]
            continue
        item = expected[path]
        raw = lookup(upstream, list(item.upstream))
        if item.field.kind != "mean":
            assert value == clean(raw, item.field, integer) + shift, (path, raw)
            continue
        count_path = item.field.count_path or ""
        count_field = next(f for f in the_route.fields if f.path == count_path)
        count_location = [*item.upstream[:-1], ("key", paths.parse(count_path)[-1].key)]
        cohort = clean(lookup(upstream, count_location), count_field, integer)
        mean = clean(raw, item.field, integer)
        total: float = 0.0
        if cohort > 0:
            total = min(max(mean * float(cohort), -LARGEST), LARGEST)
            total = round(total) if integer else total
        bounds = item.field.bounds
        assert bounds is not None
        noisy = (total + shift) / max(float(cohort + shift), 1.0)
        assert value == min(max(noisy, bounds.lower), bounds.upper), (path, raw)


@hypothesis.settings(max_examples=150, deadline=None)
@hypothesis.given(the_route=routes(), upstream=UPSTREAM, min_cohort=strategies.integers(1, 10**6))
def test_suppression_only_nulls_declared_values(
    the_route: dppolicy.Route, upstream: Any, min_cohort: int
) -> None:
    plan = route_cost.route_plan(the_route, planner=shifting_planner)
    unsuppressed = leaves(release.release_document(upstream, plan, min_cohort=0).document)
    result = release.release_document(upstream, plan, min_cohort=min_cohort)
    found = leaves(result.document)
    assert set(found) == set(unsuppressed)  # the same paths, some values nulled
    nulled = [path for path, value in found.items() if value is None]
    assert len(nulled) == result.suppressed
    for path, value in found.items():
        assert value is None or value == unsuppressed[path]
    assert "_dp" not in result.document
