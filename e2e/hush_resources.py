"""Helpers for Hush's custom resources in e2e tests: install CRDs, create, read, wait."""

from __future__ import annotations

import copy
import json
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from hush.api import common, crds

import waiting

GROUP = common.API_GROUP
VERSION = common.API_VERSION
PLURALS = {resource.kind: resource.plural for resource in crds.KINDS}


def install_crds(api_client: client.ApiClient) -> None:
    """Create or update every Hush CRD and wait until each is Established."""
    extensions = client.ApiextensionsV1Api(api_client)
    for manifest in crds.all_crds():
        name = manifest["metadata"]["name"]
        try:
            extensions.create_custom_resource_definition(manifest)
        except ApiException as error:
            if error.status != 409:
                raise
            current = extensions.read_custom_resource_definition(name)
            updated = copy.deepcopy(manifest)
            updated["metadata"]["resourceVersion"] = current.metadata.resource_version
            extensions.replace_custom_resource_definition(name, updated)

        def established(crd_name: str = name) -> bool:
            crd = extensions.read_custom_resource_definition(crd_name)
            return any(
                condition.type == "Established" and condition.status == "True"
                for condition in (crd.status.conditions or [])
            )

        waiting.wait_for(established, timeout=60, description=f"CRD {name} to be Established")


def create(api_client: client.ApiClient, namespace: str, manifest: dict[str, Any]) -> Any:
    custom = client.CustomObjectsApi(api_client)
    return custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURALS[manifest["kind"]], manifest
    )


def get(api_client: client.ApiClient, namespace: str, kind: str, name: str) -> dict[str, Any]:
    custom = client.CustomObjectsApi(api_client)
    result: dict[str, Any] = custom.get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURALS[kind], name
    )
    return result


def patch_spec(
    api_client: client.ApiClient, namespace: str, kind: str, name: str, spec: dict[str, Any]
) -> Any:
    custom = client.CustomObjectsApi(api_client)
    return custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURALS[kind], name, {"spec": spec}
    )


def condition(obj: dict[str, Any], condition_type: str) -> dict[str, Any] | None:
    for item in obj.get("status", {}).get("conditions", []):
        if item.get("type") == condition_type:
            found: dict[str, Any] = item
            return found
    return None


def wait_for_condition(
    api_client: client.ApiClient,
    namespace: str,
    kind: str,
    name: str,
    *,
    condition_type: str = "Ready",
    status: str,
    reason: str | None = None,
    generation: int | None = None,
    timeout: float = 60,
) -> dict[str, Any]:
    """Wait until the object's condition has ``status`` (and ``reason``) for its generation."""

    def matches() -> dict[str, Any] | None:
        obj = get(api_client, namespace, kind, name)
        found = condition(obj, condition_type)
        expected_generation = generation or obj["metadata"]["generation"]
        if (
            found is not None
            and found["status"] == status
            and (reason is None or found["reason"] == reason)
            and found.get("observedGeneration") == expected_generation
            and obj["status"].get("observedGeneration") == expected_generation
        ):
            return obj
        return None

    result: dict[str, Any] = waiting.wait_for(
        matches,
        timeout=timeout,
        description=f"{kind} {namespace}/{name} {condition_type}={status} ({reason or 'any'})",
    )
    return result


def table(api_client: client.ApiClient, namespace: str, kind: str) -> dict[str, Any]:
    """What `kubectl get` shows: the server-side Table with the CRD's printer columns."""
    method, url, headers, body, _ = api_client.param_serialize(
        "GET",
        f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURALS[kind]}",
        header_params={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
        auth_settings=["BearerToken"],
    )
    response = api_client.call_api(method, url, header_params=headers, body=body)
    response.read()
    result: dict[str, Any] = json.loads(response.data)
    return result
