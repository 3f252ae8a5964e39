"""The validating webhook's decisions that need lookups (docs/design/0011).

The static rules (labels, sensitivity values, digest pinning) live in ValidatingAdmissionPolicies
inside the apiserver; this webhook keeps what needs the API:

- ``policy-exists``: the DPPolicy that a workload's pod template names must exist;
- ``restricted-pod-access``: no ``exec``, ``attach``, ``port-forward`` or ephemeral container
  into a pod
  labelled ``hush.dev/sensitivity=restricted``, except for members of the break-glass
  group, each use recorded in an Event on the pod.

The namespace's mode (``enforce``, ``warn``, ``audit``) maps violations onto the answer
(``hush.admission.validation.decide_outcome``). Writes by the built-in controllers and of
objects being deleted are not judged, exactly as in the ValidatingAdmissionPolicies: turning
enforcement on must not block scale-ups or garbage collection of existing workloads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, Protocol

from hush.admission import review
from hush.admission import validation as rules

logger = logging.getLogger(__name__)

LOOKUP_TIMEOUT_SECONDS = 2.0
WORKLOAD_KINDS = frozenset(
    {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}
)


class Lookups(Protocol):
    async def read_policy(self, namespace: str, name: str) -> Mapping[str, Any] | None: ...

    async def read_pod(self, namespace: str, name: str) -> Mapping[str, Any] | None: ...

    async def record_event(self, pod: Mapping[str, Any], reason: str, message: str) -> None: ...


class Validator:
    """``server.Validate`` with the break-glass group from the operator's flags."""

    def __init__(self, *, break_glass_group: str | None) -> None:
        self.break_glass_group = break_glass_group

    async def __call__(self, request: review.Request, mode: str, cluster: Any) -> dict[str, Any]:
        lookups: Lookups = cluster
        if mode not in rules.ENFORCEMENT_MODES:
            return review.allow(request.uid)
        if request.sub_resource in rules.POD_SUBRESOURCES:
            return await self._pod_access(request, mode, lookups)
        if request.sub_resource or request.kind not in WORKLOAD_KINDS:
            return review.allow(request.uid)
        return await self._workload(request, mode, lookups)

    def _answer(self, request: review.Request, outcome: rules.AdmissionOutcome) -> dict[str, Any]:
        if not outcome.allowed:
            return review.deny(request.uid, outcome.message)
        return review.allow(
            request.uid,
            warnings=outcome.warnings,
            audit_annotations=outcome.audit_annotations or None,
        )

    async def _workload(
        self, request: review.Request, mode: str, lookups: Lookups
    ) -> dict[str, Any]:
        workload = request.object or {}
        metadata = workload.get("metadata") or {}
        if rules.is_system_controller(request.user.username) or metadata.get("deletionTimestamp"):
            return review.allow(request.uid)
        template = rules.pod_template(workload)
        name = ((template.get("metadata") or {}).get("annotations") or {}).get(
            rules.POLICY_ANNOTATION
        )
        exists = True
        if isinstance(name, str) and name:
            policy = await asyncio.wait_for(
                lookups.read_policy(request.namespace, name), LOOKUP_TIMEOUT_SECONDS
            )
            exists = policy is not None
        violations = rules.policy_reference_violations(
            workload, policy_exists=lambda _: exists, namespace=request.namespace
        )
        return self._answer(request, rules.decide_outcome(mode, violations))  # type: ignore[arg-type]

    async def _pod_access(
        self, request: review.Request, mode: str, lookups: Lookups
    ) -> dict[str, Any]:
        if request.sub_resource == "ephemeralcontainers":
            pod = request.old_object or request.object
        else:  # the object is Pod{Exec,Attach,PortForward}Options: look the pod up
            pod = await asyncio.wait_for(
                lookups.read_pod(request.namespace, request.name), LOOKUP_TIMEOUT_SECONDS
            )
        if pod is None:
            return review.allow(request.uid)  # nothing to get into; the apiserver says 404
        decision = rules.decide_pod_access(
            pod=pod,
            subresource=request.sub_resource,  # type: ignore[arg-type]
            username=request.user.username,
            user_groups=request.user.groups,
            break_glass_group=self.break_glass_group,
        )
        if decision.verdict == "break-glass":
            try:
                await lookups.record_event(
                    pod, rules.BREAK_GLASS_EVENT_REASON, decision.event_message
                )
            except Exception as error:
                # Break-glass without its record is not allowed: the record is the point.
                logger.warning("Could not record break-glass access: %r", error)
                return review.deny(
                    request.uid,
                    f"{request.describe()}: break-glass access could not be recorded "
                    f"({type(error).__name__}); retry",
                    code=503,
                    reason="ServiceUnavailable",
                )
            logger.warning("Allowed break-glass access: %s", decision.event_message)
            return review.allow(
                request.uid, audit_annotations={"break-glass": decision.event_message}
            )
        violations = [decision.violation] if decision.violation is not None else []
        return self._answer(request, rules.decide_outcome(mode, violations))  # type: ignore[arg-type]
