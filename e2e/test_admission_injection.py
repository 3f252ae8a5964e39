"""Sidecar injection by the real apiserver calling the operator's mutating webhook."""

from __future__ import annotations

import json
import ssl
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from hush.admission import mutation
from hush.injection import sidecar
from hush.sidecar import config

import hush_resources
import spending
import waiting
import webhook_setup

APP_IMAGE = "registry.invalid/app@sha256:" + "a" * 64


@pytest.fixture(scope="module")
def webhooks_running(
    api_client: client.ApiClient, kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    hush_resources.install_crds(api_client)
    directory = tmp_path_factory.mktemp("admission")
    with webhook_setup.operator_with_webhooks(api_client, kubeconfig, directory) as running:
        yield running


def _pod(name: str, *, policy: str | None = "survey", **spec: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if policy is not None:
        metadata["annotations"] = {"hush.dev/policy": policy}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": APP_IMAGE,
                    "ports": [{"name": "http", "containerPort": 8080}],
                }
            ],
            **spec,
        },
    }


def _ready_policy(api_client: client.ApiClient, namespace: str) -> dict[str, Any]:
    hush_resources.create(
        api_client, namespace, spending.budget_manifest("survey", team_epsilon=1.0)
    )
    hush_resources.create(
        api_client,
        namespace,
        spending.count_policy_manifest("survey", budget="survey", epsilon=0.1),
    )
    return hush_resources.wait_for_condition(
        api_client, namespace, "DPPolicy", "survey", status="True", reason="Accepted"
    )


def _create_pod(
    api_client: client.ApiClient, namespace: str, body: dict[str, Any], **options: Any
) -> dict[str, Any]:
    created = client.CoreV1Api(api_client).create_namespaced_pod(namespace, body, **options)
    serialised: dict[str, Any] = api_client.sanitize_for_serialization(created)
    return serialised


def test_an_annotated_pod_gets_the_sidecar_exactly_as_built(
    api_client: client.ApiClient, namespace: str, webhooks_running: dict[str, Any]
) -> None:
    policy = _ready_policy(api_client, namespace)
    pod = _create_pod(api_client, namespace, _pod("web"))

    (injected,) = pod["spec"]["initContainers"]
    assert injected["name"] == sidecar.CONTAINER_NAME
    assert injected["restartPolicy"] == "Always"
    assert injected["image"] == webhook_setup.SIDECAR_IMAGE
    assert injected["securityContext"]["readOnlyRootFilesystem"] is True
    assert injected["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert injected["ports"][0]["name"] == "http"
    assert pod["spec"]["containers"][0]["ports"][0]["name"] == mutation.UPSTREAM_PORT_NAME
    annotations = pod["metadata"]["annotations"]
    assert annotations[mutation.POLICY_HASH_ANNOTATION] == policy["status"]["policyHash"]
    assert annotations[mutation.INJECTED_ANNOTATION] == mutation.INJECTOR_VERSION
    baked = config.load(
        next(v["value"] for v in injected["env"] if v["name"] == config.ENVIRONMENT_VARIABLE)
    )
    assert baked.policy_hash == policy["status"]["policyHash"]
    assert baked.accountant_url == webhooks_running["accountant_url"]

    # The CA the sidecar mounts is published in the pod's namespace.
    def published() -> Any:
        try:
            return client.CoreV1Api(api_client).read_namespaced_config_map(
                mutation.ACCOUNTANT_CA_CONFIG_MAP, namespace
            )
        except ApiException:
            return None

    config_map = waiting.wait_for(published, timeout=30, description="the CA ConfigMap")
    assert config_map.data["ca.crt"] == webhooks_running["cert"].read_text()
    (volume,) = pod["spec"]["volumes"][-1:]
    assert volume["projected"]["sources"][0]["serviceAccountToken"]["audience"] == (
        sidecar.TOKEN_AUDIENCE
    )


def test_server_side_dry_run_is_mutated_and_leaves_nothing(
    api_client: client.ApiClient, namespace: str, webhooks_running: dict[str, Any]
) -> None:
    _ready_policy(api_client, namespace)
    pod = _create_pod(api_client, namespace, _pod("dry"), dry_run="All")
    assert pod["spec"]["initContainers"][0]["name"] == sidecar.CONTAINER_NAME
    pods = client.CoreV1Api(api_client).list_namespaced_pod(namespace)
    assert [item.metadata.name for item in pods.items if item.metadata.name == "dry"] == []


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (_pod("host", hostNetwork=True), "uses the host network"),
        (_pod("missing", policy="nope"), "DPPolicy nope does not exist in namespace"),
    ],
)
def test_pods_that_cannot_be_guarded_are_refused_with_the_reason(
    api_client: client.ApiClient,
    namespace: str,
    webhooks_running: dict[str, Any],
    body: dict[str, Any],
    expected: str,
) -> None:
    _ready_policy(api_client, namespace)
    with pytest.raises(ApiException) as refused:
        _create_pod(api_client, namespace, body)
    assert refused.value.status == 403
    message = json.loads(refused.value.body)["message"]
    assert expected in message
    assert f"Pod {namespace}/{body['metadata']['name']}" in message


def test_unannotated_pods_and_deployments_are_not_mutated(
    api_client: client.ApiClient, namespace: str, webhooks_running: dict[str, Any]
) -> None:
    metrics_url = webhooks_running["metrics_url"]
    reviews_before = webhook_setup.admission_requests(metrics_url, "mutate-pods")
    plain = _create_pod(api_client, namespace, _pod("plain", policy=None))
    assert "initContainers" not in plain["spec"] or not plain["spec"]["initContainers"]
    # The injector's matchConditions keep unannotated pods away from the webhook entirely:
    # the apiserver admits them without a network hop.
    assert webhook_setup.admission_requests(metrics_url, "mutate-pods") == reviews_before

    _ready_policy(api_client, namespace)
    template = _pod("ignored")
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {
                    "labels": {"app": "web"},
                    **{"annotations": {"hush.dev/policy": "survey"}},
                },
                "spec": template["spec"],
            },
        },
    }
    apps = client.AppsV1Api(api_client)
    created = apps.create_namespaced_deployment(namespace, deployment)
    # The Deployment is never mutated (GitOps tools would see drift) ...
    assert created.spec.template.spec.init_containers is None

    # ... its pods, created by the ReplicaSet controller, are.
    def injected_pod() -> Any:
        pods = client.CoreV1Api(api_client).list_namespaced_pod(namespace, label_selector="app=web")
        for item in pods.items:
            if item.spec.init_containers and (
                item.spec.init_containers[0].name == sidecar.CONTAINER_NAME
            ):
                return item
        return None

    waiting.wait_for(injected_pod, timeout=60, description="an injected pod of Deployment web")
    # ... and the annotated pod was reviewed by the injector (the condition lets it through).
    assert webhook_setup.admission_requests(metrics_url, "mutate-pods") > reviews_before
    assert (
        apps.read_namespaced_deployment("web", namespace).spec.template.spec.init_containers is None
    )


def test_a_malformed_review_gets_a_well_formed_denial(webhooks_running: dict[str, Any]) -> None:
    context = ssl.create_default_context(cafile=str(webhooks_running["cert"]))
    request = urllib.request.Request(  # noqa: S310 - https to our own webhook
        webhooks_running["webhook_url"] + "/mutate-pods",
        data=b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}',
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, context=context, timeout=10) as reply:  # noqa: S310
        assert reply.status == 200
        answer = json.loads(reply.read())
    assert answer["kind"] == "AdmissionReview"
    assert answer["response"]["allowed"] is False
    assert answer["response"]["status"]["code"] == 400
    assert "no request object" in answer["response"]["status"]["message"]
