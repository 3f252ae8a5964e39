"""``build_sidecar_container``: the noise sidecar's container spec, as a pure dict.

The mutating webhook (admission issue) calls this and adds the result to the pod, with the
volume from ``build_accountant_volume``. Everything the sidecar needs is baked into the
container (invariant 6, immutable delivery): the whole configuration, including the
normalised policy spec and its hash, travels in one environment variable
(``hush.sidecar.config.ENVIRONMENT_VARIABLE``), so the pod spec alone says exactly how its
answers are noised, and a policy change means a new pod.

The container runs as non-root with a read-only root filesystem, no capabilities and the
runtime's default seccomp profile; it is ready only while its policy is current (``/readyz``
on the admin port turns 503 when the accountant reports the baked hash stale, which the
sidecar polls for every ``--policy-check-interval``, 10 s by default). The interval is an
argument rather than part of the baked configuration because it is not privacy-relevant:
a stale pod's charges are refused by the accountant whatever the interval; polling only
takes the pod out of its Service sooner.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from hush.api import dppolicy
from hush.sidecar import config

CONTAINER_NAME = "hush-sidecar"
VOLUME_NAME = "hush-accountant"
MOUNT_PATH = "/var/run/secrets/hush.dev/accountant"
TOKEN_AUDIENCE = "hush-accountant"  # noqa: S105 - an audience name
RUN_AS_USER = 65532  # "nonroot" in distroless images
DEFAULT_POLICY_CHECK_INTERVAL = "10s"

SECURITY_CONTEXT: Mapping[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": RUN_AS_USER,
    "runAsGroup": RUN_AS_USER,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "privileged": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}

DEFAULT_RESOURCES: Mapping[str, Mapping[str, str]] = {
    "requests": {"cpu": "50m", "memory": "64Mi"},
    "limits": {"cpu": "1", "memory": "256Mi"},
}


def build_sidecar_container(
    *,
    policy_name: str,
    policy_spec: Mapping[str, Any],
    policy_hash: str,
    image: str,
    accountant_url: str,
    upstream_port: int,
    listen_port: int,
    admin_port: int = 9901,
    port_name: str = "http",
    resources: Mapping[str, Mapping[str, str]] = DEFAULT_RESOURCES,
    image_pull_policy: str = "IfNotPresent",
    policy_check_interval: str = DEFAULT_POLICY_CHECK_INTERVAL,
) -> dict[str, Any]:
    """The sidecar container for a pod that runs ``policy_name`` at ``policy_hash``.

    ``policy_spec`` is normalised (defaults filled in) before it is baked, and the baked
    configuration is validated exactly as the sidecar will read it, so a pod that the webhook
    admits always starts. ``port_name`` should be the name the app's port had, so Services
    that target it by name now reach the sidecar.
    """
    spec = dppolicy.DPPolicySpec.model_validate(dict(policy_spec))
    settings = config.SidecarConfig(
        policy_name=policy_name,
        policy_hash=policy_hash,
        policy=spec,
        sidecar_image=image,
        listen_port=listen_port,
        admin_port=admin_port,
        upstream_port=upstream_port,
        accountant_url=accountant_url,
        ca_path=f"{MOUNT_PATH}/ca.crt",
        token_path=f"{MOUNT_PATH}/token",
    )
    baked = settings.to_environment()
    config.load(baked)  # refuse to bake what the sidecar would refuse to run
    config.check_interval_seconds(policy_check_interval)
    return {
        "name": CONTAINER_NAME,
        "image": image,
        "imagePullPolicy": image_pull_policy,
        "command": ["hush", "sidecar"],
        "args": ["--log-format=json", f"--policy-check-interval={policy_check_interval}"],
        "env": [
            {"name": config.ENVIRONMENT_VARIABLE, "value": baked},
            {"name": "HUSH_POLICY_HASH", "value": policy_hash},
        ],
        "ports": [
            {"name": port_name, "containerPort": listen_port, "protocol": "TCP"},
            {"name": "hush-admin", "containerPort": admin_port, "protocol": "TCP"},
        ],
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": admin_port},
            "periodSeconds": 5,
            "failureThreshold": 1,
            "timeoutSeconds": 2,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": admin_port},
            "periodSeconds": 10,
            "failureThreshold": 3,
            "timeoutSeconds": 2,
        },
        "resources": {kind: dict(values) for kind, values in resources.items()},
        "securityContext": copy.deepcopy(SECURITY_CONTEXT),
        "volumeMounts": [{"name": VOLUME_NAME, "mountPath": MOUNT_PATH, "readOnly": True}],
    }


def build_accountant_volume(
    *, ca_config_map: str, ca_key: str = "ca.crt", expiration_seconds: int = 3600
) -> dict[str, Any]:
    """The projected volume the sidecar mounts: an audience-bound token and the CA."""
    return {
        "name": VOLUME_NAME,
        "projected": {
            "defaultMode": 0o444,
            "sources": [
                {
                    "serviceAccountToken": {
                        "audience": TOKEN_AUDIENCE,
                        "expirationSeconds": expiration_seconds,
                        "path": "token",
                    }
                },
                {
                    "configMap": {
                        "name": ca_config_map,
                        "items": [{"key": ca_key, "path": "ca.crt"}],
                    }
                },
            ],
        },
    }
