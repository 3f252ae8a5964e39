"""An installed Hush release: the image built from this checkout, running in real pods.

``make e2e-kind`` (hack/e2e-kind.sh) builds the image, loads it into kind, installs the
chart with it and runs this file with ``HUSH_E2E_RELEASE=<namespace>/<release>`` and
``HUSH_E2E_IMAGE=<the image reference it installed>``; then it uninstalls the release and
runs the whole suite, whose tests start their own operators. Without ``HUSH_E2E_RELEASE``
these tests skip: on the local control plane pods never really run (kwok), so only a
cluster with a container runtime can show the image working.

What they show: the operator pods run the image as UID 65532 on a read-only root
filesystem without restarting; the in-cluster operator reconciles a PrivacyBudget; and the
apiserver reaches the validating webhook through its Service with the caBundle the
operator keeps (a Deployment naming a missing DPPolicy is refused with the webhook's
message).
"""

from __future__ import annotations

import os
import secrets
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from hush.admission import validation
from hush.injection import sidecar

import hush_resources
import spending
import waiting


@pytest.fixture(scope="session")
def release() -> tuple[str, str]:
    """(namespace, release name) of the installed release, or skip. Session-scoped and
    first in every test's arguments, so it skips before the cluster fixtures start one."""
    configured = os.environ.get("HUSH_E2E_RELEASE", "")
    if not configured:
        pytest.skip("needs an installed release: HUSH_E2E_RELEASE=<namespace>/<release>")
    namespace, _, name = configured.partition("/")
    return namespace, name


def _fullname(release_name: str) -> str:
    """The chart's hush.fullname."""
    return release_name if "hush" in release_name else f"{release_name}-hush"


def test_the_operator_runs_the_image_as_non_root_on_a_read_only_root_filesystem(
    release: tuple[str, str], api_client: client.ApiClient
) -> None:
    namespace, name = release
    deployment = client.AppsV1Api(api_client).read_namespaced_deployment(
        f"{_fullname(name)}-operator", namespace
    )
    assert deployment.status.ready_replicas == deployment.spec.replicas
    pods = client.CoreV1Api(api_client).list_namespaced_pod(
        namespace,
        label_selector=f"app.kubernetes.io/instance={name},app.kubernetes.io/component=operator",
    )
    assert len(pods.items) == deployment.spec.replicas
    for pod in pods.items:
        operator = next(c for c in pod.spec.containers if c.name == "operator")
        if os.environ.get("HUSH_E2E_IMAGE"):
            assert operator.image.endswith(os.environ["HUSH_E2E_IMAGE"])
        assert pod.spec.security_context.run_as_user == sidecar.RUN_AS_USER
        assert pod.spec.security_context.run_as_non_root is True
        assert operator.security_context.read_only_root_filesystem is True
        status = next(s for s in pod.status.container_statuses if s.name == "operator")
        assert status.ready, f"{pod.metadata.name} is not ready"
        assert status.restart_count == 0, f"{pod.metadata.name} restarted: {status.last_state}"


def test_the_installed_operator_reconciles_a_budget(
    release: tuple[str, str], api_client: client.ApiClient, namespace: str
) -> None:
    name = f"census-{secrets.token_hex(3)}"
    hush_resources.create(api_client, namespace, spending.budget_manifest(name, team_epsilon=1))
    hush_resources.wait_for_condition(
        api_client, namespace, "PrivacyBudget", name, status="True", timeout=120
    )


def _deployment(policy: str) -> dict[str, Any]:
    labels = {validation.TEAM_LABEL: "analytics", validation.SENSITIVITY_LABEL: "internal"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "census-api", "labels": {**labels, "app": "census-api"}},
        "spec": {
            "selector": {"matchLabels": {"app": "census-api"}},
            "template": {
                "metadata": {
                    "labels": {**labels, "app": "census-api"},
                    "annotations": {validation.POLICY_ANNOTATION: policy},
                },
                "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
            },
        },
    }


def test_the_apiserver_reaches_the_webhook_through_its_service(
    release: tuple[str, str], api_client: client.ApiClient, namespace: str
) -> None:
    core, apps = client.CoreV1Api(api_client), client.AppsV1Api(api_client)
    # Allowed for kind's admin by admissionPolicies.enforcementLabelGroups
    # (hack/e2e-kind-values.yaml); the chart lets nobody else change this label.
    core.patch_namespace(
        namespace, {"metadata": {"labels": {validation.ENFORCEMENT_LABEL: "enforce"}}}
    )
    policy = f"no-such-policy-{secrets.token_hex(3)}"

    def refused_by_the_webhook() -> str | None:
        try:
            apps.create_namespaced_deployment(namespace, _deployment(policy), dry_run="All")
        except ApiException as error:
            body = str(error.body)
            # Until the operator has published its CA into the caBundle, the apiserver
            # cannot call the webhook at all ("failed calling webhook"): keep waiting.
            if "failed calling webhook" in body:
                return None
            return body
        raise AssertionError(f"A Deployment naming the missing DPPolicy {policy} was admitted")

    message = waiting.wait_for(
        refused_by_the_webhook,
        timeout=180,
        interval=2,
        description="the validating webhook to answer through its Service",
    )
    assert policy in message
    assert "does not exist" in message
