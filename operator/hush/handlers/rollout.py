"""Feed the rollout controller from kopf's watches; start and stop it with the operator.

Handlers are async: the controller schedules its work on the operator's event loop.
Pods are watched only with the ``hush.dev/policy`` label (the injector sets it), workloads
all (a pod-template annotation cannot be selected server-side); each handler only hands
the event body to ``hush.controllers.rollout``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
from collections.abc import Mapping
from typing import Any

import kopf

from hush.controllers import rollout
from hush.handlers import resources
from hush.kube import client, workloads
from hush.rollout import trigger
from hush.webhook import service as webhook_service

# Rolling 100 Deployments is 100 apply calls: on the default executor (min(32, cpus + 4)
# threads, shared with every other blocking call) they queue; their own pool of
# MAX_CONCURRENT_APPLIES threads lets them all be in flight at once (docs/benchmarks.md
# "Rollouts").
_APPLY_POOL = concurrent.futures.ThreadPoolExecutor(
    max_workers=rollout.MAX_CONCURRENT_APPLIES, thread_name_prefix="hush-rollout-apply"
)


async def _apply_rollout(body: Mapping[str, Any]) -> None:
    await asyncio.get_running_loop().run_in_executor(
        _APPLY_POOL,
        functools.partial(
            workloads.apply_template_annotation, body, field_manager=trigger.FIELD_MANAGER
        ),
    )


async def _patch_policy_status(namespace: str, name: str, status: Mapping[str, Any]) -> None:
    with contextlib.suppress(client.ObjectGoneError):
        await asyncio.to_thread(
            client.patch_custom_status,
            group=resources.DP_POLICIES[0],
            version=resources.DP_POLICIES[1],
            plural=resources.DP_POLICIES[2],
            namespace=namespace,
            name=name,
            status=status,
        )


async def _report_drift(pod: Mapping[str, Any], message: str) -> None:
    await asyncio.to_thread(
        client.create_event,
        involved={"apiVersion": "v1", "kind": "Pod", "metadata": pod["metadata"]},
        reason="SidecarDrift",
        message=message,
    )


async def _post_event(
    involved: Mapping[str, Any], event_type: str, reason: str, message: str
) -> None:
    await asyncio.to_thread(
        client.create_event,
        involved={
            "apiVersion": involved["apiVersion"],
            "kind": involved["kind"],
            "metadata": involved["metadata"],
        },
        reason=reason,
        message=message,
        event_type=event_type,
    )


@functools.cache
def controller() -> rollout.RolloutController:
    injection = webhook_service.current().options.injection
    return rollout.RolloutController(
        apply_rollout=_apply_rollout,
        patch_policy_status=_patch_policy_status,
        report_drift=_report_drift,
        post_event=_post_event,
        sidecar_image=injection.image if injection is not None else None,
    )


@kopf.on.event(*resources.DP_POLICIES, id="rollout_policy")
async def rollout_policy(type: str | None, body: kopf.Body, **_: Any) -> None:
    controller().observe_policy(type, body)


@kopf.on.event("apps", "v1", "deployments", id="rollout_deployment")
@kopf.on.event("apps", "v1", "statefulsets", id="rollout_statefulset")
@kopf.on.event("apps", "v1", "daemonsets", id="rollout_daemonset")
async def rollout_workload(type: str | None, body: kopf.Body, **_: Any) -> None:
    controller().observe_workload(type, body)


@kopf.on.event("", "v1", "pods", labels={rollout.POLICY_LABEL: kopf.PRESENT}, id="rollout_pod")
async def rollout_pod(type: str | None, body: kopf.Body, **_: Any) -> None:
    controller().observe_pod(type, body)


@kopf.on.cleanup(id="rollout_stop")
async def rollout_stop(**_: Any) -> None:
    await controller().stop()
