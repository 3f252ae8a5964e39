"""DPPolicy evaluation: readiness against its budget, sensitivity, the policy hash."""

from __future__ import annotations

import copy
import datetime
from typing import Any

import pytest

from hush.reconcile import conditions, dppolicy, privacybudget

BUDGET = privacybudget.summarise(
    {
        "dataset": "census",
        "epsilon": 1.0,
        "delta": 1e-6,
        "quotas": [{"team": "analytics", "epsilon": 0.5, "delta": 1e-7}],
    }
)


def _spec(**route_overrides: Any) -> dict[str, Any]:
    route: dict[str, Any] = {
        "path": "/stats/{region}",
        "mechanism": "laplace",
        "epsilon": 0.1,
        "fields": [{"path": "$.total", "kind": "sum", "bounds": {"lower": 0, "upper": 100}}],
    }
    route.update(route_overrides)
    return {
        "budgetRef": {"name": "census", "team": "analytics"},
        "upstream": {"port": 8080},
        "routes": [route],
    }


def _evaluate(spec: dict[str, Any], budget: Any = BUDGET, now: Any = None) -> Any:
    return dppolicy.evaluate(
        spec,
        namespace="ns",
        generation=4,
        status={},
        lookup_budget=lambda name: budget if name == "census" else None,
        now=now or datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
    )


def _ready(spec: dict[str, Any], budget: Any = BUDGET) -> tuple[str, str, str]:
    ready = conditions.find(_evaluate(spec, budget).conditions, "Ready")
    assert ready is not None
    return ready.status, ready.reason, ready.message


def test_policy_within_its_quota_is_ready() -> None:
    status, reason, _ = _ready(_spec())
    assert (status, reason) == ("True", "Accepted")
    assert _evaluate(_spec()).observed_generation == 4


def test_missing_budget_is_reported_with_the_fix() -> None:
    status, reason, message = _ready(_spec(), budget=None)
    assert (status, reason) == ("False", "BudgetNotFound")
    assert "census" in message
    assert "namespace ns" in message
    assert "spec.budgetRef.name" in message


def test_team_without_quota() -> None:
    spec = _spec()
    spec["budgetRef"]["team"] = "growth"
    status, reason, message = _ready(spec)
    assert (status, reason) == ("False", "TeamNotInBudget")
    assert "teams: analytics" in message


def test_release_costing_more_than_the_whole_quota() -> None:
    status, reason, _ = _ready(_spec(epsilon=0.6))
    assert (status, reason) == ("False", "ReleaseExceedsQuota")
    status, reason, _ = _ready(_spec(mechanism="gaussian", epsilon=0.1, delta=1e-6))
    assert (status, reason) == ("False", "ReleaseExceedsQuota")


def test_budget_that_is_not_accepted() -> None:
    bad = privacybudget.summarise(
        {
            "dataset": "d",
            "epsilon": 1.0,
            "quotas": [{"team": "analytics", "epsilon": 0.7}, {"team": "b", "epsilon": 0.30000001}],
        }
    )
    assert _ready(_spec(), budget=bad)[1] == "BudgetNotReady"


@pytest.mark.parametrize(
    ("field", "understated"),
    [
        (
            {"path": "$.t", "kind": "sum", "bounds": {"lower": -5, "upper": 3}, "sensitivity": 4},
            True,
        ),
        (
            {"path": "$.t", "kind": "sum", "bounds": {"lower": -5, "upper": 3}, "sensitivity": 5},
            False,
        ),
        ({"path": "$.c", "kind": "count", "contributionsPerIndividual": 3, "sensitivity": 2}, True),
        ({"path": "$.c", "kind": "histogram", "sensitivity": 10}, False),
    ],
)
def test_sensitivity_may_be_raised_never_lowered(field: dict[str, Any], understated: bool) -> None:
    status, reason, _ = _ready(_spec(fields=[field]))
    assert (reason == "SensitivityUnderstated") is understated
    assert (status == "True") is (not understated)


def test_a_quantile_field_makes_the_policy_not_ready_with_the_alternative() -> None:
    quantile = {
        "path": "$.median",
        "kind": "quantile",
        "quantile": 0.5,
        "bounds": {"lower": 0, "upper": 100},
    }
    status, reason, message = _ready(_spec(fields=[quantile]))
    assert (status, reason) == ("False", "QuantileUnsupported")
    assert "$.median" in message
    assert "histogram" in message


_MEAN = {"path": "$.avg", "kind": "mean", "bounds": {"lower": 0, "upper": 100}, "countPath": "$.n"}


@pytest.mark.parametrize(
    ("count", "ready", "fix"),
    [
        ({"path": "$.n", "kind": "count"}, True, ""),
        ({"path": "$.n", "kind": "count", "contributionsPerIndividual": 3}, True, ""),
        (None, False, "add {path: $.n, kind: count}"),
        ({"path": "$.n", "kind": "histogram"}, False, "add {path: $.n, kind: count}"),
        ({"path": "$.other", "kind": "count"}, False, "add {path: $.n, kind: count}"),
    ],
)
def test_a_mean_must_divide_by_a_count_field_of_its_route(
    count: dict[str, Any] | None, ready: bool, fix: str
) -> None:
    fields = [_MEAN] if count is None else [_MEAN, count]
    status, reason, message = _ready(_spec(fields=fields))
    assert (status == "True") is ready, message
    if not ready:
        assert reason == "MeanCountNotCovered"
        assert fix in message


def test_a_means_count_must_count_at_least_the_means_contributions() -> None:
    mean = {**_MEAN, "contributionsPerIndividual": 4}
    count = {"path": "$.n", "kind": "count", "contributionsPerIndividual": 2}
    status, reason, message = _ready(_spec(fields=[mean, count]))
    assert (status, reason) == ("False", "MeanCountNotCovered")
    assert "raise the count's contributionsPerIndividual" in message


def test_hash_ignores_spelled_out_defaults_and_key_order() -> None:
    plain = _spec()
    explicit = copy.deepcopy(plain)
    explicit["routes"][0].update(
        {
            "delta": 0.0,
            "methods": ["GET"],
            "cacheTTL": "5m",
            "minCohort": 0,
            "releaseDeadline": "5ms",
        }
    )
    reordered = dict(reversed(list(plain.items())))
    hashes = {_evaluate(spec).policy_hash for spec in (plain, explicit, reordered)}
    assert len(hashes) == 1
    assert next(iter(hashes)).startswith("sha256:")


def test_hash_changes_with_any_privacy_relevant_change() -> None:
    base = _evaluate(_spec()).policy_hash
    assert _evaluate(_spec(epsilon=0.2)).policy_hash != base
    assert _evaluate(_spec(minCohort=5)).policy_hash != base
    assert _evaluate(_spec(releaseDeadline="20ms")).policy_hash != base


def test_unparsable_spec_is_reported_not_raised() -> None:
    status, reason, message = _ready({"budgetRef": {"name": "census"}})
    assert (status, reason) == ("False", "InvalidSpec")
    assert "spec.upstream" in message


def test_the_sidecar_image_is_part_of_the_policy_hash() -> None:
    spec = dppolicy_reconcile_for_image_test()
    plain = dppolicy.policy_hash(spec)
    first = dppolicy.policy_hash(spec, "registry.example/hush@sha256:" + "1" * 64)
    second = dppolicy.policy_hash(spec, "registry.example/hush@sha256:" + "2" * 64)
    assert len({plain, first, second}) == 3
    assert first == dppolicy.policy_hash(spec, "registry.example/hush@sha256:" + "1" * 64)


def dppolicy_reconcile_for_image_test() -> Any:
    from hush.api import dppolicy as dppolicy_api

    return dppolicy_api.DPPolicySpec.model_validate(
        {
            "budgetRef": {"name": "b", "team": "t"},
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
    )


# -- the declared shape (docs/design/0018) ----------------------------------------------------

COUNT = {"path": "$.regions.*.count", "kind": "count"}
PURE_BUDGET_WITH_DELTA = privacybudget.summarise(
    {
        "dataset": "census",
        "epsilon": 1.0,
        "delta": 1e-6,
        "accounting": "pure",
        "quotas": [{"team": "analytics", "epsilon": 0.5, "delta": 1e-6}],
    }
)


def test_a_wildcard_without_a_domain_is_not_ready_with_the_fix() -> None:
    status, reason, message = _ready(_spec(fields=[COUNT]))
    assert (status, reason) == ("False", "DomainMissing")
    assert "$.regions.*" in message
    assert "domains" in message


def test_a_wildcard_with_fixed_keys_is_ready() -> None:
    spec = _spec(fields=[COUNT], domains=[{"path": "$.regions.*", "keys": ["north", "south"]}])
    assert _ready(spec)[:2] == ("True", "Accepted")


def test_a_domain_no_field_uses_is_an_error() -> None:
    spec = _spec(domains=[{"path": "$.regions.*", "keys": ["north"]}])
    status, reason, message = _ready(spec)
    assert (status, reason) == ("False", "DomainUnused")
    assert "$.regions.*" in message


@pytest.mark.parametrize(
    ("constants", "fields"),
    [
        ([{"path": "$.total", "value": "EUR"}], None),  # a constant on a field
        ([{"path": "$.unit", "value": "a"}, {"path": "$.unit.x", "value": "b"}], None),
        ([{"path": "$.regions.north", "value": "x"}], [COUNT]),  # inside a wildcard's map
    ],
)
def test_colliding_paths_are_not_ready(
    constants: list[dict[str, str]], fields: list[dict[str, Any]] | None
) -> None:
    overrides: dict[str, Any] = {"constants": constants}
    if fields is not None:
        overrides["fields"] = fields
        overrides["domains"] = [{"path": "$.regions.*", "keys": ["north"]}]
    status, reason, message = _ready(_spec(**overrides))
    assert (status, reason) == ("False", "PathsCollide")
    assert "same place" in message


def test_constants_beside_fields_are_ready() -> None:
    spec = _spec(constants=[{"path": "$.unit", "value": "EUR"}, {"path": "$.meta.v", "value": "1"}])
    assert _ready(spec)[:2] == ("True", "Accepted")


def test_a_field_may_not_replace_a_keyed_arrays_key_field() -> None:
    spec = _spec(
        fields=[{"path": "$.groups[*].name", "kind": "count"}],
        domains=[{"path": "$.groups[*]", "keyField": "name", "keys": ["a"]}],
    )
    status, reason, message = _ready(spec)
    assert (status, reason) == ("False", "PathsCollide")
    assert "keyField name" in message


def test_partition_selection_needs_a_count_to_select_by() -> None:
    spec = _spec(
        delta=1e-7,
        fields=[{"path": "$.regions.*.total", "kind": "sum", "bounds": {"lower": 0, "upper": 5}}],
        domains=[{"path": "$.regions.*", "partitionSelection": {}}],
    )
    status, reason, message = _ready(spec, budget=PURE_BUDGET_WITH_DELTA)
    assert (status, reason) == ("False", "SelectionCountMissing")
    assert "$.regions.*.count" in message


def test_partition_selection_is_ready_under_pure_accounting_only() -> None:
    spec = _spec(
        delta=1e-7, fields=[COUNT], domains=[{"path": "$.regions.*", "partitionSelection": {}}]
    )
    assert _ready(spec, budget=PURE_BUDGET_WITH_DELTA)[:2] == ("True", "Accepted")
    zcdp = privacybudget.summarise(
        {
            "dataset": "census",
            "epsilon": 1.0,
            "delta": 1e-6,
            "accounting": "zcdp",
            "quotas": [{"team": "analytics", "epsilon": 0.5, "delta": 1e-6}],
        }
    )
    status, reason, message = _ready(spec, budget=zcdp)
    assert (status, reason) == ("False", "PartitionSelectionNeedsPureAccounting")
    assert "accounting: pure" in message


def test_partition_selection_below_another_wildcard_is_refused() -> None:
    spec = _spec(
        delta=1e-7,
        fields=[{"path": "$.days[*].regions.*.count", "kind": "count"}],
        domains=[
            {"path": "$.days[*]", "length": 7},
            {"path": "$.days[*].regions.*", "partitionSelection": {}},
        ],
    )
    status, reason, _ = _ready(spec, budget=PURE_BUDGET_WITH_DELTA)
    assert (status, reason) == ("False", "PartitionSelectionNested")


def test_a_mean_and_its_count_must_share_their_wildcards() -> None:
    spec = _spec(
        fields=[
            {
                "path": "$.regions.*.mean",
                "kind": "mean",
                "bounds": {"lower": 0, "upper": 9},
                "countPath": "$.people",
            },
            {"path": "$.people", "kind": "count"},
        ],
        domains=[{"path": "$.regions.*", "keys": ["a"]}],
    )
    status, reason, message = _ready(spec)
    assert (status, reason) == ("False", "MeanCountNotCovered")
    assert "paired key by key" in message
