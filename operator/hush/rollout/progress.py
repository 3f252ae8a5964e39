"""How far a policy's rollout has got: per workload, then the ``Rollout*`` conditions.

A pod is *updated* when the injector stamped it with the policy's current hash, *stale*
otherwise (including pods still terminating: until an old pod is gone it can still
answer, though its sidecar refuses to release). A workload is

- ``Complete`` when it has no stale pod and at least as many updated pods as it wants;
- ``Stalled`` when its controller says it cannot progress: a Deployment's
  ``ReplicaFailure=True`` (e.g. a ResourceQuota forbids the new pods) or
  ``Progressing=False`` (``ProgressDeadlineExceeded``), with the controller's message;
- ``Progressing`` otherwise.

The policy is ``RolloutComplete`` when every workload is complete (vacuously, with none),
``RolloutStalled`` when any is stalled, naming it and why.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from hush.rollout import trigger

State = Literal["Complete", "Progressing", "Stalled"]
ROLLOUT_COMPLETE = "RolloutComplete"
ROLLOUT_STALLED = "RolloutStalled"


@dataclasses.dataclass(frozen=True, kw_only=True)
class WorkloadRollout:
    kind: str
    name: str
    desired_hash: str
    updated_pods: int
    stale_pods: int
    total_pods: int
    desired_pods: int
    state: State
    message: str = ""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConditionVerdict:
    type: str
    status: Literal["True", "False"]
    reason: str
    message: str


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _terminating(pod: Mapping[str, Any]) -> bool:
    return bool(_mapping(pod.get("metadata")).get("deletionTimestamp"))


def desired_pods(workload: Mapping[str, Any]) -> int:
    if workload.get("kind") == "DaemonSet":
        return int(_mapping(workload.get("status")).get("desiredNumberScheduled") or 0)
    replicas = _mapping(workload.get("spec")).get("replicas")
    return 1 if replicas is None else int(replicas)


def _stall(workload: Mapping[str, Any]) -> str | None:
    """The controller's own reason why the workload cannot progress, if it gave one."""
    for condition in _mapping(workload.get("status")).get("conditions") or []:
        kind, status = condition.get("type"), condition.get("status")
        if kind == "ReplicaFailure" and status == "True":
            return f"{condition.get('reason')}: {condition.get('message')}"
        if kind == "Progressing" and status == "False":
            return f"{condition.get('reason')}: {condition.get('message')}"
    return None


def workload_rollout(
    workload: Mapping[str, Any], pods: Iterable[Mapping[str, Any]], desired_hash: str
) -> WorkloadRollout:
    pods = list(pods)
    updated = sum(
        1 for pod in pods if not _terminating(pod) and trigger.pod_hash(pod) == desired_hash
    )
    stale = len(pods) - updated
    wanted = desired_pods(workload)
    stall = _stall(workload)
    state: State
    if stale == 0 and updated >= wanted:
        state, message = "Complete", ""
    elif stall is not None:
        state, message = "Stalled", stall
    else:
        state, message = "Progressing", ""
    return WorkloadRollout(
        kind=str(workload.get("kind")),
        name=str(_mapping(workload.get("metadata")).get("name")),
        desired_hash=desired_hash,
        updated_pods=updated,
        stale_pods=stale,
        total_pods=len(pods),
        desired_pods=wanted,
        state=state,
        message=message,
    )


def conditions(rollouts: Sequence[WorkloadRollout]) -> tuple[ConditionVerdict, ConditionVerdict]:
    """``RolloutComplete`` and ``RolloutStalled`` for the policy."""
    stalled = [rollout for rollout in rollouts if rollout.state == "Stalled"]
    pending = [rollout for rollout in rollouts if rollout.state != "Complete"]
    if not pending:
        complete = ConditionVerdict(
            type=ROLLOUT_COMPLETE,
            status="True",
            reason="AllPodsCurrent",
            message=f"All pods of {len(rollouts)} workload(s) run the current policy hash",
        )
    else:
        stale = sum(rollout.stale_pods for rollout in pending)
        complete = ConditionVerdict(
            type=ROLLOUT_COMPLETE,
            status="False",
            reason="Stalled" if stalled else "Progressing",
            message=f"{len(pending)} of {len(rollouts)} workload(s) still rolling; "
            f"{stale} stale pod(s) left",
        )
    if stalled:
        named = "; ".join(f"{r.kind} {r.name}: {r.message}" for r in stalled[:5])
        more = f" (and {len(stalled) - 5} more)" if len(stalled) > 5 else ""
        stall = ConditionVerdict(
            type=ROLLOUT_STALLED,
            status="True",
            reason="WorkloadCannotRoll",
            message=f"{named}{more}. Fix the cause (quota, image, scheduling); "
            "stale pods cannot release answers meanwhile",
        )
    else:
        stall = ConditionVerdict(
            type=ROLLOUT_STALLED,
            status="False",
            reason="NotStalled",
            message="No workload is stalled",
        )
    return complete, stall
