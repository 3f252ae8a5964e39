"""Which workloads a policy change rolls, and the apply body that rolls them.

A workload *uses* a policy when its pod template is annotated ``hush.dev/policy: <name>``.
It must roll when one of its pods runs another policy hash than the policy's current one
(the hash the injector stamped, ``hush.dev/policy-hash``) and Hush has not already asked
it to: its template's ``hush.dev/policy-rollout`` annotation is not the current hash.

Rolling means setting that one annotation with server-side apply under the field manager
``hush-operator``: a new pod template, hence a new ReplicaSet (or a StatefulSet/DaemonSet
update), whose pods the webhook injects with the current policy. Running pods are never
edited (invariant 6). The body names nothing else, so apply never takes ownership of any
other field, and Argo CD can ignore exactly this manager's fields
(``ignoreDifferences.managedFieldsManagers: [hush-operator]``).

A workload created *after* the policy changed has only current pods and is not touched:
setting the annotation on it would start a pointless second rollout.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

POLICY_ANNOTATION = "hush.dev/policy"
POLICY_HASH_ANNOTATION = "hush.dev/policy-hash"
ROLLOUT_ANNOTATION = "hush.dev/policy-rollout"
FIELD_MANAGER = "hush-operator"
ROLLED_KINDS = {"Deployment": "apps/v1", "StatefulSet": "apps/v1", "DaemonSet": "apps/v1"}


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def template_annotations(workload: Mapping[str, Any]) -> Mapping[str, str]:
    template = _mapping(_mapping(workload.get("spec")).get("template"))
    return _mapping(_mapping(template.get("metadata")).get("annotations"))


def uses_policy(workload: Mapping[str, Any], policy: str) -> bool:
    return template_annotations(workload).get(POLICY_ANNOTATION) == policy


def pod_hash(pod: Mapping[str, Any]) -> str | None:
    value = _mapping(_mapping(pod.get("metadata")).get("annotations")).get(POLICY_HASH_ANNOTATION)
    return value if isinstance(value, str) else None


def needs_rollout(
    workload: Mapping[str, Any], pods: Iterable[Mapping[str, Any]], desired_hash: str
) -> bool:
    """True when a pod runs a stale hash and Hush has not yet asked for ``desired_hash``."""
    if template_annotations(workload).get(ROLLOUT_ANNOTATION) == desired_hash:
        return False
    return any(pod_hash(pod) != desired_hash for pod in pods)


def rollout_apply_body(workload: Mapping[str, Any], desired_hash: str) -> dict[str, Any]:
    """The server-side apply body that sets only the rollout annotation."""
    kind = str(workload.get("kind"))
    if kind not in ROLLED_KINDS:
        raise ValueError(f"{kind} is not rolled by Hush (only {', '.join(ROLLED_KINDS)})")
    metadata = _mapping(workload.get("metadata"))
    return {
        "apiVersion": ROLLED_KINDS[kind],
        "kind": kind,
        "metadata": {"name": metadata.get("name"), "namespace": metadata.get("namespace")},
        "spec": {"template": {"metadata": {"annotations": {ROLLOUT_ANNOTATION: desired_hash}}}},
    }
