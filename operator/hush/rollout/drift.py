"""Drift: pods whose sidecar is not what the policy and the injector would produce now.

A pod labelled ``hush.dev/policy`` was injected (the injector sets the label). It has
drifted when, although it runs the policy's *current* hash (a stale hash is a rollout in
progress, not drift):

- ``SidecarMissing`` — no ``hush-sidecar`` container (the injector was bypassed);
- ``StampMissing`` — ``hush.dev/injected`` or ``hush.dev/policy-hash`` is gone;
- ``ImageChanged`` — the sidecar image is not the injector's (an admin ``kubectl patch``
  or ``set image`` of a running pod: the one container field a running pod lets you edit);
- ``ConfigMismatch`` — the baked configuration's hash is not the pod's stamp;
- ``SecurityContextChanged`` — the sidecar's securityContext is not the restrictive one;
- ``EphemeralContainers`` — someone attached a debug container, which shares the pod's
  network and could read the app's raw answers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from hush.injection import sidecar

INJECTED_ANNOTATION = "hush.dev/injected"
POLICY_HASH_ANNOTATION = "hush.dev/policy-hash"
CONFIG_VARIABLE = "HUSH_SIDECAR_CONFIG"


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


EXPECTED_SECURITY_CONTEXT = sidecar.SECURITY_CONTEXT


def _baked_hash(container: Mapping[str, Any]) -> str | None:
    for variable in container.get("env") or []:
        if _mapping(variable).get("name") == CONFIG_VARIABLE:
            try:
                baked = json.loads(str(variable.get("value")))
            except ValueError:
                return None
            value = _mapping(baked).get("policyHash")
            return value if isinstance(value, str) else None
    return None


def drift_reasons(pod: Mapping[str, Any], *, current_hash: str, image: str | None) -> list[str]:
    """Why ``pod`` has drifted (empty: it has not, or it is stale and rolling instead)."""
    metadata = _mapping(pod.get("metadata"))
    annotations = _mapping(metadata.get("annotations"))
    spec = _mapping(pod.get("spec"))
    stamped_hash = annotations.get(POLICY_HASH_ANNOTATION)
    if isinstance(stamped_hash, str) and stamped_hash != current_hash:
        return []  # stale: the rollout replaces it
    reasons: list[str] = []
    if INJECTED_ANNOTATION not in annotations or stamped_hash is None:
        reasons.append("StampMissing")
    containers = [
        _mapping(c) for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    ]
    found = next((c for c in containers if c.get("name") == sidecar.CONTAINER_NAME), None)
    if found is None:
        reasons.append("SidecarMissing")
    else:
        if image is not None and found.get("image") != image:
            reasons.append("ImageChanged")
        if _baked_hash(found) != (stamped_hash or current_hash):
            reasons.append("ConfigMismatch")
        if _mapping(found.get("securityContext")) != EXPECTED_SECURITY_CONTEXT:
            reasons.append("SecurityContextChanged")
    if spec.get("ephemeralContainers"):
        reasons.append("EphemeralContainers")
    return reasons
