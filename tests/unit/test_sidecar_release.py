"""The sidecar's pure core: JSON paths, sensitivities, one charge per route, suppression,
the cache and the baked configuration."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Sequence
from decimal import Decimal
from fractions import Fraction
from typing import Any

import hypothesis
import pytest
from hypothesis import strategies

from hush.api import dppolicy
from hush.privacy import accounting, kinds, mechanisms
from hush.reconcile import dppolicy as policy_reconcile
from hush.sidecar import cache, config, jsonpath, release


@dataclasses.dataclass
class ShiftSampler:
    """Deterministic stand-in for a noise sampler: adds ``shift``."""

    shift: float | int
    mechanism: kinds.Mechanism = "laplace"
    scale: float = 1.0
    integer: bool = False

    def release(self, values: Sequence[float | int]) -> list[float | int]:
        return [value + self.shift for value in values]


def shifting_planner(shift: float | int) -> release.Planner:
    def planner(mechanism: str, **arguments: Any) -> mechanisms.Plan:
        real = mechanisms.plan(mechanism, **arguments)
        return dataclasses.replace(
            real,
            sampler=ShiftSampler(shift, integer=kinds.is_discrete(kinds.parse(mechanism))),
        )

    return planner


def route(**overrides: Any) -> dppolicy.Route:
    raw: dict[str, Any] = {
        "path": "/stats",
        "mechanism": "laplace",
        "epsilon": 0.5,
        "fields": [{"path": "$.count", "kind": "count"}],
    }
    raw.update(overrides)
    return dppolicy.Route.model_validate(raw)


# -- JSON paths ------------------------------------------------------------------------------


def test_paths_select_keys_array_items_and_map_values() -> None:
    document = {"regions": [{"n": 1}, {"n": 2}], "histogram": {"a": 3, "b": 4}, "total": 5}
    assert [loc.path for loc in jsonpath.select(document, "$.regions[*].n")] == [
        "$.regions[0].n",
        "$.regions[1].n",
    ]
    assert [loc.get() for loc in jsonpath.select(document, "$.histogram.*")] == [3, 4]
    assert [loc.get() for loc in jsonpath.select(document, "$.total")] == [5]
    assert jsonpath.select({"regions": []}, "$.regions[*].n") == []


@pytest.mark.parametrize(
    ("document", "path"),
    [
        ({}, "$.count"),
        ({"regions": {"a": 1}}, "$.regions[*]"),
        ({"histogram": [1]}, "$.histogram.*"),
        ({"a": 1}, "$.a.b"),
        ([1], "$.a"),
    ],
)
def test_a_missing_field_or_wrong_shape_fails(document: Any, path: str) -> None:
    with pytest.raises(jsonpath.MissingFieldError):
        jsonpath.select(document, path)


@pytest.mark.parametrize("path", ["count", "$..a", "$.a[0]", "$['a']", "$.a[?(@.x)]"])
def test_paths_outside_the_subset_are_refused(path: str) -> None:
    with pytest.raises(ValueError, match="JSON path"):
        jsonpath.parse(path)


# -- sensitivity of a field's vector -----------------------------------------------------


def _field(**raw: Any) -> dppolicy.Field:
    return dppolicy.Field.model_validate(raw)


def test_histogram_bins_are_one_release_of_the_per_value_sensitivity() -> None:
    field = _field(path="$.h.*", kind="histogram", contributionsPerIndividual=3)
    assert release.vector_sensitivity(field, "laplace", 50) == 3
    assert release.vector_sensitivity(field, "gaussian", 50) == 3


def test_overlapping_counts_add_up_in_l1_and_in_quadrature_in_l2() -> None:
    field = _field(path="$.r[*].n", kind="count")
    assert release.vector_sensitivity(field, "laplace", 4) == 4
    assert release.vector_sensitivity(field, "gaussian", 4) == 2
    assert release.vector_sensitivity(field, "gaussian", 2) == Decimal("1.414214")


def test_sums_use_bounds_and_an_explicit_sensitivity_only_raises() -> None:
    field = _field(path="$.s", kind="sum", bounds={"lower": -2, "upper": 5})
    assert release.vector_sensitivity(field, "laplace", 1) == 5
    raised = _field(path="$.s", kind="sum", bounds={"lower": 0, "upper": 5}, sensitivity=7)
    assert release.vector_sensitivity(raised, "laplace", 1) == 7


def test_quantiles_are_refused_with_501() -> None:
    field = {"path": "$.m", "kind": "quantile", "quantile": 0.5, "bounds": {"lower": 0, "upper": 1}}
    with pytest.raises(release.UnsupportedFieldError, match="histogram") as refused:
        release.vector_sensitivity(dppolicy.Field.model_validate(field), "laplace", 1)
    assert (refused.value.status, refused.value.reason) == (501, "field-kind-unsupported")
    the_route = route(fields=[{"path": "$.count", "kind": "count"}, field])
    with pytest.raises(release.UnsupportedFieldError):
        # Refused before anything is selected: even an answer without the field.
        release.prepare({"count": 3}, the_route, planner=mechanisms.plan)


def test_a_means_noised_sums_have_the_sum_sensitivity_plus_rounding_for_discrete_kinds() -> None:
    mean = _field(
        path="$.r[*].avg",
        kind="mean",
        bounds={"lower": -2, "upper": 5},
        countPath="$.r[*].n",
        contributionsPerIndividual=2,
    )
    assert release.vector_sensitivity(mean, "laplace", 1) == 10
    assert release.vector_sensitivity(mean, "laplace", 3) == 30
    assert release.vector_sensitivity(mean, "gaussian", 4) == 20
    assert release.vector_sensitivity(mean, "discreteLaplace", 1) == 11
    assert release.vector_sensitivity(mean, "discreteGaussian", 4) == 22


# -- prepare and apply -------------------------------------------------------------------


def test_a_single_field_route_charges_its_plan_unchanged() -> None:
    prepared = release.prepare({"count": 40}, route(), planner=mechanisms.plan)
    expected = mechanisms.plan(
        "laplace", sensitivity=Decimal(1), epsilon=Decimal("0.5"), delta=Decimal(0), length=1
    )
    assert prepared.charge == expected.release


def test_noise_replaces_every_covered_value_and_nothing_else() -> None:
    document = {
        "count": 40,
        "regions": [{"name": "north", "count": 30}, {"name": "south", "count": 12}],
        "note": "fixed",
    }
    the_route = route(
        fields=[
            {"path": "$.count", "kind": "count"},
            {"path": "$.regions[*].count", "kind": "count"},
        ]
    )
    prepared = release.prepare(document, the_route, planner=shifting_planner(0.25))
    released = release.apply(prepared, min_cohort=0)
    assert released.document == {
        "count": 40.25,
        "regions": [{"name": "north", "count": 30.25}, {"name": "south", "count": 12.25}],
        "note": "fixed",
    }
    assert released.suppressed == ()


def test_small_cohorts_are_nulled_with_their_group() -> None:
    document = {"regions": [{"count": 3, "sum": 50.0}, {"count": 40, "sum": 900.0}]}
    the_route = route(
        minCohort=10,
        fields=[
            {"path": "$.regions[*].count", "kind": "count"},
            {"path": "$.regions[*].sum", "kind": "sum", "bounds": {"lower": 0, "upper": 100}},
        ],
    )
    prepared = release.prepare(document, the_route, planner=shifting_planner(0.0))
    released = release.apply(prepared, min_cohort=10)
    assert released.document == {
        "regions": [{"count": None, "sum": None}, {"count": 40.0, "sum": 900.0}]
    }
    assert set(released.suppressed) == {"$.regions[0].count", "$.regions[0].sum"}


def test_histogram_bins_are_suppressed_one_by_one() -> None:
    the_route = route(minCohort=5, fields=[{"path": "$.h.*", "kind": "histogram"}])
    prepared = release.prepare({"h": {"a": 2, "b": 9}}, the_route, planner=shifting_planner(0.0))
    released = release.apply(prepared, min_cohort=5)
    assert released.document == {"h": {"a": None, "b": 9.0}}


def test_post_processing_clamps_and_rounds() -> None:
    the_route = route(
        fields=[
            {"path": "$.a", "kind": "count", "postProcess": {"clampNonNegative": True}},
            {"path": "$.b", "kind": "count", "postProcess": {"round": True}},
        ]
    )
    prepared = release.prepare({"a": 1, "b": 10}, the_route, planner=shifting_planner(-2.6))
    assert release.apply(prepared, min_cohort=0).document == {"a": 0.0, "b": 7}


@pytest.mark.parametrize(
    ("document", "error"),
    [
        ({"count": "12"}, release.FieldValueError),
        ({"count": None}, release.FieldValueError),
        ({"count": True}, release.FieldValueError),
        ({"count": math.inf}, release.FieldValueError),
        ({"total": 1}, release.MissingFieldError),
    ],
)
def test_unusable_covered_values_refuse_the_answer(document: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        release.prepare(document, route(), planner=mechanisms.plan)


def test_discrete_mechanisms_need_integers() -> None:
    the_route = route(mechanism="discreteLaplace")
    assert release.prepare({"count": 7.0}, the_route, planner=mechanisms.plan).fields[0].values == (
        7,
    )
    with pytest.raises(release.FieldValueError, match="integer"):
        release.prepare({"count": 7.5}, the_route, planner=mechanisms.plan)


# -- means -------------------------------------------------------------------------------

MEAN_FIELDS: list[dict[str, Any]] = [
    {"path": "$.avg", "kind": "mean", "bounds": {"lower": 0, "upper": 100}, "countPath": "$.n"},
    {"path": "$.n", "kind": "count"},
]


def test_a_mean_is_released_as_noisy_sum_over_noisy_count() -> None:
    prepared = release.prepare(
        {"avg": 20.0, "n": 10}, route(fields=MEAN_FIELDS), planner=shifting_planner(5.0)
    )
    mean, count = prepared.fields
    assert mean.values == (200.0,)  # the reconstructed sum is what gets noised
    assert mean.count_index == 1
    assert count.values == (10,)
    released = release.apply(prepared, min_cohort=0)
    assert released.document == {"avg": pytest.approx(205 / 15), "n": 15.0}


@pytest.mark.parametrize(
    ("answer", "expected_sum"),
    [({"avg": 150.0, "n": 4}, 400.0), ({"avg": -3.0, "n": 4}, 0.0), ({"avg": None, "n": 0}, 0)],
)
def test_a_mean_is_clamped_to_its_bounds_and_may_be_null_only_for_an_empty_cohort(
    answer: dict[str, Any], expected_sum: float
) -> None:
    prepared = release.prepare(answer, route(fields=MEAN_FIELDS), planner=shifting_planner(0.0))
    assert prepared.fields[0].values == (expected_sum,)


def test_the_released_mean_is_clamped_and_its_count_floored_at_one() -> None:
    bounds = dppolicy.Bounds(lower=0, upper=100)
    assert release.noisy_mean(500.0, 2.0, bounds) == 100.0
    assert release.noisy_mean(-5.0, 3.0, bounds) == 0.0
    assert release.noisy_mean(40.0, -7.0, bounds) == 40.0  # divides by 1, not by -7
    assert release.noisy_mean(30, 4, bounds) == 7.5


@pytest.mark.parametrize(
    ("answer", "error", "message"),
    [
        ({"avg": None, "n": 3}, release.FieldValueError, r"\$\.avg is not a number"),
        ({"avg": "7", "n": 3}, release.FieldValueError, "not a number"),
        ({"avg": 7.0, "n": -1}, release.FieldValueError, "negative"),
        ({"avg": 1e308, "n": 10}, release.FieldValueError, "not finite"),
        ({"avg": 7.0}, release.MissingFieldError, r"\$\.n"),
    ],
)
def test_unusable_means_refuse_the_answer(
    answer: dict[str, Any], error: type[Exception], message: str
) -> None:
    wide = [{**MEAN_FIELDS[0], "bounds": {"lower": 0, "upper": 1e308}}, MEAN_FIELDS[1]]
    with pytest.raises(error, match=message):
        release.prepare(answer, route(fields=wide), planner=mechanisms.plan)


def test_means_and_counts_are_paired_in_order_and_must_match_in_number() -> None:
    fields = [
        {**MEAN_FIELDS[0], "path": "$.g[*].avg", "countPath": "$.g[*].n"},
        {"path": "$.g[*].n", "kind": "count"},
    ]
    document = {"g": [{"avg": 10.0, "n": 2}, {"avg": 30.0, "n": 4}]}
    prepared = release.prepare(document, route(fields=fields), planner=shifting_planner(0.0))
    assert prepared.fields[0].values == (20.0, 120.0)
    mismatched = {"g": [{"avg": 10.0, "n": 2}, {"avg": 30.0, "other": 4}]}
    with pytest.raises(release.MissingFieldError):
        release.prepare(mismatched, route(fields=fields), planner=mechanisms.plan)
    loose = [{**fields[0], "countPath": "$.n"}, {"path": "$.n", "kind": "count"}]
    with pytest.raises(release.FieldValueError, match="selects 2 values but its countPath"):
        release.prepare({**document, "n": 6}, route(fields=loose), planner=mechanisms.plan)


@pytest.mark.parametrize(
    "count",
    [
        None,
        {"path": "$.n", "kind": "histogram"},
        {"path": "$.n", "kind": "count", "contributionsPerIndividual": 1},
    ],
)
def test_a_mean_without_a_covered_count_is_refused_with_the_operators_message(
    count: dict[str, Any] | None,
) -> None:
    mean = {**MEAN_FIELDS[0], "contributionsPerIndividual": 2}
    the_route = route(fields=[mean] if count is None else [mean, count])
    with pytest.raises(release.UnsupportedFieldError, match="count") as refused:
        release.prepare({"avg": 1.0, "n": 3}, the_route, planner=mechanisms.plan)
    assert refused.value.status == 501


def test_discrete_kinds_noise_the_reconstructed_sum_rounded_to_an_integer() -> None:
    the_route = route(mechanism="discreteLaplace", fields=MEAN_FIELDS)
    prepared = release.prepare({"avg": 2.5, "n": 3}, the_route, planner=mechanisms.plan)
    assert prepared.fields[0].values == (8,)  # round(7.5), an integer for the exact sampler
    assert isinstance(prepared.fields[0].values[0], int)
    document = release.apply(prepared, min_cohort=0).document
    assert 0.0 <= document["avg"] <= 100.0
    assert isinstance(document["n"], int)


def test_a_mean_is_nulled_with_its_suppressed_count_wherever_it_sits() -> None:
    fields = [
        {**MEAN_FIELDS[0], "path": "$.means[*]", "countPath": "$.groups[*].n"},
        {"path": "$.groups[*].n", "kind": "count"},
    ]
    document = {"means": [50.0, 60.0], "groups": [{"n": 3}, {"n": 40}]}
    prepared = release.prepare(document, route(fields=fields), planner=shifting_planner(0.0))
    released = release.apply(prepared, min_cohort=10)
    assert released.document == {"means": [None, 60.0], "groups": [{"n": None}, {"n": 40.0}]}
    assert set(released.suppressed) == {"$.groups[0].n", "$.means[0]"}


def test_a_value_selected_by_two_fields_is_refused() -> None:
    the_route = route(
        fields=[{"path": "$.h.*", "kind": "histogram"}, {"path": "$.h.a", "kind": "count"}]
    )
    with pytest.raises(release.UnsupportedFieldError):
        release.prepare({"h": {"a": 1}}, the_route, planner=mechanisms.plan)


# -- the one charge of a multi-field route is never under-noised --------------------------


def _true_loss(prepared: release.Prepared, mechanism: kinds.Mechanism) -> Fraction:
    """The composed loss of the noise actually added: sum of eps_i (L1) or mu^2 (L2)."""
    total = Fraction(0)
    for item in prepared.fields:
        if item.plan is None:
            continue
        base = release.vector_sensitivity(item.field, mechanism, len(item.values))
        actual = Fraction(mechanisms.charged_sensitivity(mechanism, base, length=len(item.values)))
        scale = Fraction(item.plan.release.scale)  # recorded scale <= the float really used
        total += actual / scale if kinds.norm(mechanism) == "L1" else (actual / scale) ** 2
    return total


_FIELD_KINDS = strategies.sampled_from(["count", "sum", "histogram", "mean"])


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(
    mechanism=strategies.sampled_from(kinds.MECHANISMS),
    epsilon=strategies.sampled_from([0.01, 0.1, 0.5, 1.0, 3.0]),
    shapes=strategies.lists(
        strategies.tuples(_FIELD_KINDS, strategies.integers(0, 6), strategies.integers(1, 4)),
        min_size=1,
        max_size=5,
    ),
)
def test_the_reported_release_is_never_under_noised(
    mechanism: kinds.Mechanism, epsilon: float, shapes: list[tuple[str, int, int]]
) -> None:
    delta = 1e-6 if kinds.is_gaussian(mechanism) else 0.0
    document: dict[str, Any] = {}
    fields = []
    for index, (kind, length, contributions) in enumerate(shapes):
        field: dict[str, Any] = {
            "path": f"$.f{index}[*]",
            "kind": kind,
            "contributionsPerIndividual": contributions,
        }
        document[f"f{index}"] = list(range(length))
        if kind in ("sum", "mean"):
            field["bounds"] = {"lower": 0, "upper": 3}
        if kind == "mean":  # a mean brings its count field, noised as its own field
            document[f"f{index}"] = [{"m": 1.5, "n": value} for value in range(length)]
            field.update(path=f"$.f{index}[*].m", countPath=f"$.f{index}[*].n")
            fields.append(
                {"path": f"$.f{index}[*].n", "kind": "count", "contributionsPerIndividual": 4}
            )
        fields.append(field)
    the_route = route(mechanism=mechanism, epsilon=epsilon, delta=delta, fields=fields)
    prepared = release.prepare(document, the_route, planner=mechanisms.plan)
    if prepared.charge is None:
        assert all(item.plan is None for item in prepared.fields)
        return
    charge = prepared.charge
    assert charge.mechanism == mechanism
    assert charge.epsilon == Decimal(repr(epsilon))
    assert charge.delta == Decimal(repr(delta))
    # The accountant's own check passes (it raises UnderNoisedError otherwise) ...
    accounting.PureAccountant().release_cost(charge)
    # ... and the charged release bounds the loss of all the noise that was really added.
    reported = release.ratio(charge)
    if kinds.norm(mechanism) == "L1":
        assert _true_loss(prepared, mechanism) <= reported
    else:
        assert _true_loss(prepared, mechanism) <= reported**2


# -- cache -------------------------------------------------------------------------------


def test_query_strings_are_normalised() -> None:
    assert cache.normalise_query("b=2&a=1&a=0") == "a=0&a=1&b=2"
    first = cache.key(method="GET", path="/s", query="b=2&a=1", body=b"", policy_hash="h")
    same = cache.key(method="get", path="/s", query="a=1&b=2", body=b"", policy_hash="h")
    other_hash = cache.key(method="GET", path="/s", query="a=1&b=2", body=b"", policy_hash="g")
    other_body = cache.key(method="GET", path="/s", query="a=1&b=2", body=b"x", policy_hash="h")
    assert first == same
    assert len({first, other_hash, other_body}) == 3


def test_cached_answers_expire_and_the_cache_is_bounded() -> None:
    now = [100.0]
    answers = cache.AnswerCache(max_entries=2, clock=lambda: now[0])
    for name in ("a", "b", "c"):
        answers.put(name, status=200, body=name.encode(), headers=(), ttl_seconds=10)
    assert answers.get("a") is None  # evicted (it will simply be charged again)
    cached = answers.get("b")
    assert cached is not None
    assert cached.body == b"b"
    now[0] = 110.0
    assert answers.get("b") is None


async def test_concurrent_identical_requests_compute_once() -> None:
    answers = cache.AnswerCache(max_entries=10, clock=lambda: 0.0)
    calls = 0

    async def compute() -> cache.CachedAnswer:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        answers.put("k", status=200, body=b"x", headers=(), ttl_seconds=5)
        return cache.CachedAnswer(status=200, body=b"x", headers=(), expires=5)

    results = await asyncio.gather(*(answers.single_flight("k", compute) for _ in range(5)))
    assert calls == 1
    assert sorted(hit for _, hit in results) == [False, True, True, True, True]


# -- configuration -----------------------------------------------------------------------


def _spec() -> dict[str, Any]:
    return {
        "budgetRef": {"name": "survey", "team": "analytics"},
        "upstream": {"port": 8080},
        "routes": [
            {
                "path": "/count",
                "mechanism": "laplace",
                "epsilon": 0.1,
                "fields": [{"path": "$.count", "kind": "count"}],
            }
        ],
    }


def _baked(**overrides: Any) -> dict[str, Any]:
    spec = dppolicy.DPPolicySpec.model_validate(_spec())
    raw: dict[str, Any] = {
        "policyName": "survey",
        "policyHash": policy_reconcile.policy_hash(spec),
        "policy": spec.model_dump(mode="json", by_alias=True),
        "listenPort": 8443,
        "adminPort": 9901,
        "upstreamPort": 8080,
        "accountantUrl": "https://accountant:8443",
    }
    raw.update(overrides)
    return raw


def test_a_baked_config_round_trips() -> None:
    loaded = config.load(_baked())
    assert config.load(loaded.to_environment()) == loaded


def test_a_config_whose_hash_does_not_match_its_policy_is_refused() -> None:
    with pytest.raises(config.ConfigError, match="does not match"):
        config.load(_baked(policyHash="sha256:0000"))


def test_a_config_with_unknown_keys_or_bad_ports_is_refused() -> None:
    with pytest.raises(config.ConfigError, match="invalid"):
        config.load(_baked(surprise=True))
    with pytest.raises(config.ConfigError, match="listenPort"):
        config.load(_baked(listenPort=8080))
    with pytest.raises(config.ConfigError, match="not JSON"):
        config.load("{")


@pytest.mark.parametrize(
    ("text", "seconds"), [("5m", 300.0), ("1h30m", 5400.0), ("250ms", 0.25), ("0s", 0.0)]
)
def test_durations(text: str, seconds: float) -> None:
    assert config.duration_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "m5", "5m junk"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(config.ConfigError):
        config.duration_seconds(text)
