"""Server-side apply of the one pod-template annotation Hush owns on workloads.

Apply (``application/apply-patch+yaml``) under the field manager ``hush-operator`` with
``force``: the body names only ``spec.template.metadata.annotations[hush.dev/policy-rollout]``,
so Hush owns exactly that field and nothing else; GitOps tools that ignore this manager's
fields stay in sync. JSON is valid YAML, so the body is sent as JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kubernetes

from hush.kube import client


def apply_template_annotation(
    body: Mapping[str, Any], *, field_manager: str, timeout: float = 10.0
) -> None:
    """Server-side apply ``body`` (an apps/v1 workload fragment) as ``field_manager``."""
    api = kubernetes.client.AppsV1Api(client.api_client())
    patchers = {
        "Deployment": api.patch_namespaced_deployment,
        "StatefulSet": api.patch_namespaced_stateful_set,
        "DaemonSet": api.patch_namespaced_daemon_set,
    }
    metadata = body["metadata"]
    patchers[str(body["kind"])](
        metadata["name"],
        metadata["namespace"],
        dict(body),
        field_manager=field_manager,
        force=True,
        _content_type="application/apply-patch+yaml",
        _request_timeout=timeout,
    )
