"""The operator as a host process against the real apiserver: conditions, observedGeneration,
cross-object readiness, and bad specs reported in status rather than crashing the operator."""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests import samples

import hush_resources
import operator_process as operator_process_module


@pytest.fixture(scope="module")
def operator_process(
    api_client: client.ApiClient, kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[subprocess.Popen[bytes]]:
    hush_resources.install_crds(api_client)
    log_path = tmp_path_factory.mktemp("operator") / "operator.log"
    with operator_process_module.running_operator(kubeconfig, log_path) as process:
        yield process


@pytest.fixture
def operator(operator_process: subprocess.Popen[bytes]) -> Iterator[None]:
    yield
    assert operator_process.poll() is None, "the operator crashed during the test"


def _sample(sample_id: str) -> dict[str, Any]:
    found = next(s for s in samples.load("valid") if s.id == sample_id)
    return copy.deepcopy(found.manifest)


def test_budget_becomes_ready_and_tracks_its_generation(
    api_client: client.ApiClient, namespace: str, operator: None
) -> None:
    hush_resources.create(api_client, namespace, _sample("privacybudget-census"))
    budget = hush_resources.wait_for_condition(
        api_client, namespace, "PrivacyBudget", "census-2020", status="True", reason="Accepted"
    )
    assert budget["status"]["observedGeneration"] == 1
    assert budget["status"]["state"] == "Ready"
    assert budget["status"]["epsilon"] == {"total": "4", "spent": "0", "remaining": "4"}
    assert [team["team"] for team in budget["status"]["teams"]] == ["analytics", "growth"]

    hush_resources.patch_spec(api_client, namespace, "PrivacyBudget", "census-2020", {"epsilon": 5})
    budget = hush_resources.wait_for_condition(
        api_client, namespace, "PrivacyBudget", "census-2020", status="True", generation=2
    )
    assert budget["status"]["epsilon"]["total"] == "5"
    row = hush_resources.table(api_client, namespace, "PrivacyBudget")["rows"][0]["cells"]
    assert row[3:6] == ["0", "5", 2]  # SPENT, REMAINING, TEAMS


def test_calendar_budget_keeps_its_lifetime_loss_warning(
    api_client: client.ApiClient, namespace: str, operator: None
) -> None:
    hush_resources.create(api_client, namespace, _sample("privacybudget-calendar"))
    budget = hush_resources.wait_for_condition(
        api_client,
        namespace,
        "PrivacyBudget",
        "web-traffic",
        condition_type="UnboundedLifetimeLoss",
        status="True",
        reason="CalendarRenewal",
    )
    assert hush_resources.condition(budget, "Ready")["status"] == "True"  # type: ignore[index]


def test_policy_waits_for_its_budget_then_becomes_ready(
    api_client: client.ApiClient, namespace: str, operator: None
) -> None:
    hush_resources.create(api_client, namespace, _sample("dppolicy-census-stats"))
    policy = hush_resources.wait_for_condition(
        api_client, namespace, "DPPolicy", "census-stats", status="False", reason="BudgetNotFound"
    )
    assert "census-2020" in hush_resources.condition(policy, "Ready")["message"]  # type: ignore[index]
    assert policy["status"]["policyHash"].startswith("sha256:")

    hush_resources.create(api_client, namespace, _sample("privacybudget-census"))
    policy = hush_resources.wait_for_condition(
        api_client, namespace, "DPPolicy", "census-stats", status="True", reason="Accepted"
    )
    first_hash = policy["status"]["policyHash"]

    route_change = copy.deepcopy(policy["spec"])
    route_change["routes"][0]["epsilon"] = 0.05
    hush_resources.patch_spec(api_client, namespace, "DPPolicy", "census-stats", route_change)
    policy = hush_resources.wait_for_condition(
        api_client, namespace, "DPPolicy", "census-stats", status="True", generation=2
    )
    assert policy["status"]["policyHash"] != first_hash


def test_spec_the_operator_cannot_accept_is_a_condition_not_a_crash(
    api_client: client.ApiClient, namespace: str, operator: None
) -> None:
    # Passes CEL (which compares doubles with a 1e-9 relative slack) but not the exact check.
    budget = {
        "apiVersion": "hush.dev/v1alpha1",
        "kind": "PrivacyBudget",
        "metadata": {"name": "over-carved"},
        "spec": {
            "dataset": "d",
            "epsilon": 1.0,
            "quotas": [{"team": "a", "epsilon": 0.5}, {"team": "b", "epsilon": 0.5000000001}],
        },
    }
    hush_resources.create(api_client, namespace, budget)
    refused = hush_resources.wait_for_condition(
        api_client, namespace, "PrivacyBudget", "over-carved", status="False",
        reason="QuotasExceedTotal",
    )  # fmt: skip
    assert refused["status"]["state"] == "Invalid"
    assert "lower a quota" in hush_resources.condition(refused, "Ready")["message"]  # type: ignore[index]

    understated = _sample("dppolicy-census-stats")
    understated["metadata"]["name"] = "understated"
    understated["spec"]["routes"][1]["fields"][0]["sensitivity"] = 10
    hush_resources.create(api_client, namespace, _sample("privacybudget-census"))
    hush_resources.create(api_client, namespace, understated)
    hush_resources.wait_for_condition(
        api_client, namespace, "DPPolicy", "understated", status="False",
        reason="SensitivityUnderstated",
    )  # fmt: skip

    # Fixing the spec recovers, with the new generation observed.
    hush_resources.patch_spec(
        api_client, namespace, "PrivacyBudget", "over-carved",
        {"quotas": [{"team": "a", "epsilon": 0.5}, {"team": "b", "epsilon": 0.5}]},
    )  # fmt: skip
    hush_resources.wait_for_condition(
        api_client, namespace, "PrivacyBudget", "over-carved", status="True", generation=2
    )
