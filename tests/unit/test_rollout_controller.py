"""The rollout controller's memory of what it rolled, and the Events it posts.

``hush.controllers.rollout`` with fake I/O: every API call is an injected coroutine that
records what it was asked.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import pytest

from hush.controllers import rollout
from hush.rollout import trigger

OLD, NEW = "sha256:old", "sha256:new"


def _policy() -> dict[str, Any]:
    return {
        "apiVersion": "hush.dev/v1alpha1",
        "kind": "DPPolicy",
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


@dataclasses.dataclass
class FakeApi:
    applied: list[Mapping[str, Any]] = dataclasses.field(default_factory=list)
    statuses: list[Mapping[str, Any]] = dataclasses.field(default_factory=list)
    # (kind, name, Event type, reason, message)
    events: list[tuple[str, str, str, str, str]] = dataclasses.field(default_factory=list)
    events_fail: bool = False

    async def apply_rollout(self, body: Mapping[str, Any]) -> None:
        self.applied.append(body)

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self.statuses.append(status)

    async def report_drift(self, pod: Mapping[str, Any], message: str) -> None:
        return None

    async def post_event(
        self, involved: Mapping[str, Any], event_type: str, reason: str, message: str
    ) -> None:
        if self.events_fail:
            raise RuntimeError("events are forbidden")
        name = involved["metadata"]["name"]
        self.events.append((involved["kind"], name, event_type, reason, message))

    def controller(self) -> rollout.RolloutController:
        return rollout.RolloutController(
            apply_rollout=self.apply_rollout,
            patch_policy_status=self.patch_status,
            report_drift=self.report_drift,
            post_event=self.post_event,
            sidecar_image=None,
        )


async def test_a_workload_created_again_under_the_same_name_rolls_again() -> None:
    api = FakeApi()
    controller = api.controller()
    controller.observe_policy("ADDED", _policy())
    controller.observe_workload("ADDED", _deployment("uid-1"))
    controller.observe_pod("ADDED", _stale_pod("web-1"))
    await controller.reconcile(("team-a", "survey"))
    # Not again while the same object is on its way to the hash.
    await controller.reconcile(("team-a", "survey"))
    assert len(api.applied) == 1

    # Deleted and created again (same name, new uid, pods of the old hash again).
    controller.observe_pod("DELETED", _stale_pod("web-1"))
    controller.observe_workload("DELETED", _deployment("uid-1"))
    controller.observe_workload("ADDED", _deployment("uid-2"))
    controller.observe_pod("ADDED", _stale_pod("web-2"))
    await controller.reconcile(("team-a", "survey"))
    assert len(api.applied) == 2


async def test_each_roll_is_a_normal_event_on_the_workload_naming_policy_and_hash() -> None:
    api = FakeApi()
    controller = api.controller()
    controller.observe_policy("ADDED", _policy())
    controller.observe_workload("ADDED", _deployment("uid-1"))
    controller.observe_pod("ADDED", _stale_pod("web-1"))
    await controller.reconcile(("team-a", "survey"))
    await controller.reconcile(("team-a", "survey"))  # nothing rolls again: no second Event
    assert api.events == [
        (
            "Deployment",
            "web",
            "Normal",
            "PolicyRollout",
            f"Rolling Deployment web to DPPolicy survey hash {NEW}: its pods run a stale policy",
        )
    ]


async def test_an_event_that_cannot_be_posted_changes_nothing_else(
    caplog: pytest.LogCaptureFixture,
) -> None:
    api = FakeApi(events_fail=True)
    controller = api.controller()
    controller.observe_policy("ADDED", _policy())
    controller.observe_workload("ADDED", _stalled(_deployment("uid-1")))
    controller.observe_pod("ADDED", _stale_pod("web-1"))
    assert await controller.reconcile(("team-a", "survey"))
    await controller.reconcile(("team-a", "survey"))
    assert len(api.applied) == 1  # rolled once, remembered although its Event failed
    assert _condition(api.statuses[-1], "RolloutStalled")["status"] == "True"
    assert "Could not post PolicyRollout Event for web" in caplog.text
    assert "Could not post RolloutStalled Event for survey" in caplog.text


def _stalled(deployment: dict[str, Any]) -> dict[str, Any]:
    deployment["status"] = {
        "conditions": [
            {
                "type": "ReplicaFailure",
                "status": "True",
                "reason": "FailedCreate",
                "message": 'pods "web-x" is forbidden: exceeded quota: pods',
            }
        ]
    }
    return deployment


def _condition(status: Mapping[str, Any], condition_type: str) -> Mapping[str, Any]:
    (found,) = [c for c in status["conditions"] if c["type"] == condition_type]
    return found


def _with_conditions(status: Mapping[str, Any]) -> dict[str, Any]:
    """The policy as the watch shows it once the controller's status write landed."""
    policy = _policy()
    policy["status"]["conditions"] = status["conditions"]
    return policy


async def test_a_stall_is_a_warning_event_on_the_policy_once_until_it_recovers() -> None:
    api = FakeApi()
    controller = api.controller()
    key = ("team-a", "survey")
    controller.observe_policy("ADDED", _policy())
    controller.observe_workload("ADDED", _deployment("uid-1"))
    controller.observe_pod("ADDED", _stale_pod("web-1"))
    await controller.reconcile(key)
    assert [event[3] for event in api.events] == ["PolicyRollout"]  # progressing, not stalled

    controller.observe_workload("MODIFIED", _stalled(_deployment("uid-1")))
    await controller.reconcile(key)
    stalled = _condition(api.statuses[-1], "RolloutStalled")
    assert stalled["status"] == "True"
    assert api.events[1:] == [
        ("DPPolicy", "survey", "Warning", "RolloutStalled", stalled["message"])
    ]
    assert "exceeded quota" in stalled["message"]

    # Rechecks while stalled, before and after the watch shows the written status: no repeat.
    await controller.reconcile(key)
    controller.observe_policy("MODIFIED", _with_conditions(api.statuses[-1]))
    await controller.reconcile(key)
    assert len(api.events) == 2

    # Recovered (the quota was raised), then stalled again: a new Event.
    controller.observe_workload("MODIFIED", _deployment("uid-1"))
    await controller.reconcile(key)
    assert _condition(api.statuses[-1], "RolloutStalled")["status"] == "False"
    controller.observe_policy("MODIFIED", _with_conditions(api.statuses[-1]))
    controller.observe_workload("MODIFIED", _stalled(_deployment("uid-1")))
    await controller.reconcile(key)
    assert [event[3] for event in api.events] == [
        "PolicyRollout",
        "RolloutStalled",
        "RolloutStalled",
    ]


async def test_a_stall_the_status_already_reports_is_not_told_again_after_a_restart() -> None:
    api = FakeApi()
    first = api.controller()
    key = ("team-a", "survey")
    first.observe_policy("ADDED", _policy())
    first.observe_workload("ADDED", _stalled(_deployment("uid-1")))
    first.observe_pod("ADDED", _stale_pod("web-1"))
    await first.reconcile(key)
    assert [event[3] for event in api.events] == ["PolicyRollout", "RolloutStalled"]

    restarted = api.controller()  # a new operator process: only the status remembers
    restarted.observe_policy("ADDED", _with_conditions(api.statuses[-1]))
    restarted.observe_workload("ADDED", _stalled(_deployment("uid-1")))
    restarted.observe_pod("ADDED", _stale_pod("web-1"))
    await restarted.reconcile(key)
    assert [event[3] for event in api.events] == [
        "PolicyRollout",
        "RolloutStalled",
        "PolicyRollout",  # its memory of what it rolled is gone too; rolling is idempotent
    ]
