"""Least privilege of the operator, proven through the real apiserver as the chart's identity.

The chart's ServiceAccount, ClusterRole, bindings and the operator's two
ValidatingAdmissionPolicies are rendered by ``helm template`` (the chart as shipped, nothing
rewritten) and applied; every request below authenticates with a token of that
ServiceAccount from the TokenRequest API, exactly as the operator's pod would. What a
compromised operator would want is refused by the apiserver:

- patching a ConfigMap in kube-system (RBAC: ConfigMaps only by the CA ConfigMap's name);
- creating a ConfigMap of another name (RBAC cannot name a create: the ValidatingAdmissionPolicy
  ``<release>-operator-config-maps`` refuses it);
- changing a workload's image, replicas or labels (RBAC's ``patch`` cannot be narrowed to a
  field: the policy ``<release>-operator-workloads`` refuses anything but the rollout
  annotation);

while what Hush does still works: the server-side apply of the CA ConfigMap, and the rollout
controller's server-side apply of ``hush.dev/policy-rollout`` (the body the controller sends).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from hush.admission import mutation, policies
from hush.dev import binaries
from hush.rollout import trigger

import waiting

CHART = Path(__file__).resolve().parents[1] / "charts" / "hush"
DIGEST = "sha256:" + "b" * 64
APPLY = "application/apply-patch+yaml"
# The templates that make the operator's identity and what limits it.
TEMPLATES = ("serviceaccount.yaml", "rbac.yaml", "validating-admission-policies.yaml")


def _helm(uses_dev_cluster: bool) -> Path:
    if uses_dev_cluster or os.environ.get("HUSH_CONTROLPLANE_BIN"):
        return binaries.locate(os.environ).path("helm")
    found = shutil.which("helm")
    if found is None:
        pytest.skip("helm is not on PATH")
    return Path(found)


def _rendered(helm: Path, release: str, namespace: str, kube_version: str) -> list[dict[str, Any]]:
    arguments = [
        str(helm), "template", release, str(CHART), f"--namespace={namespace}",
        f"--kube-version={kube_version}",
        f"--set=image.digest={DIGEST}",
    ]  # fmt: skip
    for template in TEMPLATES:
        arguments.append(f"--show-only=templates/{template}")
    output = subprocess.run(arguments, capture_output=True, text=True, check=True, timeout=60)
    documents = [document for document in yaml.safe_load_all(output.stdout) if document]
    # Of the chart's policies, only the operator's own: the workload and namespace guards
    # would outlive this module for a moment after deletion and judge other tests' writes.
    return [
        document
        for document in documents
        if not document["kind"].startswith("ValidatingAdmissionPolicy")
        or document["metadata"]["name"].endswith(("-operator-config-maps", "-operator-workloads"))
    ]


def _token_client(api_client: client.ApiClient, namespace: str, account: str) -> client.ApiClient:
    """An API client that authenticates as ``account`` with a fresh TokenRequest token."""
    token = (
        client.CoreV1Api(api_client)
        .create_namespaced_service_account_token(
            account,
            namespace,
            client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
            ),
        )
        .status.token
    )
    configuration = client.Configuration()
    admin = api_client.configuration
    configuration.host = admin.host
    configuration.ssl_ca_cert = admin.ssl_ca_cert
    configuration.verify_ssl = admin.verify_ssl
    configuration.api_key = {"authorization": f"Bearer {token}"}
    return client.ApiClient(configuration)


class Operator:
    """The chart's operator identity: its API client and names."""

    def __init__(self, api: client.ApiClient, username: str, release: str) -> None:
        self.api = api
        self.username = username
        self.release = release


@pytest.fixture(scope="module")
def operator(
    api_client: client.ApiClient, kubectl: Path, kubeconfig: Path, uses_dev_cluster: bool,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Operator]:  # fmt: skip
    suffix = secrets.token_hex(3)
    release, namespace = f"lp{suffix}", f"hush-lp-{suffix}"
    core = client.CoreV1Api(api_client)
    core.create_namespace({"metadata": {"name": namespace, "labels": {"hush.dev/e2e": "true"}}})
    kube_version = client.VersionApi(api_client).get_code().git_version.lstrip("v")
    documents = _rendered(_helm(uses_dev_cluster), release, namespace, kube_version)
    manifest = tmp_path_factory.mktemp("least-privilege") / "chart.yaml"
    manifest.write_text(yaml.safe_dump_all(documents))
    kubectl_arguments = [str(kubectl), f"--kubeconfig={kubeconfig}", "-n", namespace]
    try:
        subprocess.run(
            [*kubectl_arguments, "apply", "-f", str(manifest)],
            check=True, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        (account,) = (d for d in documents if d["kind"] == "ServiceAccount")
        name = account["metadata"]["name"]
        yield Operator(
            _token_client(api_client, namespace, name),
            f"system:serviceaccount:{namespace}:{name}",
            release,
        )
    finally:
        subprocess.run(
            [*kubectl_arguments, "delete", "--ignore-not-found", "--wait=false", "-f",
             str(manifest)],
            check=False, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        with contextlib.suppress(ApiException):
            core.delete_namespace(namespace, propagation_policy="Background")


def _refusal(call: Any) -> tuple[int, str]:
    with pytest.raises(ApiException) as refused:
        call()
    return refused.value.status, json.loads(refused.value.body)["message"]


def _eventually_refused(call: Any, expected: str) -> tuple[int, str]:
    """Policies take a moment to be loaded by the apiserver after they are created."""

    def attempt() -> tuple[int, str] | None:
        try:
            call()
        except ApiException as error:
            message = json.loads(error.body)["message"]
            return (error.status, message) if expected in message else None
        return None

    return waiting.wait_for(attempt, timeout=30, interval=0.5, description=expected)


def test_a_kube_system_config_map_cannot_be_patched(
    operator: Operator, api_client: client.ApiClient
) -> None:
    core = client.CoreV1Api(api_client)
    name = f"aws-auth-{secrets.token_hex(3)}"  # what EKS reads to grant cluster access
    core.create_namespaced_config_map("kube-system", {"metadata": {"name": name}, "data": {}})
    try:
        as_operator = client.CoreV1Api(operator.api)
        patch = {"data": {"mapRoles": "- rolearn: attacker\n  groups: [system:masters]"}}
        status, message = _refusal(
            lambda: as_operator.patch_namespaced_config_map(name, "kube-system", patch)
        )
        assert status == 403
        assert f'User "{operator.username}" cannot patch resource "configmaps"' in message
        status, _ = _refusal(lambda: as_operator.read_namespaced_config_map(name, "kube-system"))
        assert status == 403
        assert core.read_namespaced_config_map(name, "kube-system").data in (None, {})
    finally:
        core.delete_namespaced_config_map(name, "kube-system")


def test_only_the_ca_config_map_can_be_created(operator: Operator, namespace: str) -> None:
    as_operator = client.CoreV1Api(operator.api)
    other = {"metadata": {"name": "aws-auth"}, "data": {"mapRoles": "x"}}
    status, message = _eventually_refused(
        lambda: as_operator.create_namespaced_config_map(namespace, other),
        "may only create or change ConfigMaps named",
    )
    assert status == 403
    assert f"ValidatingAdmissionPolicy '{operator.release}-hush-operator-config-maps'" in message
    assert f"ConfigMap {namespace}/aws-auth" in message
    # kube-system too: a create is refused there by the same policy.
    status, message = _refusal(
        lambda: as_operator.create_namespaced_config_map("kube-system", other)
    )
    assert status == 403
    assert "may only create or change ConfigMaps named hush-accountant-ca" in message

    # What the operator does (hush.kube.client.apply_config_map's body) still works.
    name = mutation.ACCOUNTANT_CA_CONFIG_MAP
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": {"ca.crt": "bundle"},
    }
    for bundle in ("bundle", "rotated"):
        body["data"] = {"ca.crt": bundle}
        applied = as_operator.patch_namespaced_config_map(
            name, namespace, body, field_manager="hush-operator", force=True, _content_type=APPLY
        )
        assert applied.data == {"ca.crt": bundle}


def _deployment(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": namespace, "labels": {"app": "web"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}, "annotations": {"team": "a"}},
                "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
            },
        },
    }


def test_a_workload_can_only_be_rolled(
    operator: Operator, api_client: client.ApiClient, namespace: str
) -> None:
    deployment = _deployment(namespace)
    client.AppsV1Api(api_client).create_namespaced_deployment(namespace, deployment)
    as_operator = client.AppsV1Api(operator.api)
    policy = f"ValidatingAdmissionPolicy '{operator.release}-hush-operator-workloads'"

    def apply(body: dict[str, Any]) -> Any:
        return as_operator.patch_namespaced_deployment(
            "web", namespace, body, field_manager="hush-operator", force=True,
            _content_type=APPLY,
        )  # fmt: skip

    image = {
        **trigger.rollout_apply_body(deployment, "unused"),
        "spec": {
            "template": {
                "spec": {"containers": [{"name": "app", "image": "attacker.invalid/shell:1"}]}
            }
        },
    }
    status, message = _eventually_refused(lambda: apply(image), "this write changes its")
    assert status == 403
    assert policy in message
    assert "this write changes its spec.template.spec" in message
    assert f"may change only the pod template's annotation {policies.ROLLOUT_ANNOTATION}" in (
        message
    )
    # A JSON patch of the image (not apply) is refused the same way.
    status, message = _refusal(
        lambda: as_operator.patch_namespaced_deployment(
            "web",
            namespace,
            [
                {
                    "op": "replace",
                    "path": "/spec/template/spec/containers/0/image",
                    "value": "attacker.invalid/shell:1",
                }
            ],
        )
    )
    assert status == 403
    assert "spec.template.spec" in message
    # Replicas, the workload's labels and another template annotation: refused too.
    for body, part in (
        ({"spec": {"replicas": 5}}, "spec (outside the pod template)"),
        ({"metadata": {"labels": {"app": "web", "x": "y"}}}, "its metadata"),
        (
            {"spec": {"template": {"metadata": {"annotations": {"team": "b"}}}}},
            f"annotations (other than {policies.ROLLOUT_ANNOTATION})",
        ),
    ):
        status, message = _refusal(
            lambda body=body: as_operator.patch_namespaced_deployment("web", namespace, body)
        )
        assert status == 403, body
        assert part in message, (body, message)

    # The rollout controller's own body goes through, twice (a second policy change).
    for desired in ("hash-1", "hash-2"):
        rolled = apply(trigger.rollout_apply_body(deployment, desired))
        assert rolled.spec.template.metadata.annotations == {
            "team": "a",
            policies.ROLLOUT_ANNOTATION: desired,
        }
        assert rolled.spec.template.spec.containers[0].image == "registry.invalid/app:1"
    live = client.AppsV1Api(api_client).read_namespaced_deployment("web", namespace)
    assert live.spec.replicas == 1
    assert live.metadata.labels == {"app": "web"}


def test_other_users_are_not_limited_by_the_operators_policies(
    operator: Operator, api_client: client.ApiClient, namespace: str
) -> None:
    """The policies match only the operator's ServiceAccount: the admin edits freely."""
    apps = client.AppsV1Api(api_client)
    apps.create_namespaced_deployment(namespace, _deployment(namespace))
    waiting.wait_for(
        lambda: _refused_for_operator(operator, namespace),
        timeout=30,
        interval=0.5,
        description="the operator's workload policy loaded",
    )
    patched = apps.patch_namespaced_deployment("web", namespace, {"spec": {"replicas": 3}})
    assert patched.spec.replicas == 3
    created = client.CoreV1Api(api_client).create_namespaced_config_map(
        namespace, {"metadata": {"name": "anything"}}
    )
    assert created.metadata.name == "anything"


def _refused_for_operator(operator: Operator, namespace: str) -> bool:
    try:
        client.AppsV1Api(operator.api).patch_namespaced_deployment(
            "web", namespace, {"spec": {"replicas": 2}}
        )
    except ApiException as error:
        return error.status == 403 and "operator-workloads" in error.body
    return False
