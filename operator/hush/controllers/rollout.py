"""The rollout controller: roll workloads when a policy's hash changes, report progress.

Fed by kopf watch events (``hush.handlers.rollout``) for DPPolicies, Deployments,
StatefulSets, DaemonSets and injected Pods (label ``hush.dev/policy``), it keeps a small
in-memory picture of each and, per policy, a debounced reconciliation:

1. every workload that uses the policy and has a stale pod gets the rollout annotation by
   server-side apply (``hush.rollout.trigger``), concurrently — 100 Deployments are
   triggered in about one round of API calls, not one after another;
2. ``DPPolicy.status.rollout`` and the ``RolloutComplete`` / ``RolloutStalled`` conditions
   are computed (``hush.rollout.progress``) and written when they changed;
3. while anything is still rolling, the policy is looked at again every
   ``RECHECK_SECONDS``, so a stall that produces no pod event is still reported.

What it does is also told with Events, for ``kubectl describe`` and event exporters: a
Normal ``PolicyRollout`` on each workload it rolls, and a Warning ``RolloutStalled`` on the
DPPolicy when its ``RolloutStalled`` condition turns True. Events are best effort: a failed
post is logged and changes nothing else (the status is the record).

Events arrive in bursts (a rollout of 100 Deployments is thousands of pod events); the
debounce coalesces them into one reconciliation per policy per ``DEBOUNCE_SECONDS``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from hush.api import common
from hush.observability import metrics
from hush.reconcile import conditions as conditions_module
from hush.rollout import drift, progress, selectors, trigger

logger = logging.getLogger(__name__)

DEBOUNCE_SECONDS = 0.3
RECHECK_SECONDS = 3.0
MAX_CONCURRENT_APPLIES = 32
MAX_LISTED_WORKLOADS = 200  # status stays small (invariant 7's spirit, for policies)
MAX_LISTED_DRIFTED_PODS = 50
POLICY_LABEL = "hush.dev/policy"
ROLLOUT_EVENT_REASON = "PolicyRollout"
STALLED_EVENT_REASON = "RolloutStalled"

PolicyKey = tuple[str, str]  # namespace, name


@dataclasses.dataclass
class PolicyState:
    generation: int
    policy_hash: str
    status: Mapping[str, Any]
    # apiVersion, kind and metadata: what an Event about the policy refers to.
    reference: Mapping[str, Any]


# post_event(involved object, Event type, reason, message); the object is a body with at
# least apiVersion, kind and metadata (namespace, name, uid).
PostEvent = Callable[[Mapping[str, Any], str, str, str], Awaitable[None]]


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _describe(error: BaseException) -> str:
    """The error with the apiserver's own message when it has one (an ApiException's body),
    so that a log reader can tell RBAC ("forbidden: User ... cannot") from a namespace
    being deleted ("forbidden: unable to create new content ... being terminated")."""
    body = getattr(error, "body", None)
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    if isinstance(body, str) and body:
        try:
            message = json.loads(body).get("message")
        except ValueError:
            message = None
        if isinstance(message, str) and message:
            return f"{type(error).__name__}: {message}"
    return repr(error)


def _uid(body: Mapping[str, Any]) -> str:
    return str(_mapping(body.get("metadata")).get("uid") or "")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class RolloutController:
    def __init__(
        self,
        *,
        apply_rollout: Callable[[Mapping[str, Any]], Awaitable[None]],
        patch_policy_status: Callable[[str, str, Mapping[str, Any]], Awaitable[None]],
        report_drift: Callable[[Mapping[str, Any], str], Awaitable[None]],
        post_event: PostEvent,
        sidecar_image: str | None,
        clock: Callable[[], datetime.datetime] = _now,
    ) -> None:
        self._apply_rollout = apply_rollout
        self._patch_policy_status = patch_policy_status
        self._report_drift = report_drift
        self._post_event = post_event
        # Policies whose RolloutStalled Event was posted and that have not recovered since:
        # the status seen by observe_policy lags behind the controller's own write.
        self._stalled: set[PolicyKey] = set()
        self._sidecar_image = sidecar_image
        self._reported_drift: set[tuple[str, str]] = set()  # (pod uid, reason)
        self._clock = clock
        self._policies: dict[PolicyKey, PolicyState] = {}
        self._workloads: dict[tuple[str, str, str], Mapping[str, Any]] = {}
        self._pods: dict[tuple[str, str], Mapping[str, Any]] = {}
        self._scheduled: dict[PolicyKey, asyncio.TimerHandle] = {}
        self._running: dict[PolicyKey, asyncio.Task[None]] = {}
        self._written: dict[PolicyKey, dict[str, Any]] = {}
        # (namespace, kind, name) -> (uid, hash) last rolled to. The uid matters: a workload
        # deleted and created again under the same name (GitOps, `make demo` re-runs) is a
        # new object whose pods must roll again, even to a hash its namesake was rolled to.
        self._applied: dict[tuple[str, str, str], tuple[str, str]] = {}

    # -- observations (called from kopf event handlers) -------------------------------

    def observe_policy(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        metadata = _mapping(body.get("metadata"))
        key = (str(metadata.get("namespace") or ""), str(metadata.get("name")))
        if event_type == "DELETED":
            self._policies.pop(key, None)
            self._written.pop(key, None)
            self._stalled.discard(key)
            return
        status = _mapping(body.get("status"))
        policy_hash = status.get("policyHash")
        if not isinstance(policy_hash, str) or not policy_hash:
            return
        self._policies[key] = PolicyState(
            generation=int(metadata.get("generation") or 0),
            policy_hash=policy_hash,
            status=dict(status),
            reference={
                "apiVersion": body.get("apiVersion"),
                "kind": body.get("kind"),
                "metadata": dict(metadata),
            },
        )
        self.touch(key)

    def observe_workload(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        metadata = _mapping(body.get("metadata"))
        namespace = str(metadata.get("namespace") or "")
        key = (namespace, str(body.get("kind")), str(metadata.get("name")))
        previous = self._workloads.get(key)
        policy = trigger.template_annotations(body).get(trigger.POLICY_ANNOTATION)
        if event_type == "DELETED":
            self._applied.pop(key, None)
        if event_type == "DELETED" or not isinstance(policy, str):
            self._workloads.pop(key, None)
        else:
            self._workloads[key] = body
            self.touch((namespace, policy))
        if previous is not None:
            old_policy = trigger.template_annotations(previous).get(trigger.POLICY_ANNOTATION)
            if isinstance(old_policy, str) and old_policy != policy:
                self.touch((namespace, old_policy))

    def observe_pod(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        metadata = _mapping(body.get("metadata"))
        namespace = str(metadata.get("namespace") or "")
        key = (namespace, str(metadata.get("name")))
        policy = _mapping(metadata.get("labels")).get(POLICY_LABEL)
        if event_type == "DELETED" or not isinstance(policy, str):
            self._pods.pop(key, None)
        else:
            self._pods[key] = body
        if isinstance(policy, str):
            self.touch((namespace, policy))

    # -- scheduling ---------------------------------------------------------------------

    def touch(self, key: PolicyKey, delay: float = DEBOUNCE_SECONDS) -> None:
        """Reconcile ``key`` after ``delay`` (coalescing: an earlier schedule stands)."""
        if key in self._scheduled or key not in self._policies:
            return
        loop = asyncio.get_running_loop()
        self._scheduled[key] = loop.call_later(delay, self._start, key)

    def _start(self, key: PolicyKey) -> None:
        self._scheduled.pop(key, None)
        running = self._running.get(key)
        if running is not None and not running.done():
            self.touch(key)  # after the running one
            return
        self._running[key] = asyncio.get_running_loop().create_task(self._reconcile_logged(key))

    async def stop(self) -> None:
        for handle in self._scheduled.values():
            handle.cancel()
        self._scheduled.clear()
        tasks = [task for task in self._running.values() if not task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _reconcile_logged(self, key: PolicyKey) -> None:
        try:
            pending = await self.reconcile(key)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("Failed to reconcile the rollout of DPPolicy %s/%s", *key)
            pending = True
        if pending:
            self.touch(key, RECHECK_SECONDS)

    # -- the reconciliation ---------------------------------------------------------------

    def _pods_of(self, namespace: str, policy: str, workload: Mapping[str, Any]) -> list[Any]:
        selector = _mapping(workload.get("spec")).get("selector")
        found = []
        for (pod_namespace, _), pod in self._pods.items():
            labels = _mapping(_mapping(pod.get("metadata")).get("labels"))
            if pod_namespace != namespace or labels.get(POLICY_LABEL) != policy:
                continue
            if selectors.matches(selector, labels):
                found.append(pod)
        return found

    async def reconcile(self, key: PolicyKey) -> bool:
        """Roll what must roll, write progress; True while the rollout is not complete."""
        state = self._policies.get(key)
        if state is None:
            return False
        namespace, policy = key
        desired = state.policy_hash
        using = sorted(
            (
                (workload_key, workload)
                for workload_key, workload in self._workloads.items()
                if workload_key[0] == namespace and trigger.uses_policy(workload, policy)
            ),
            key=lambda item: item[0],
        )
        pods = {workload_key: self._pods_of(namespace, policy, w) for workload_key, w in using}
        to_roll = [
            (workload_key, workload)
            for workload_key, workload in using
            if self._applied.get(workload_key) != (_uid(workload), desired)
            and trigger.needs_rollout(workload, pods[workload_key], desired)
        ]
        if to_roll:
            await self._roll(to_roll, desired, policy)
        rollouts = [
            progress.workload_rollout(workload, pods[workload_key], desired)
            for workload_key, workload in using
        ]
        drifted = await self._drift(key, desired)
        await self._write_status(key, state, rollouts, desired, drifted)
        return any(rollout.state != "Complete" for rollout in rollouts)

    async def _drift(self, key: PolicyKey, desired: str) -> list[tuple[str, list[str]]]:
        """Drifted pods of the policy (name, reasons); each new reason is reported once."""
        namespace, policy = key
        drifted: list[tuple[str, list[str]]] = []
        for (pod_namespace, pod_name), pod in sorted(self._pods.items()):
            labels = _mapping(_mapping(pod.get("metadata")).get("labels"))
            if pod_namespace != namespace or labels.get(POLICY_LABEL) != policy:
                continue
            reasons = drift.drift_reasons(pod, current_hash=desired, image=self._sidecar_image)
            if not reasons:
                continue
            drifted.append((pod_name, reasons))
            uid = str(_mapping(pod.get("metadata")).get("uid"))
            new = [reason for reason in reasons if (uid, reason) not in self._reported_drift]
            if new:
                message = (
                    f"Pod {pod_name}: injected sidecar drifted from DPPolicy {policy} "
                    f"({', '.join(new)}); delete the pod so its controller recreates it"
                )
                try:
                    await self._report_drift(pod, message)
                except Exception as error:  # an Event is best effort; status still says it
                    logger.warning(
                        "Could not post drift Event for %s: %s", pod_name, _describe(error)
                    )
                self._reported_drift.update((uid, reason) for reason in new)
                logger.warning("Detected sidecar drift: %s", message)
        metrics.DRIFTED_PODS.labels(namespace, policy).set(len(drifted))
        return drifted

    async def _roll(
        self,
        to_roll: list[tuple[tuple[str, str, str], Mapping[str, Any]]],
        desired: str,
        policy: str,
    ) -> None:
        limit = asyncio.Semaphore(MAX_CONCURRENT_APPLIES)

        async def roll(workload_key: tuple[str, str, str], workload: Mapping[str, Any]) -> None:
            async with limit:
                await self._apply_rollout(trigger.rollout_apply_body(workload, desired))
                self._applied[workload_key] = (_uid(workload), desired)
                await self._event(
                    workload,
                    "Normal",
                    ROLLOUT_EVENT_REASON,
                    f"Rolling {workload_key[1]} {workload_key[2]} to DPPolicy {policy} hash "
                    f"{desired}: its pods run a stale policy",
                )
            metrics.ROLLOUTS_TRIGGERED.labels(workload_key[0], policy).inc()
            logger.info(
                "Rolled %s %s/%s to policy hash %s",
                workload_key[1],
                workload_key[0],
                workload_key[2],
                desired,
            )

        results = await asyncio.gather(
            *(roll(workload_key, workload) for workload_key, workload in to_roll),
            return_exceptions=True,
        )
        for (workload_key, _), result in zip(to_roll, results, strict=True):
            if isinstance(result, BaseException):
                logger.warning(
                    "Could not roll %s %s/%s: %s", workload_key[1], workload_key[0],
                    workload_key[2], _describe(result),
                )  # fmt: skip

    async def _event(
        self, involved: Mapping[str, Any], event_type: str, reason: str, message: str
    ) -> None:
        try:
            await self._post_event(involved, event_type, reason, message)
        except Exception as error:  # best effort: the status says it too
            name = _mapping(involved.get("metadata")).get("name")
            logger.warning("Could not post %s Event for %s: %s", reason, name, _describe(error))

    async def _write_status(
        self,
        key: PolicyKey,
        state: PolicyState,
        rollouts: list[progress.WorkloadRollout],
        desired: str,
        drifted: list[tuple[str, list[str]]],
    ) -> None:
        complete, stalled = progress.conditions(rollouts)
        current = conditions_module.parse(state.status.get("conditions"))
        updated = current
        for verdict in (complete, stalled):
            updated = conditions_module.set_condition(
                updated,
                condition_type=verdict.type,
                status=verdict.status,
                reason=verdict.reason,
                message=verdict.message,
                observed_generation=state.generation,
                now=self._clock(),
            )
        listed = rollouts[:MAX_LISTED_WORKLOADS]
        rollout = {
            "desiredHash": desired,
            "totalWorkloads": len(rollouts),
            "completeWorkloads": sum(1 for r in rollouts if r.state == "Complete"),
            "unlistedWorkloads": len(rollouts) - len(listed),
            "workloads": [
                {
                    "kind": r.kind,
                    "name": r.name,
                    "desiredHash": r.desired_hash,
                    "updatedPods": r.updated_pods,
                    "stalePods": r.stale_pods,
                    "totalPods": r.total_pods,
                    "desiredPods": r.desired_pods,
                    "state": r.state,
                    **({"message": r.message[:512]} if r.message else {}),
                }
                for r in listed
            ],
        }
        drift_status = {
            "driftedPods": len(drifted),
            "pods": [
                {"name": name, "reasons": reasons}
                for name, reasons in drifted[:MAX_LISTED_DRIFTED_PODS]
            ],
        }
        changes: dict[str, Any] = {}
        if state.status.get("drift") != drift_status:
            changes["drift"] = drift_status
        if state.status.get("rollout") != rollout:
            changes["rollout"] = rollout
        condition_dump = [
            c.model_dump(mode="json", by_alias=True, exclude_none=True) for c in updated
        ]
        if state.status.get("conditions") != condition_dump:
            changes["conditions"] = condition_dump
        if changes and self._written.get(key) != changes:
            await self._patch_policy_status(key[0], key[1], changes)
            self._written[key] = changes
        await self._tell_stalled(key, state, current, stalled)

    async def _tell_stalled(
        self,
        key: PolicyKey,
        state: PolicyState,
        current: Sequence[common.Condition],
        stalled: progress.ConditionVerdict,
    ) -> None:
        """A Warning Event when RolloutStalled turns True (once, until it turns False)."""
        if stalled.status != "True":
            self._stalled.discard(key)
            return
        was_stalled = key in self._stalled or any(
            condition.type == stalled.type and condition.status == "True" for condition in current
        )
        self._stalled.add(key)
        if not was_stalled:
            await self._event(state.reference, "Warning", STALLED_EVENT_REASON, stalled.message)
            logger.warning("Rollout of DPPolicy %s/%s stalled: %s", *key, stalled.message)
