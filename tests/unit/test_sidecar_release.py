"""The sidecar's pure release core: the document is built from the policy (issue 14, findings
1, 2 and 6), per-value problems are imputed, suppression, means, partition selection; and the
baked configuration."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from typing import Any

import pytest

from hush.api import dppolicy, jsonpath
from hush.privacy import kinds, mechanisms, route_cost
from hush.reconcile import dppolicy as policy_reconcile
from hush.sidecar import config, release
from tests.policies import route


@dataclasses.dataclass
class ShiftSampler:
    """Deterministic stand-in for a noise sampler: adds ``shift`` (keeps the real scale)."""

    shift: float | int
    mechanism: kinds.Mechanism = "laplace"
    scale: float = 1.0
    integer: bool = False

    def release(self, values: Sequence[float | int]) -> list[float | int]:
        return [value + self.shift for value in values]


def shifting_planner(shift: float | int) -> route_cost.Planner:
    def planner(mechanism: str, **arguments: Any) -> mechanisms.Plan:
        real = mechanisms.plan(mechanism, **arguments)
        parsed = kinds.parse(mechanism)
        sampler = ShiftSampler(shift, parsed, real.sampler.scale, integer=kinds.is_discrete(parsed))
        return dataclasses.replace(real, sampler=sampler)

    return planner


def released(
    upstream: Any, the_route: dppolicy.Route, *, shift: float | int = 0.5, min_cohort: int = 0
) -> release.Released:
    plan = route_cost.route_plan(the_route, planner=shifting_planner(shift))
    return release.release_document(upstream, plan, min_cohort=min_cohort)


def document(upstream: Any, the_route: dppolicy.Route, **options: Any) -> Any:
    return released(upstream, the_route, **options).document


# -- issue 14, finding 1: undeclared fields never leave --------------------------------------


def test_undeclared_fields_are_withheld() -> None:
    upstream = {"count": 1000, "secret_total": 987654, "rows": [31337]}
    assert document(upstream, route()) == {"count": 1000.5}


def test_constants_are_the_only_strings_besides_declared_keys() -> None:
    the_route = route(
        constants=[{"path": "$.unit", "value": "people"}, {"path": "$.meta.v", "value": "2"}],
        fields=[{"path": "$.meta.count", "kind": "count"}],
    )
    upstream = {"unit": "secret", "meta": {"count": 4, "v": "upstream", "note": "raw"}}
    assert document(upstream, the_route) == {"unit": "people", "meta": {"v": "2", "count": 4.5}}


# -- issue 14, finding 2: an empty selection is released as the declared shape ---------------

GROUPS = {"path": "$.groups[*]", "keyField": "name", "keys": ["a", "b"]}


def test_an_empty_selection_is_released_as_the_declared_shape() -> None:
    the_route = route(fields=[{"path": "$.groups[*].count", "kind": "count"}], domains=[GROUPS])
    upstream = {"groups": [], "total_rows": 424242}
    assert document(upstream, the_route) == {
        "groups": [{"name": "a", "count": 0.5}, {"name": "b", "count": 0.5}]
    }


def test_an_empty_open_key_set_is_an_empty_container() -> None:
    the_route = route(
        delta=1e-6,
        fields=[{"path": "$.groups[*].count", "kind": "count"}],
        domains=[{"path": "$.groups[*]", "keyField": "name", "partitionSelection": {}}],
    )
    assert document({"groups": [], "total_rows": 424242}, the_route) == {"groups": []}
    assert document("not even an object", the_route) == {"groups": []}


# -- issue 14, finding 6: keys and lengths come from the policy ------------------------------


def test_fixed_keys_are_released_in_declared_order_missing_imputed_unknown_dropped() -> None:
    the_route = route(
        fields=[{"path": "$.bins.*", "kind": "histogram"}],
        domains=[{"path": "$.bins.*", "keys": ["65+", "0-17", "18-64"]}],
    )
    upstream = {"bins": {"0-17": 3, "18-64": 9, "secret-bin": 1}}
    result = document(upstream, the_route)
    assert list(result["bins"]) == ["65+", "0-17", "18-64"]
    assert result == {"bins": {"65+": 0.5, "0-17": 3.5, "18-64": 9.5}}


def test_fixed_lengths_pad_with_imputed_values_and_drop_extra_elements() -> None:
    the_route = route(
        fields=[{"path": "$.rows[*]", "kind": "count"}],
        domains=[{"path": "$.rows[*]", "length": 3}],
    )
    assert document({"rows": [7]}, the_route) == {"rows": [7.5, 0.5, 0.5]}
    assert document({"rows": [1, 2, 3, 4, 5]}, the_route) == {"rows": [1.5, 2.5, 3.5]}


def test_keyed_arrays_are_matched_by_key_not_by_position() -> None:
    the_route = route(
        fields=[
            {"path": "$.groups[*].count", "kind": "count"},
            {"path": "$.groups[*].total", "kind": "sum", "bounds": {"lower": 0, "upper": 9}},
        ],
        domains=[GROUPS],
    )
    upstream = {
        "groups": [
            {"name": "zz", "count": 99, "total": 99},
            {"name": "b", "count": 2, "extra": "secret"},
            {"name": "a", "count": 1, "total": 5},
            {"name": "a", "count": 50},  # a duplicate: the first one counts
            "junk",
        ]
    }
    assert document(upstream, the_route) == {
        "groups": [
            {"name": "a", "count": 1.5, "total": 5.5},
            {"name": "b", "count": 2.5, "total": 0.5},
        ]
    }


def test_nested_domains_multiply() -> None:
    the_route = route(
        fields=[{"path": "$.days[*].regions.*", "kind": "count"}],
        domains=[
            {"path": "$.days[*]", "length": 2},
            {"path": "$.days[*].regions.*", "keys": ["n", "s"]},
        ],
    )
    upstream = {"days": [{"regions": {"n": 1, "x": 5}}]}
    assert document(upstream, the_route) == {
        "days": [{"regions": {"n": 1.5, "s": 0.5}}, {"regions": {"n": 0.5, "s": 0.5}}]
    }


# -- per-value problems are imputed, clamped or rounded, never reported ---------------------


@pytest.mark.parametrize(
    "value",
    [None, "12", True, [], {}, float("nan"), float("inf"), -float("inf")],
)
def test_an_unusable_count_is_imputed_as_zero(value: Any) -> None:
    assert document({"count": value}, route()) == {"count": 0.5}
    assert document({}, route()) == {"count": 0.5}
    assert document([1, 2], route()) == {"count": 0.5}


def test_a_declared_impute_replaces_the_default() -> None:
    the_route = route(fields=[{"path": "$.count", "kind": "count", "impute": 10}])
    assert document({"count": "n/a"}, the_route) == {"count": 10.5}


def test_counts_are_clamped_to_zero_and_every_value_to_two_to_the_53() -> None:
    assert document({"count": -40}, route()) == {"count": 0.5}
    assert document({"count": 10**400}, route()) == {"count": 2.0**53 + 0.5}
    the_sum = route(fields=[{"path": "$.s", "kind": "sum", "bounds": {"lower": -1, "upper": 1}}])
    assert document({"s": -(10**30)}, the_sum) == {"s": -(2.0**53) + 0.5}


def test_discrete_mechanisms_round_non_integers() -> None:
    the_route = route(mechanism="discreteLaplace")
    assert document({"count": 7.4}, the_route, shift=2) == {"count": 9}
    assert document({"count": 7.6}, the_route, shift=2) == {"count": 10}
    assert document({"count": "x"}, the_route, shift=2) == {"count": 2}


def test_post_processing_clamps_and_rounds() -> None:
    the_route = route(
        fields=[
            {"path": "$.a", "kind": "count", "postProcess": {"clampNonNegative": True}},
            {"path": "$.b", "kind": "count", "postProcess": {"round": True}},
        ]
    )
    assert document({"a": 1, "b": 10}, the_route, shift=-2.6) == {"a": 0.0, "b": 7}


# -- means --------------------------------------------------------------------------------

MEAN_FIELDS = [
    {"path": "$.avg", "kind": "mean", "bounds": {"lower": 0, "upper": 100}, "countPath": "$.n"},
    {"path": "$.n", "kind": "count"},
]


def test_a_mean_is_released_as_noisy_sum_over_noisy_count() -> None:
    # sum 20 * 10 = 200, noisy 205; count noisy 15: mean 205 / 15.
    result = document({"avg": 20.0, "n": 10}, route(fields=MEAN_FIELDS), shift=5.0)
    assert result == {"avg": pytest.approx(205 / 15), "n": 15.0}


@pytest.mark.parametrize(
    ("answer", "mean"),
    [
        ({"avg": 500.0, "n": 2}, 100.0),  # clamped to the upper bound
        ({"avg": "x", "n": 2}, 0.0),  # imputed: bounds.lower
        ({"avg": None, "n": 0}, 0.0),  # an empty cohort: sum 0, count floored at 1
        ({"n": 4}, 0.0),
    ],
)
def test_a_mean_is_clamped_and_imputed(answer: dict[str, Any], mean: float) -> None:
    assert document(answer, route(fields=MEAN_FIELDS), shift=0.0)["avg"] == mean


def test_means_pair_with_their_counts_key_by_key() -> None:
    fields = [
        {
            "path": "$.g[*].avg",
            "kind": "mean",
            "bounds": {"lower": 0, "upper": 10},
            "countPath": "$.g[*].n",
        },
        {"path": "$.g[*].n", "kind": "count"},
    ]
    the_route = route(
        fields=fields, domains=[{"path": "$.g[*]", "keyField": "k", "keys": ["x", "y"]}]
    )
    upstream = {"g": [{"k": "y", "avg": 4.0, "n": 2}, {"k": "x", "avg": 1.0, "n": 8}]}
    assert document(upstream, the_route, shift=0.0) == {
        "g": [{"k": "x", "avg": 1.0, "n": 8.0}, {"k": "y", "avg": 4.0, "n": 2.0}]
    }


# -- suppression ----------------------------------------------------------------------------


def test_small_cohorts_are_nulled_with_their_group_and_counted_not_annotated() -> None:
    the_route = route(
        fields=[
            {"path": "$.g[*].n", "kind": "count"},
            {"path": "$.g[*].s", "kind": "sum", "bounds": {"lower": 0, "upper": 5}},
        ],
        domains=[{"path": "$.g[*]", "length": 2}],
        constants=[{"path": "$.unit", "value": "eur"}],
    )
    upstream = {"g": [{"n": 3, "s": 10}, {"n": 50, "s": 20}]}
    result = released(upstream, the_route, shift=0.0, min_cohort=5)
    assert result.document == {"unit": "eur", "g": [{"n": None, "s": None}, {"n": 50.0, "s": 20.0}]}
    assert result.suppressed == 2
    assert "_dp" not in release.render(result).decode()


def test_histogram_bins_are_suppressed_one_by_one() -> None:
    the_route = route(
        fields=[{"path": "$.h.*", "kind": "histogram"}],
        domains=[{"path": "$.h.*", "keys": ["a", "b"]}],
    )
    result = released({"h": {"a": 2, "b": 9}}, the_route, shift=0.0, min_cohort=5)
    assert (result.document, result.suppressed) == ({"h": {"a": None, "b": 9.0}}, 1)


def test_a_mean_is_nulled_with_its_suppressed_count_wherever_it_sits() -> None:
    fields = [
        {
            "path": "$.m.avg",
            "kind": "mean",
            "bounds": {"lower": 0, "upper": 9},
            "countPath": "$.m.n",
        },
        {"path": "$.m.n", "kind": "count"},
    ]
    result = released({"m": {"avg": 3, "n": 2}}, route(fields=fields), shift=0.0, min_cohort=5)
    assert (result.document, result.suppressed) == ({"m": {"avg": None, "n": None}}, 2)


# -- partition selection ----------------------------------------------------------------------


def _selected(**selection: Any) -> dppolicy.Route:
    return route(
        delta=1e-6,
        fields=[
            {"path": "$.regions.*.count", "kind": "count"},
            {"path": "$.regions.*.total", "kind": "sum", "bounds": {"lower": 0, "upper": 5}},
        ],
        domains=[{"path": "$.regions.*", "partitionSelection": selection}],
    )


def test_keys_are_released_only_when_their_noisy_count_reaches_the_threshold() -> None:
    the_route = _selected(maxKeys=10)
    threshold = route_cost.route_plan(the_route).selections[0].threshold
    upstream = {
        "regions": {
            "big": {"count": threshold + 5, "total": 7},
            "edge": {"count": threshold, "total": 1},  # noisy threshold + 0.5: released
            "small": {"count": threshold - 1, "total": 1},  # noisy threshold - 0.5: dropped
        }
    }
    result = document(upstream, the_route)
    assert list(result["regions"]) == ["big", "edge"]  # key order
    assert result["regions"]["edge"] == {"count": threshold + 0.5, "total": 1.5}


def test_at_most_max_keys_are_released_the_largest_noisy_counts() -> None:
    the_route = _selected(maxKeys=2)
    threshold = route_cost.route_plan(the_route).selections[0].threshold
    upstream = {"regions": {key: {"count": threshold + n} for n, key in enumerate("dcba")}}
    assert list(document(upstream, the_route)["regions"]) == ["a", "b"]


def test_selection_drops_overlong_keys_and_non_string_names() -> None:
    the_route = route(
        delta=1e-6,
        fields=[{"path": "$.g[*].n", "kind": "count"}],
        domains=[{"path": "$.g[*]", "keyField": "id", "partitionSelection": {}}],
    )
    threshold = route_cost.route_plan(the_route).selections[0].threshold
    upstream = {
        "g": [
            {"id": "x" * 300, "n": threshold * 2},
            {"id": 7, "n": threshold * 2},
            {"id": "ok", "n": threshold * 2},
        ]
    }
    assert document(upstream, the_route) == {"g": [{"id": "ok", "n": threshold * 2 + 0.5}]}


# -- rendering and the generic failure ---------------------------------------------------------


def test_render_is_compact_deterministic_json() -> None:
    result = released({"count": 3}, route(constants=[{"path": "$.unit", "value": "p"}]))
    assert release.render(result) == b'{"unit":"p","count":3.5}'


def test_the_failure_body_is_constant_and_generic() -> None:
    body = json.loads(release.failure_body())
    assert body["error"] == "release-failed"
    assert release.failure_body() == release.failure_body()


def test_a_failing_sampler_raises_a_noise_error() -> None:
    class Broken(ShiftSampler):
        def release(self, values: Sequence[float | int]) -> list[float | int]:
            raise mechanisms.SamplerError("boom")

    def planner(mechanism: str, **arguments: Any) -> mechanisms.Plan:
        return dataclasses.replace(mechanisms.plan(mechanism, **arguments), sampler=Broken(0))

    plan = route_cost.route_plan(route(), planner=planner)
    with pytest.raises(release.NoiseError):
        release.release_document({"count": 1}, plan, min_cohort=0)


def test_real_noise_is_finite_and_the_shape_holds() -> None:
    the_route = route(
        fields=[{"path": "$.h.*", "kind": "histogram"}],
        domains=[{"path": "$.h.*", "keys": ["a", "b", "c"]}],
    )
    plan = route_cost.route_plan(the_route)
    result = release.release_document({"h": {"a": 5}}, plan, min_cohort=0).document
    assert list(result["h"]) == ["a", "b", "c"]
    assert all(math.isfinite(value) for value in result["h"].values())


def test_paths_outside_the_subset_are_refused() -> None:
    with pytest.raises(ValueError, match="supported subset"):
        jsonpath.parse("$.a[0]")


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


def test_a_key_only_one_individual_has_is_released_with_probability_at_most_delta() -> None:
    """Real noise, a large delta (0.2) so that the probability is measurable.

    A key with count 1 (one individual's row) passes the threshold with probability
    ``p = P[1 + Lap(b) >= T] = exp(-(T - 1) / b) / 2 <= 0.2``. Over 4,000 releases the
    frequency lies within 5 standard deviations of ``p`` (sd <= 0.0064) except with
    probability below 1e-6.
    """
    the_route = route(
        epsilon=1.0,
        delta=0.2,
        fields=[{"path": "$.r.*", "kind": "count"}],
        domains=[{"path": "$.r.*", "partitionSelection": {"maxPartitionsContributed": 1}}],
    )
    plan = route_cost.route_plan(the_route)
    (selection,) = plan.selections
    scale = plan.fields[0].plan.sampler.scale
    expected = math.exp(-(selection.threshold - 1) / scale) / 2
    assert expected <= 0.2
    releases = 4000
    released_count = sum(
        bool(release.release_document({"r": {"alone": 1}}, plan, min_cohort=0).document["r"])
        for _ in range(releases)
    )
    deviation = 5 * math.sqrt(expected * (1 - expected) / releases)
    assert abs(released_count / releases - expected) <= deviation, (released_count, expected)
