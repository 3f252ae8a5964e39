"""Rollout decisions (``hush.rollout.trigger``) and progress (``hush.rollout.progress``)."""

from __future__ import annotations

from typing import Any

import pytest

from hush.rollout import drift, progress, selectors, trigger

OLD, NEW = "sha256:old", "sha256:new"


def _deployment(
    *, rollout: str | None = None, replicas: int = 2, conditions: list[Any] | None = None
) -> dict[str, Any]:
    annotations = {"hush.dev/policy": "survey"}
    if rollout is not None:
        annotations[trigger.ROLLOUT_ANNOTATION] = rollout
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "team-a"},
        "spec": {
            "replicas": replicas,
            "template": {"metadata": {"annotations": annotations}, "spec": {}},
        },
        "status": {"conditions": conditions or []},
    }


def _pod(policy_hash: str | None, *, terminating: bool = False) -> dict[str, Any]:
    metadata: dict[str, Any] = {"annotations": {}}
    if policy_hash is not None:
        metadata["annotations"][trigger.POLICY_HASH_ANNOTATION] = policy_hash
    if terminating:
        metadata["deletionTimestamp"] = "2026-11-22T00:00:00Z"
    return {"metadata": metadata}


def test_a_workload_with_stale_pods_rolls_once() -> None:
    assert trigger.uses_policy(_deployment(), "survey")
    assert not trigger.uses_policy(_deployment(), "other")
    assert trigger.needs_rollout(_deployment(), [_pod(OLD), _pod(NEW)], NEW)
    # Asked already: the new ReplicaSet is on its way.
    assert not trigger.needs_rollout(_deployment(rollout=NEW), [_pod(OLD)], NEW)
    # A second change while rolling asks again.
    assert trigger.needs_rollout(_deployment(rollout=NEW), [_pod(NEW)], "sha256:newer")


def test_a_workload_whose_pods_are_current_is_not_touched() -> None:
    assert not trigger.needs_rollout(_deployment(), [_pod(NEW), _pod(NEW)], NEW)
    assert not trigger.needs_rollout(_deployment(), [], NEW)


def test_the_apply_body_names_only_the_rollout_annotation() -> None:
    assert trigger.rollout_apply_body(_deployment(), NEW) == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "team-a"},
        "spec": {"template": {"metadata": {"annotations": {trigger.ROLLOUT_ANNOTATION: NEW}}}},
    }
    with pytest.raises(ValueError, match="Job is not rolled"):
        trigger.rollout_apply_body({"kind": "Job", "metadata": {}}, NEW)


@pytest.mark.parametrize(
    ("pods", "replicas", "conditions", "state", "counts"),
    [
        ([_pod(NEW), _pod(NEW)], 2, [], "Complete", (2, 0, 2)),
        ([_pod(NEW), _pod(OLD)], 2, [], "Progressing", (1, 1, 2)),
        ([_pod(NEW), _pod(NEW), _pod(NEW, terminating=True)], 2, [], "Progressing", (2, 1, 3)),
        ([_pod(NEW)], 2, [], "Progressing", (1, 0, 1)),
        (
            [_pod(OLD), _pod(OLD)],
            2,
            [
                {
                    "type": "ReplicaFailure",
                    "status": "True",
                    "reason": "FailedCreate",
                    "message": 'pods "web-2" is forbidden: exceeded quota: pods',
                }
            ],
            "Stalled",
            (0, 2, 2),
        ),
        (
            [_pod(OLD)],
            1,
            [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}],
            "Stalled",
            (0, 1, 1),
        ),
        ([], 0, [], "Complete", (0, 0, 0)),
    ],
)
def test_workload_progress(
    pods: list[dict[str, Any]],
    replicas: int,
    conditions: list[Any],
    state: str,
    counts: tuple[int, int, int],
) -> None:
    rollout = progress.workload_rollout(
        _deployment(replicas=replicas, conditions=conditions), pods, NEW
    )
    assert rollout.state == state
    assert (rollout.updated_pods, rollout.stale_pods, rollout.total_pods) == counts


def test_policy_conditions_name_the_stalled_workload_and_its_reason() -> None:
    stalled = progress.workload_rollout(
        _deployment(
            conditions=[
                {
                    "type": "ReplicaFailure",
                    "status": "True",
                    "reason": "FailedCreate",
                    "message": "exceeded quota: pods",
                }
            ]
        ),
        [_pod(OLD)],
        NEW,
    )
    done = progress.workload_rollout(_deployment(replicas=1), [_pod(NEW)], NEW)
    complete, stall = progress.conditions([done, stalled])
    assert (complete.status, complete.reason) == ("False", "Stalled")
    assert stall.status == "True"
    assert "Deployment web: FailedCreate: exceeded quota: pods" in stall.message
    complete, stall = progress.conditions([done])
    assert (complete.status, stall.status) == ("True", "False")
    complete, _ = progress.conditions([])
    assert complete.status == "True"


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ({"matchLabels": {"app": "web"}}, {"app": "web", "x": "y"}, True),
        ({"matchLabels": {"app": "web"}}, {"app": "api"}, False),
        ({"matchExpressions": [{"key": "app", "operator": "In", "values": ["a", "b"]}]},
         {"app": "b"}, True),
        ({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["a"]}]},
         {"app": "a"}, False),
        ({"matchExpressions": [{"key": "app", "operator": "Exists"}]}, {}, False),
        ({"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}, {}, True),
        ({}, {"app": "web"}, False),
        (None, {"app": "web"}, False),
    ],
)  # fmt: skip
def test_selectors(selector: Any, labels: dict[str, str], expected: bool) -> None:
    assert selectors.matches(selector, labels) is expected


def _injected_pod(current: str = NEW) -> dict[str, Any]:
    from hush.admission import mutation
    from tests.unit.test_admission_mutation import POLICY, SETTINGS, _pod, apply_patch

    policy = {**POLICY}
    decided = mutation.mutate_pod(_pod(), namespace="team-a", policy=policy, settings=SETTINGS)
    pod = apply_patch(_pod(), list(decided.patch))
    pod["metadata"]["uid"] = "uid-1"
    return pod


def test_a_freshly_injected_pod_has_not_drifted() -> None:
    from tests.unit.test_admission_mutation import HASH, SETTINGS

    assert drift.drift_reasons(_injected_pod(), current_hash=HASH, image=SETTINGS.image) == []


def test_edits_and_debug_containers_are_drift_and_a_stale_pod_is_not() -> None:
    from tests.unit.test_admission_mutation import HASH, SETTINGS

    pod = _injected_pod()
    pod["spec"]["initContainers"][0]["image"] = "registry.example/evil@sha256:" + "e" * 64
    pod["spec"]["ephemeralContainers"] = [{"name": "debug", "image": "busybox"}]
    assert drift.drift_reasons(pod, current_hash=HASH, image=SETTINGS.image) == [
        "ImageChanged",
        "EphemeralContainers",
    ]
    assert drift.drift_reasons(pod, current_hash="sha256:newer", image=SETTINGS.image) == []
    bypassed = _injected_pod()
    del bypassed["spec"]["initContainers"]
    del bypassed["metadata"]["annotations"]["hush.dev/injected"]
    assert drift.drift_reasons(bypassed, current_hash=HASH, image=SETTINGS.image) == [
        "StampMissing",
        "SidecarMissing",
    ]
    loosened = _injected_pod()
    loosened["spec"]["initContainers"][0]["securityContext"]["privileged"] = True
    assert drift.drift_reasons(loosened, current_hash=HASH, image=SETTINGS.image) == [
        "SecurityContextChanged"
    ]
