"""A policy change rolls the workloads that use it (real Deployment controller + kwok)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from hush.rollout import trigger
from tests import argocd_health

import hush_resources
import spending
import waiting
import webhook_setup

APP_IMAGE = "registry.invalid/app@sha256:" + "a" * 64
ROLLOUT_TIMEOUT = 180


@pytest.fixture(scope="module")
def operator_running(
    api_client: client.ApiClient, kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    hush_resources.install_crds(api_client)
    directory = tmp_path_factory.mktemp("rollout")
    with webhook_setup.operator_with_webhooks(api_client, kubeconfig, directory) as running:
        yield running


def _deployment(name: str, replicas: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {
                    "labels": {"app": name},
                    "annotations": {"hush.dev/policy": "survey"},
                },
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "image": APP_IMAGE,
                            "ports": [{"name": "http", "containerPort": 8080}],
                        }
                    ]
                },
            },
        },
    }


def _setup_policy(api_client: client.ApiClient, namespace: str) -> str:
    hush_resources.create(
        api_client, namespace, spending.budget_manifest("survey", team_epsilon=1.0)
    )
    hush_resources.create(
        api_client,
        namespace,
        spending.count_policy_manifest("survey", budget="survey", epsilon=0.1),
    )
    policy = hush_resources.wait_for_condition(
        api_client, namespace, "DPPolicy", "survey", status="True", reason="Accepted"
    )
    return str(policy["status"]["policyHash"])


def _change_policy(api_client: client.ApiClient, namespace: str, old_hash: str) -> str:
    policy = hush_resources.get(api_client, namespace, "DPPolicy", "survey")
    routes = policy["spec"]["routes"]
    routes[0]["epsilon"] = 0.2
    hush_resources.patch_spec(api_client, namespace, "DPPolicy", "survey", {"routes": routes})

    def new_hash() -> str | None:
        current = hush_resources.get(api_client, namespace, "DPPolicy", "survey")
        value = (current.get("status") or {}).get("policyHash")
        return str(value) if value and value != old_hash else None

    return str(waiting.wait_for(new_hash, timeout=60, description="the new policy hash"))


def _pod_hashes(api_client: client.ApiClient, namespace: str) -> dict[str, str | None]:
    pods = client.CoreV1Api(api_client).list_namespaced_pod(
        namespace, label_selector="hush.dev/policy=survey"
    )
    return {
        pod.metadata.name: (pod.metadata.annotations or {}).get(trigger.POLICY_HASH_ANNOTATION)
        for pod in pods.items
    }


def _rollout_condition(
    api_client: client.ApiClient,
    namespace: str,
    condition_type: str,
    status: str,
    desired: str,
    workloads: int = 1,
) -> dict[str, Any] | None:
    """The policy once ``condition_type`` is ``status`` at ``desired`` for at least
    ``workloads`` workloads (with none seen yet, RolloutComplete holds vacuously)."""
    policy = hush_resources.get(api_client, namespace, "DPPolicy", "survey")
    rollout = (policy.get("status") or {}).get("rollout") or {}
    found = hush_resources.condition(policy, condition_type)
    if (
        rollout.get("desiredHash") == desired
        and rollout.get("totalWorkloads", 0) >= workloads
        and found
        and found["status"] == status
    ):
        return policy
    return None


def test_a_policy_change_rolls_every_deployment_that_uses_it(
    api_client: client.ApiClient, namespace: str, operator_running: dict[str, Any]
) -> None:
    old_hash = _setup_policy(api_client, namespace)
    apps = client.AppsV1Api(api_client)
    names = ["web-a", "web-b", "web-c"]
    for name in names:
        apps.create_namespaced_deployment(namespace, _deployment(name))
    waiting.wait_for(
        lambda: (
            _rollout_condition(api_client, namespace, "RolloutComplete", "True", old_hash)
            and len(_pod_hashes(api_client, namespace)) == 3
        ),
        timeout=ROLLOUT_TIMEOUT,
        description="three injected pods and RolloutComplete at the first hash",
    )
    old_pods = set(_pod_hashes(api_client, namespace))
    # Nothing was rolled for pods that were current from the start.
    for name in names:
        template = apps.read_namespaced_deployment(name, namespace).spec.template
        assert trigger.ROLLOUT_ANNOTATION not in (template.metadata.annotations or {})

    new_hash = _change_policy(api_client, namespace, old_hash)

    policy = waiting.wait_for(
        lambda: _rollout_condition(api_client, namespace, "RolloutComplete", "True", new_hash, 3),
        timeout=ROLLOUT_TIMEOUT,
        description="RolloutComplete at the new hash",
    )
    rollout = policy["status"]["rollout"]
    assert rollout["totalWorkloads"] == 3
    assert rollout["completeWorkloads"] == 3
    assert {w["name"] for w in rollout["workloads"]} == set(names)
    assert all(w["updatedPods"] == 1 and w["stalePods"] == 0 for w in rollout["workloads"])

    def only_new_pods() -> bool:
        hashes = _pod_hashes(api_client, namespace)
        return len(hashes) == 3 and set(hashes.values()) == {new_hash}

    waiting.wait_for(only_new_pods, timeout=ROLLOUT_TIMEOUT, description="old pods gone")
    assert not old_pods & set(_pod_hashes(api_client, namespace))
    for name in names:
        deployment = apps.read_namespaced_deployment(name, namespace)
        annotations = deployment.spec.template.metadata.annotations
        assert annotations[trigger.ROLLOUT_ANNOTATION] == new_hash
        managers = {entry.manager for entry in deployment.metadata.managed_fields}
        assert trigger.FIELD_MANAGER in managers
        owned = next(
            entry.fields_v1
            for entry in deployment.metadata.managed_fields
            if entry.manager == trigger.FIELD_MANAGER
        )
        # The operator's field manager owns the one annotation and nothing else.
        assert owned == {
            "f:spec": {
                "f:template": {
                    "f:metadata": {"f:annotations": {f"f:{trigger.ROLLOUT_ANNOTATION}": {}}}
                }
            }
        }
    # Each rolled Deployment says so in its Events (kubectl describe deployment).
    events = client.CoreV1Api(api_client).list_namespaced_event(namespace).items
    rolled = {
        event.involved_object.name: event
        for event in events
        if event.reason == "PolicyRollout" and event.involved_object.kind == "Deployment"
    }
    assert set(rolled) == set(names)
    for name, event in rolled.items():
        assert event.type == "Normal"
        assert event.message == (
            f"Rolling Deployment {name} to DPPolicy survey hash {new_hash}: "
            "its pods run a stale policy"
        )


def test_a_deployment_that_cannot_roll_is_reported_stalled(
    api_client: client.ApiClient, namespace: str, operator_running: dict[str, Any]
) -> None:
    old_hash = _setup_policy(api_client, namespace)
    client.AppsV1Api(api_client).create_namespaced_deployment(namespace, _deployment("tight"))
    waiting.wait_for(
        lambda: _rollout_condition(api_client, namespace, "RolloutComplete", "True", old_hash),
        timeout=ROLLOUT_TIMEOUT,
        description="RolloutComplete at the first hash",
    )
    # A quota of exactly the running pod: the surge pod of the new ReplicaSet is forbidden.
    client.CoreV1Api(api_client).create_namespaced_resource_quota(
        namespace,
        {"metadata": {"name": "one-pod"}, "spec": {"hard": {"pods": "1"}}},
    )

    def quota_counted() -> bool:
        quota = client.CoreV1Api(api_client).read_namespaced_resource_quota("one-pod", namespace)
        return bool(quota.status and quota.status.used and quota.status.used.get("pods") == "1")

    waiting.wait_for(quota_counted, timeout=60, description="the quota to count the pod")
    new_hash = _change_policy(api_client, namespace, old_hash)

    policy = waiting.wait_for(
        lambda: _rollout_condition(api_client, namespace, "RolloutStalled", "True", new_hash),
        timeout=ROLLOUT_TIMEOUT,
        description="RolloutStalled",
    )
    stalled = hush_resources.condition(policy, "RolloutStalled")
    assert stalled is not None
    assert "Deployment tight" in stalled["message"]
    assert "exceeded quota" in stalled["message"]
    complete = hush_resources.condition(policy, "RolloutComplete")
    assert complete is not None
    assert complete["status"] == "False"
    (workload,) = policy["status"]["rollout"]["workloads"]
    assert workload["state"] == "Stalled"
    assert workload["stalePods"] == 1


def test_an_admin_edit_of_a_running_sidecar_is_reported_as_drift(
    api_client: client.ApiClient, namespace: str, operator_running: dict[str, Any]
) -> None:
    current = _setup_policy(api_client, namespace)
    client.AppsV1Api(api_client).create_namespaced_deployment(namespace, _deployment("edited"))
    waiting.wait_for(
        lambda: _rollout_condition(api_client, namespace, "RolloutComplete", "True", current),
        timeout=ROLLOUT_TIMEOUT,
        description="RolloutComplete",
    )
    (pod_name,) = _pod_hashes(api_client, namespace)
    core = client.CoreV1Api(api_client)
    core.patch_namespaced_pod(
        pod_name,
        namespace,
        {
            "spec": {
                "initContainers": [
                    {
                        "name": "hush-sidecar",
                        "image": "registry.invalid/not-hush@sha256:" + "e" * 64,
                    }
                ]
            }
        },
    )

    def drift_reported() -> dict[str, Any] | None:
        policy = hush_resources.get(api_client, namespace, "DPPolicy", "survey")
        drift = (policy.get("status") or {}).get("drift") or {}
        return drift if drift.get("driftedPods") == 1 else None

    drift = waiting.wait_for(drift_reported, timeout=60, description="drift in DPPolicy status")
    assert drift["pods"] == [{"name": pod_name, "reasons": ["ImageChanged"]}]

    def drift_event() -> Any:
        events = core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={pod_name},reason=SidecarDrift"
        )
        return events.items[0] if events.items else None

    event = waiting.wait_for(drift_event, timeout=30, description="a SidecarDrift Event")
    assert "ImageChanged" in event.message


def test_argocd_health_checks_on_real_objects(
    api_client: client.ApiClient, namespace: str, operator_running: dict[str, Any]
) -> None:
    """The shipped Lua health checks, run in Lua 5.4 on objects read from this cluster."""
    old_hash = _setup_policy(api_client, namespace)
    budget = hush_resources.get(api_client, namespace, "PrivacyBudget", "survey")
    assert argocd_health.health("hush.dev", "PrivacyBudget", budget)[0] == "Healthy"

    apps = client.AppsV1Api(api_client)
    apps.create_namespaced_deployment(namespace, _deployment("paused"))
    waiting.wait_for(
        lambda: _rollout_condition(api_client, namespace, "RolloutComplete", "True", old_hash),
        timeout=ROLLOUT_TIMEOUT,
        description="RolloutComplete at the first hash",
    )
    policy = hush_resources.get(api_client, namespace, "DPPolicy", "survey")
    assert argocd_health.health("hush.dev", "DPPolicy", policy)[0] == "Healthy"
    # A paused Deployment does not roll: the policy stays Progressing, deterministically.
    apps.patch_namespaced_deployment("paused", namespace, {"spec": {"paused": True}})

    new_hash = _change_policy(api_client, namespace, old_hash)
    policy = waiting.wait_for(
        lambda: _rollout_condition(api_client, namespace, "RolloutComplete", "False", new_hash),
        timeout=ROLLOUT_TIMEOUT,
        description="RolloutComplete=False while the Deployment is paused",
    )
    status, message = argocd_health.health("hush.dev", "DPPolicy", policy)
    assert status == "Progressing"
    assert "Rolling out" in message

    hush_resources.create(
        api_client,
        namespace,
        spending.count_policy_manifest("orphan", budget="missing", epsilon=0.1),
    )
    orphan = hush_resources.wait_for_condition(
        api_client, namespace, "DPPolicy", "orphan", status="False", reason="BudgetNotFound"
    )
    status, message = argocd_health.health("hush.dev", "DPPolicy", orphan)
    assert status == "Degraded"
    assert "BudgetNotFound" in message
