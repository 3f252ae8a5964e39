"""A configured official Kubernetes client and the few calls Hush makes with it.

kopf watches and patches the objects it handles; this module covers what kopf does not:
writing the status of an object other than the one being handled (a DPPolicy when its
PrivacyBudget changes), the accountant's compare-and-swap writes, the leader-election
Lease and the leader's pod label, and the webhook serving certificates (their Secret and the
``caBundle`` of the webhook configurations, both written with compare-and-swap).
Configuration comes from the in-cluster ServiceAccount when present, else from
``KUBECONFIG``/``~/.kube/config``, the same way kopf logs in.
"""

from __future__ import annotations

import datetime
import functools
import json
import secrets
import urllib.parse
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


def _as_dict(value: object) -> dict[str, Any]:
    """A client model or dict as the plain JSON-shaped dict the API sent."""
    serialised = api_client().sanitize_for_serialization(value)  # type: ignore[no-untyped-call]
    if not isinstance(serialised, dict):
        raise TypeError(f"expected an object, got {type(serialised).__name__}")
    return serialised


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


class ConflictError(Exception):
    """A compare-and-swap write lost: the object changed since it was read."""


def read_custom(
    *, group: str, version: str, plural: str, namespace: str, name: str
) -> dict[str, Any] | None:
    """One namespaced custom object as a dict, or None when it does not exist."""
    api = kubernetes.client.CustomObjectsApi(api_client())
    try:
        found = _as_dict(api.get_namespaced_custom_object(group, version, namespace, plural, name))
    except exceptions.ApiException as error:
        if error.status == 404:
            return None
        raise
    return found


def replace_custom_status(
    *, group: str, version: str, plural: str, namespace: str, name: str, body: dict[str, Any]
) -> dict[str, Any]:
    """PUT the status subresource; ``body.metadata.resourceVersion`` makes it a CAS write.

    This is the accountant's hot path, so it sends pre-encoded JSON and decodes the answer
    with ``json`` directly: the generated client's per-call argument validation and
    recursive (de)serialisation of a 10-30 KiB object cost more than the request itself.
    """
    client = api_client()
    path = (
        f"/apis/{group}/{version}/namespaces/{urllib.parse.quote(namespace)}/{plural}/"
        f"{urllib.parse.quote(name)}/status"
    )
    # param_serialize adds the server, authentication and user agent; the body goes to the
    # connection pool as bytes because the generated REST layer would JSON-encode it again.
    method, url, headers, _, _ = client.param_serialize(
        "PUT",
        path,
        header_params={"Content-Type": "application/json", "Accept": "application/json"},
        auth_settings=["BearerToken"],
    )
    response = client.rest_client.pool_manager.request(
        method,
        url,
        body=json.dumps(body, separators=(",", ":")).encode(),
        headers=headers,
        preload_content=True,
        timeout=30.0,
    )
    status = int(response.status)
    if 200 <= status < 300:
        written: dict[str, Any] = json.loads(response.data)
        return written
    if status == 409:
        raise ConflictError(f"{plural}/{name} in {namespace} changed")
    if status == 404:
        raise ObjectGoneError(f"{plural}/{name} in {namespace} no longer exists")
    raise exceptions.ApiException(status=status, reason=f"PUT {path} failed")


def review_token(token: str, audiences: list[str]) -> dict[str, Any]:
    """The TokenReview status for ``token`` (authenticated, user, audiences, error)."""
    api = kubernetes.client.AuthenticationV1Api(api_client())
    review = api.create_token_review(
        kubernetes.client.V1TokenReview(
            spec=kubernetes.client.V1TokenReviewSpec(token=token, audiences=audiences)
        )
    )
    return _as_dict(review.status) if review.status is not None else {}


def read_pod(namespace: str, name: str) -> dict[str, Any] | None:
    api = kubernetes.client.CoreV1Api(api_client())
    try:
        pod = api.read_namespaced_pod(name, namespace)
    except exceptions.ApiException as error:
        if error.status == 404:
            return None
        raise
    return _as_dict(pod)


def patch_pod_labels(
    namespace: str, name: str, labels: Mapping[str, str | None], *, timeout: float
) -> None:
    """Merge-patch a pod's labels (a None value removes the label; removing an absent one
    is a no-op). ``ObjectGoneError`` when the pod does not exist. Used for the accountant
    leader's own label (``hush.accountant.leadership``)."""
    api = kubernetes.client.CoreV1Api(api_client())
    try:
        api.patch_namespaced_pod(
            name,
            namespace,
            {"metadata": {"labels": dict(labels)}},
            _content_type="application/merge-patch+json",
            _request_timeout=timeout,
        )
    except exceptions.ApiException as error:
        if error.status == 404:
            raise ObjectGoneError(f"pods/{name} in {namespace} does not exist") from error
        raise


def list_pod_names(namespace: str, *, label_selector: str, timeout: float) -> list[str]:
    """Names of the pods in ``namespace`` that match ``label_selector``."""
    api = kubernetes.client.CoreV1Api(api_client())
    pods = api.list_namespaced_pod(
        namespace, label_selector=label_selector, _request_timeout=timeout
    )
    return [str(pod.metadata.name) for pod in pods.items if pod.metadata is not None]


def create_event(
    *,
    involved: dict[str, Any],
    reason: str,
    message: str,
    event_type: str = "Warning",
    component: str = "hush-operator",
) -> None:
    """Record a core/v1 Event about ``involved`` (its apiVersion, kind, metadata)."""
    metadata = involved["metadata"]
    now = datetime.datetime.now(datetime.UTC)
    api = kubernetes.client.CoreV1Api(api_client())
    api.create_namespaced_event(
        metadata["namespace"],
        kubernetes.client.CoreV1Event(
            metadata=kubernetes.client.V1ObjectMeta(
                name=f"{metadata['name']}.{secrets.token_hex(8)}",
                namespace=metadata["namespace"],
            ),
            involved_object=kubernetes.client.V1ObjectReference(
                api_version=involved["apiVersion"],
                kind=involved["kind"],
                name=metadata["name"],
                namespace=metadata["namespace"],
                uid=metadata.get("uid"),
                resource_version=metadata.get("resourceVersion"),
            ),
            reason=reason,
            message=message[:1024],
            type=event_type,
            source=kubernetes.client.V1EventSource(component=component),
            first_timestamp=now,
            last_timestamp=now,
            count=1,
        ),
    )


# Leases go through the generic (dict in, dict out) custom-objects API rather than the typed
# CoordinationV1Api: client v37 turns a dict body into a V1Lease model and serialises its
# MicroTime fields without microseconds, which the apiserver rejects with 400 ("cannot
# parse ... as .000000"). The generic API sends the body exactly as built.
_LEASES = ("coordination.k8s.io", "v1")


def read_lease(namespace: str, name: str, *, timeout: float) -> dict[str, Any] | None:
    """The Lease as a dict, or None when it does not exist."""
    api = kubernetes.client.CustomObjectsApi(api_client())
    try:
        found = api.get_namespaced_custom_object(
            *_LEASES, namespace, "leases", name, _request_timeout=timeout
        )
    except exceptions.ApiException as error:
        if error.status == 404:
            return None
        raise
    return _as_dict(found)


def create_lease(namespace: str, body: dict[str, Any], *, timeout: float) -> dict[str, Any]:
    """Create a Lease; ``ConflictError`` when another replica created it first."""
    api = kubernetes.client.CustomObjectsApi(api_client())
    try:
        created = api.create_namespaced_custom_object(
            *_LEASES, namespace, "leases", body, _request_timeout=timeout
        )
    except exceptions.ApiException as error:
        if error.status == 409:
            name = body["metadata"]["name"]
            raise ConflictError(f"leases/{name} in {namespace} exists") from error
        raise
    return _as_dict(created)


def replace_lease(
    namespace: str, name: str, body: dict[str, Any], *, timeout: float
) -> dict[str, Any]:
    """PUT a Lease; ``body.metadata.resourceVersion`` makes it a compare-and-swap write."""
    api = kubernetes.client.CustomObjectsApi(api_client())
    try:
        written = api.replace_namespaced_custom_object(
            *_LEASES, namespace, "leases", name, body, _request_timeout=timeout
        )
    except exceptions.ApiException as error:
        if error.status == 409:
            raise ConflictError(f"leases/{name} in {namespace} changed") from error
        if error.status == 404:
            raise ObjectGoneError(f"leases/{name} in {namespace} no longer exists") from error
        raise
    return _as_dict(written)


def read_namespace_labels(name: str, *, timeout: float) -> dict[str, str] | None:
    """The labels of Namespace ``name`` (None when it does not exist)."""
    api = kubernetes.client.CoreV1Api(api_client())
    try:
        namespace = api.read_namespace(name, _request_timeout=timeout)
    except exceptions.ApiException as error:
        if error.status == 404:
            return None
        raise
    metadata = namespace.metadata
    return dict((metadata.labels if metadata is not None else None) or {})


def read_custom_with_timeout(
    *, group: str, version: str, plural: str, namespace: str, name: str, timeout: float
) -> dict[str, Any] | None:
    """``read_custom`` bounded by ``timeout`` seconds (admission lookups must be fast)."""
    api = kubernetes.client.CustomObjectsApi(api_client())
    try:
        found = api.get_namespaced_custom_object(
            group, version, namespace, plural, name, _request_timeout=timeout
        )
    except exceptions.ApiException as error:
        if error.status == 404:
            return None
        raise
    return _as_dict(found)


# -- webhook serving certificates (hush.webhook.certificates) --------------------------------


def read_secret(namespace: str, name: str, *, timeout: float) -> dict[str, Any] | None:
    """The Secret as a dict (``data`` values base64), or None when it does not exist."""
    api = kubernetes.client.CoreV1Api(api_client())
    try:
        found = api.read_namespaced_secret(name, namespace, _request_timeout=timeout)
    except exceptions.ApiException as error:
        if error.status == 404:
            return None
        raise
    return _as_dict(found)


def _secret_model(body: dict[str, Any]) -> kubernetes.client.V1Secret:
    model = kubernetes.client.V1Secret.from_dict(body)
    if model is None:
        raise ValueError("A Secret body is required")
    return model


def create_secret(namespace: str, body: dict[str, Any], *, timeout: float) -> dict[str, Any]:
    """Create a Secret; ``ConflictError`` when it exists (another replica created it first)."""
    api = kubernetes.client.CoreV1Api(api_client())
    try:
        created = api.create_namespaced_secret(
            namespace, _secret_model(body), _request_timeout=timeout
        )
    except exceptions.ApiException as error:
        if error.status == 409:
            name = body["metadata"]["name"]
            raise ConflictError(f"secrets/{name} in {namespace} exists") from error
        raise
    return _as_dict(created)


def replace_secret(
    namespace: str, name: str, body: dict[str, Any], *, timeout: float
) -> dict[str, Any]:
    """PUT a Secret; ``body.metadata.resourceVersion`` makes it a compare-and-swap write."""
    api = kubernetes.client.CoreV1Api(api_client())
    try:
        written = api.replace_namespaced_secret(
            name, namespace, _secret_model(body), _request_timeout=timeout
        )
    except exceptions.ApiException as error:
        if error.status == 409:
            raise ConflictError(f"secrets/{name} in {namespace} changed") from error
        if error.status == 404:
            raise ObjectGoneError(f"secrets/{name} in {namespace} no longer exists") from error
        raise
    return _as_dict(written)


# Webhook configurations go through the generic API, as Leases do: a PUT of a typed model
# would drop any field this client version does not know, and the PUT replaces the object.
_WEBHOOK_CONFIGURATIONS = {
    "MutatingWebhookConfiguration": "mutatingwebhookconfigurations",
    "ValidatingWebhookConfiguration": "validatingwebhookconfigurations",
}
_ADMISSION_REGISTRATION = ("admissionregistration.k8s.io", "v1")


def read_webhook_configuration(kind: str, name: str, *, timeout: float) -> dict[str, Any] | None:
    """A Mutating/ValidatingWebhookConfiguration as sent, or None when it does not exist."""
    api = kubernetes.client.CustomObjectsApi(api_client())
    try:
        found = api.get_cluster_custom_object(
            *_ADMISSION_REGISTRATION, _WEBHOOK_CONFIGURATIONS[kind], name, _request_timeout=timeout
        )
    except exceptions.ApiException as error:
        if error.status == 404:
            return None
        raise
    return _as_dict(found)


def replace_webhook_configuration(
    kind: str, name: str, body: dict[str, Any], *, timeout: float
) -> dict[str, Any]:
    """PUT a webhook configuration; its resourceVersion makes it a compare-and-swap write."""
    api = kubernetes.client.CustomObjectsApi(api_client())
    plural = _WEBHOOK_CONFIGURATIONS[kind]
    try:
        written = api.replace_cluster_custom_object(
            *_ADMISSION_REGISTRATION, plural, name, body, _request_timeout=timeout
        )
    except exceptions.ApiException as error:
        if error.status == 409:
            raise ConflictError(f"{plural}/{name} changed") from error
        if error.status == 404:
            raise ObjectGoneError(f"{plural}/{name} no longer exists") from error
        raise
    return _as_dict(written)


# -- listing any resource (the background admission audit, hush.admission.audit) ------------

_LIST_PAGE_SIZE = 500


def list_objects(
    *,
    group: str,
    version: str,
    plural: str,
    namespace: str | None = None,
    label_selector: str | None = None,
) -> list[dict[str, Any]]:
    """Every object of one resource type, each with its ``apiVersion`` and ``kind``.

    Works for built-in and custom resources alike (``group`` "" is the core group), cluster-
    wide or in one ``namespace``, paging 500 at a time. List responses leave ``kind`` out of
    their items; it is put back so that the objects look as admission sees them. A resource
    type the cluster does not serve (a CRD that is not installed) has no objects.
    """
    client = api_client()
    path = f"/apis/{group}/{version}" if group else f"/api/{version}"
    if namespace is not None:
        path += f"/namespaces/{urllib.parse.quote(namespace)}"
    path += f"/{plural}"
    found: list[dict[str, Any]] = []
    continue_token = ""
    while True:
        query: list[tuple[str, str | int]] = [("limit", _LIST_PAGE_SIZE)]
        if label_selector:
            query.append(("labelSelector", label_selector))
        if continue_token:
            query.append(("continue", continue_token))
        method, url, headers, _, _ = client.param_serialize(
            "GET",
            path,
            query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        response = client.call_api(method, url, header_params=headers, _request_timeout=60)
        body = response.read()  # type: ignore[no-untyped-call]
        if response.status == 404:
            return []
        if not 200 <= response.status < 300:
            raise exceptions.ApiException(status=response.status, reason=f"GET {path} failed")
        document = json.loads(body)
        kind = str(document.get("kind", "")).removesuffix("List")
        api_version = document.get("apiVersion", version)
        found += [
            {"apiVersion": api_version, "kind": kind, **item} for item in document.get("items", [])
        ]
        continue_token = (document.get("metadata") or {}).get("continue") or ""
        if not continue_token:
            return found


def apply_config_map(
    namespace: str, name: str, data: Mapping[str, str], *, field_manager: str, timeout: float
) -> None:
    """Server-side apply a ConfigMap's ``data`` (created if missing, updated if changed)."""
    api = kubernetes.client.CoreV1Api(api_client())
    api.patch_namespaced_config_map(
        name,
        namespace,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {"app.kubernetes.io/managed-by": "hush-operator"},
            },
            "data": dict(data),
        },
        field_manager=field_manager,
        force=True,
        _content_type="application/apply-patch+yaml",
        _request_timeout=timeout,
    )
