"""A configured official Kubernetes client and the few calls Hush makes with it.

kopf watches and patches the objects it handles; this module covers what kopf does not:
writing the status of an object other than the one being handled (a DPPolicy when its
PrivacyBudget changes). Configuration comes from the in-cluster ServiceAccount when
present, else from ``KUBECONFIG``/``~/.kube/config``, the same way kopf logs in.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import kubernetes
from kubernetes.client import exceptions


@functools.cache
def api_client() -> kubernetes.client.ApiClient:
    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
    return kubernetes.client.ApiClient()


class ObjectGoneError(Exception):
    """The object was deleted before the write reached it."""


def patch_custom_status(
    *,
    group: str,
    version: str,
    plural: str,
    namespace: str,
    name: str,
    status: Mapping[str, Any],
) -> None:
    """Merge-patch the status subresource of one namespaced custom object."""
    api = kubernetes.client.CustomObjectsApi(api_client())
    try:
        api.patch_namespaced_custom_object_status(
            group, version, namespace, plural, name, {"status": dict(status)}
        )
    except exceptions.ApiException as error:
        if error.status == 404:
            raise ObjectGoneError(f"{plural}/{name} in {namespace} no longer exists") from error
        raise
