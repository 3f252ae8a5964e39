"""The rollout controller's memory of what it rolled (``hush.controllers.rollout``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hush.controllers import rollout
from hush.rollout import trigger

OLD, NEW = "sha256:old", "sha256:new"


def _policy() -> dict[str, Any]:
    return {
        "metadata": {"name": "survey", "namespace": "team-a", "generation": 2},
        "status": {"policyHash": NEW, "conditions": []},
    }


def _deployment(uid: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "team-a", "uid": uid},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"annotations": {trigger.POLICY_ANNOTATION: "survey"}}},
        },
        "status": {},
    }


def _stale_pod(name: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "team-a",
            "uid": f"pod-{name}",
            "labels": {"app": "web", rollout.POLICY_LABEL: "survey"},
            "annotations": {trigger.POLICY_HASH_ANNOTATION: OLD},
        },
        "spec": {},
    }


async def test_a_workload_created_again_under_the_same_name_rolls_again() -> None:
    applied: list[Mapping[str, Any]] = []

    async def apply_rollout(body: Mapping[str, Any]) -> None:
        applied.append(body)

    async def patch_status(namespace: str, name: str, status: Mapping[str, Any]) -> None:
        return None

    async def report_drift(pod: Mapping[str, Any], message: str) -> None:
        return None

    controller = rollout.RolloutController(
        apply_rollout=apply_rollout,
        patch_policy_status=patch_status,
        report_drift=report_drift,
        sidecar_image=None,
    )
    controller.observe_policy("ADDED", _policy())
    controller.observe_workload("ADDED", _deployment("uid-1"))
    controller.observe_pod("ADDED", _stale_pod("web-1"))
    await controller.reconcile(("team-a", "survey"))
    # Not again while the same object is on its way to the hash.
    await controller.reconcile(("team-a", "survey"))
    assert len(applied) == 1

    # Deleted and created again (same name, new uid, pods of the old hash again).
    controller.observe_pod("DELETED", _stale_pod("web-1"))
    controller.observe_workload("DELETED", _deployment("uid-1"))
    controller.observe_workload("ADDED", _deployment("uid-2"))
    controller.observe_pod("ADDED", _stale_pod("web-2"))
    await controller.reconcile(("team-a", "survey"))
    assert len(applied) == 2

    # A re-creation whose DELETED event was missed (a watch gap) is told apart by its uid.
    controller.observe_workload("MODIFIED", _deployment("uid-3"))
    await controller.reconcile(("team-a", "survey"))
    assert len(applied) == 3
    await controller.stop()
