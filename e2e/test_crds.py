"""The CRDs on a real apiserver: valid samples accepted, invalid ones refused with the rule's
message, printer columns as designed."""

from __future__ import annotations

import copy
import json

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests import samples

import hush_resources


@pytest.fixture(scope="module", autouse=True)
def crds_installed(api_client: client.ApiClient) -> None:
    hush_resources.install_crds(api_client)


@pytest.mark.parametrize("sample", samples.load("valid"), ids=lambda sample: sample.id)
def test_valid_sample_is_accepted(
    api_client: client.ApiClient, namespace: str, sample: samples.Sample
) -> None:
    created = hush_resources.create(api_client, namespace, copy.deepcopy(sample.manifest))
    assert created["metadata"]["name"] == sample.manifest["metadata"]["name"]
    # Nothing the sample set was pruned: every field is in the schema.
    for key, value in sample.manifest["spec"].items():
        assert key in created["spec"], f"spec.{key} was pruned"
        if not isinstance(value, (dict, list)):
            assert created["spec"][key] == value


def test_defaults_are_applied_by_the_apiserver(
    api_client: client.ApiClient, namespace: str
) -> None:
    created = hush_resources.create(
        api_client,
        namespace,
        {
            "apiVersion": "hush.dev/v1alpha1",
            "kind": "PrivacyBudget",
            "metadata": {"name": "minimal"},
            "spec": {"dataset": "d", "epsilon": 1},
        },
    )
    assert created["spec"]["accounting"] == "pure"
    assert created["spec"]["enforcement"] == "block"
    assert created["spec"]["delta"] == 0


@pytest.mark.parametrize("sample", samples.load("invalid"), ids=lambda sample: sample.id)
def test_invalid_sample_is_refused_with_a_readable_message(
    api_client: client.ApiClient, namespace: str, sample: samples.Sample
) -> None:
    with pytest.raises(ApiException) as refused:
        hush_resources.create(api_client, namespace, copy.deepcopy(sample.manifest))
    assert refused.value.status == 422, refused.value.body
    message = json.loads(refused.value.body)["message"]
    assert sample.expected_error is not None
    assert sample.expected_error in message, message


def test_printer_columns(api_client: client.ApiClient, namespace: str) -> None:
    budget = next(s for s in samples.load("valid") if s.id == "privacybudget-census")
    hush_resources.create(api_client, namespace, copy.deepcopy(budget.manifest))
    table = hush_resources.table(api_client, namespace, "PrivacyBudget")
    names = [column["name"] for column in table["columnDefinitions"]]
    assert names[:1] == ["Name"]
    assert [name.upper() for name in names[1:]] == [
        "DATASET", "EPSILON", "SPENT", "REMAINING", "TEAMS", "STATUS", "AGE",
    ]  # fmt: skip
    row = table["rows"][0]["cells"]
    assert row[:3] == ["census-2020", "census-2020", 4]


def test_status_is_a_subresource(api_client: client.ApiClient, namespace: str) -> None:
    """A spec write cannot set status: only writes to /status can (the ledger relies on it)."""
    manifest = {
        "apiVersion": "hush.dev/v1alpha1",
        "kind": "PrivacyBudget",
        "metadata": {"name": "no-status-through-spec"},
        "spec": {"dataset": "d", "epsilon": 1},
        "status": {"state": "Exhausted"},
    }
    created = hush_resources.create(api_client, namespace, manifest)
    assert "status" not in created or created["status"].get("state") != "Exhausted"
