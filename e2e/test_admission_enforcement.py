"""The whole admission story through ``kubectl``, on the real apiserver.

The operator runs as a host process with its webhooks registered (URL client config) and
the ValidatingAdmissionPolicies installed, as the chart would: unlabelled workloads refused
in ``enforce`` and warned about in ``warn``, tag-only images refused for ``confidential``,
a missing policy refused by the webhook, injected pods from the real ReplicaSet controller,
``kubectl exec`` and ``kubectl port-forward`` into a ``restricted`` pod refused (port-forward
with break-glass recorded in an Event), server-side dry-run working, and
kube-system untouched while the operator is down.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from hush.admission import policies, validation
from hush.injection import sidecar

import hush_resources
import operator_process
import spending
import waiting
import webhook_setup

ADMINS = "system:masters"  # the dev cluster's admin; allowed to set the enforcement label
PINNED = "registry.invalid/app@sha256:" + "a" * 64


def _kubectl(
    kubectl: Path, kubeconfig: Path, *arguments: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(kubectl), f"--kubeconfig={kubeconfig}", *arguments],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "KUBECTL_COLOR": "false"},
    )


@pytest.fixture(scope="module")
def hush_installed(
    api_client: client.ApiClient, kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    hush_resources.install_crds(api_client)
    token = secrets.token_hex(3)
    settings = policies.PolicySettings(
        name_prefix=f"hush-e2e-enf-{token}",
        hush_namespace=webhook_setup.HUSH_NAMESPACE,
        operator_service_account="hush-operator",
        enforcement_label_groups=(ADMINS,),
    )
    directory = tmp_path_factory.mktemp("enforcement")
    with (
        webhook_setup.installed_policies(api_client, policies.all_manifests(settings)),
        webhook_setup.operator_with_webhooks(
            api_client, kubeconfig, directory, "--break-glass-group=hush:break-glass"
        ) as running,
    ):
        yield {**running, "directory": directory}


def _deployment(name: str, *, labels: dict[str, str], image: str = PINNED,
                policy: str | None = None) -> dict[str, Any]:  # fmt: skip
    annotations = {"hush.dev/policy": policy} if policy else {}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name, **labels}, "annotations": annotations},
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "image": image,
                            "ports": [{"name": "http", "containerPort": 8080}],
                        }
                    ]
                },
            },
        },
    }


def _marked(sensitivity: str) -> dict[str, str]:
    return {"hush.dev/team": "analytics", "hush.dev/sensitivity": sensitivity}


@pytest.fixture
def enforced(
    api_client: client.ApiClient, namespace: str, kubectl: Path, kubeconfig: Path
) -> Callable[[str], str]:
    """Label the namespace with a mode and wait until the apiserver enforces it."""

    def label(mode: str) -> str:
        result = _kubectl(
            kubectl, kubeconfig, "label", "namespace", namespace,
            f"{validation.ENFORCEMENT_LABEL}={mode}", "--overwrite",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        probe = json.dumps(_deployment("probe", labels={}))
        expected_refusal = mode == "enforce"

        def seen() -> bool:
            answer = _kubectl(
                kubectl, kubeconfig, "-n", namespace, "apply", "--dry-run=server", "-f", "-",
                stdin=probe,
            )  # fmt: skip
            if expected_refusal:
                return answer.returncode != 0
            return "Warning:" in answer.stderr if mode == "warn" else answer.returncode == 0

        waiting.wait_for(seen, timeout=30, interval=0.1, description=f"{mode} to take effect")
        return namespace

    return label


def _apply(kubectl: Path, kubeconfig: Path, namespace: str, manifest: dict[str, Any],
           *extra: str) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return _kubectl(
        kubectl, kubeconfig, "-n", namespace, "apply", *extra, "-f", "-",
        stdin=yaml.safe_dump(manifest),
    )  # fmt: skip


def test_an_unlabelled_deployment_is_refused_in_enforce_with_a_readable_message(
    hush_installed: dict[str, Any], enforced: Callable[[str], str], kubectl: Path,
    kubeconfig: Path,
) -> None:  # fmt: skip
    namespace = enforced("enforce")
    result = _apply(kubectl, kubeconfig, namespace, _deployment("web", labels={}))
    assert result.returncode != 0
    assert f"Deployment {namespace}/web" in result.stderr
    assert "hush.dev/team" in result.stderr
    assert "hush.dev/sensitivity" in result.stderr
    assert "kubectl" in result.stderr or "fix" in result.stderr
    get = _kubectl(kubectl, kubeconfig, "-n", namespace, "get", "deployment", "web")
    assert get.returncode != 0


def test_the_same_deployment_is_admitted_with_warnings_in_warn(
    hush_installed: dict[str, Any], enforced: Callable[[str], str], kubectl: Path,
    kubeconfig: Path,
) -> None:  # fmt: skip
    namespace = enforced("warn")
    result = _apply(kubectl, kubeconfig, namespace, _deployment("web", labels={}))
    assert result.returncode == 0, result.stderr
    assert "Warning:" in result.stderr
    assert "hush.dev/team" in result.stderr


def test_a_confidential_deployment_with_a_tag_only_image_is_refused(
    hush_installed: dict[str, Any], enforced: Callable[[str], str], kubectl: Path,
    kubeconfig: Path, api_client: client.ApiClient,
) -> None:  # fmt: skip
    namespace = enforced("enforce")
    _ready_policy(api_client, namespace)
    manifest = _deployment(
        "web", labels=_marked("confidential"), image="registry.invalid/app:1.0", policy="survey"
    )
    result = _apply(kubectl, kubeconfig, namespace, manifest)
    assert result.returncode != 0
    assert "registry.invalid/app:1.0" in result.stderr
    assert "@sha256:" in result.stderr


def test_a_confidential_deployment_naming_a_missing_policy_is_refused_by_the_webhook(
    hush_installed: dict[str, Any], enforced: Callable[[str], str], kubectl: Path,
    kubeconfig: Path,
) -> None:  # fmt: skip
    namespace = enforced("enforce")
    manifest = _deployment("web", labels=_marked("confidential"), policy="nope")
    result = _apply(kubectl, kubeconfig, namespace, manifest)
    assert result.returncode != 0
    assert "nope" in result.stderr
    assert "workloads.enforce.hush.dev" in result.stderr  # the webhook, not a policy


def _ready_policy(api_client: client.ApiClient, namespace: str) -> None:
    hush_resources.create(
        api_client, namespace, spending.budget_manifest("survey", team_epsilon=1.0)
    )
    hush_resources.create(
        api_client,
        namespace,
        spending.count_policy_manifest("survey", budget="survey", epsilon=0.1),
    )
    hush_resources.wait_for_condition(
        api_client, namespace, "DPPolicy", "survey", status="True", reason="Accepted"
    )


def test_a_well_marked_deployment_gets_pods_with_the_sidecar_exactly_once(
    hush_installed: dict[str, Any], enforced: Callable[[str], str], kubectl: Path,
    kubeconfig: Path, api_client: client.ApiClient,
) -> None:  # fmt: skip
    namespace = enforced("enforce")
    _ready_policy(api_client, namespace)
    manifest = _deployment("web", labels=_marked("confidential"), policy="survey")
    dry = _apply(kubectl, kubeconfig, namespace, manifest, "--dry-run=server")
    assert dry.returncode == 0, dry.stderr
    assert _kubectl(kubectl, kubeconfig, "-n", namespace, "get", "deploy", "web").returncode != 0
    result = _apply(kubectl, kubeconfig, namespace, manifest)
    assert result.returncode == 0, result.stderr

    def pods() -> list[Any] | None:
        found = client.CoreV1Api(api_client).list_namespaced_pod(
            namespace, label_selector="app=web"
        )
        return found.items or None

    (pod,) = waiting.wait_for(pods, timeout=60, description="the ReplicaSet's pod")
    containers = [*(pod.spec.init_containers or []), *pod.spec.containers]
    assert [c.name for c in containers].count(sidecar.CONTAINER_NAME) == 1
    assert pod.metadata.owner_references[0].kind == "ReplicaSet"


def test_exec_into_a_restricted_pod_is_refused_by_admission(
    hush_installed: dict[str, Any], enforced: Callable[[str], str], kubectl: Path,
    kubeconfig: Path, api_client: client.ApiClient,
) -> None:  # fmt: skip
    namespace = enforced("enforce")
    _ready_policy(api_client, namespace)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "vault",
            "labels": _marked("restricted"),
            "annotations": {"hush.dev/policy": "survey"},
        },
        "spec": {"containers": [{"name": "app", "image": PINNED,
                                 "ports": [{"name": "http", "containerPort": 8080}]}]},
    }  # fmt: skip
    created = _apply(kubectl, kubeconfig, namespace, pod)
    assert created.returncode == 0, created.stderr
    result = _kubectl(
        kubectl, kubeconfig, "-n", namespace, "exec", "vault", "-c", "app", "--", "true"
    )
    assert result.returncode != 0
    assert "denied the request" in result.stderr
    assert "hush.dev/sensitivity=restricted" in result.stderr
    assert "hush:break-glass" in result.stderr
    debug = _kubectl(
        kubectl, kubeconfig, "-n", namespace, "debug", "vault", "--image=busybox", "--", "true"
    )
    assert debug.returncode != 0
    assert "ephemeral container" in debug.stderr


def _port_forward(
    kubectl: Path, kubeconfig: Path, namespace: str, pod: str, *identity: str
) -> tuple[bool, str]:
    """``kubectl port-forward`` for a few seconds: (exited by itself, what it printed).

    Admission answers the CONNECT before the apiserver dials the kubelet. A refusal ends
    kubectl at once; past admission, a kwok node has no kubelet to forward to, so kubectl
    either fails later with a dial error or keeps waiting — never "denied the request".
    """
    process = subprocess.Popen(
        [str(kubectl), f"--kubeconfig={kubeconfig}", *identity, "-n", namespace,
         "port-forward", f"pod/{pod}", "--address=127.0.0.1", ":8080"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "KUBECTL_COLOR": "false"},
    )  # fmt: skip
    try:
        out, err = process.communicate(timeout=8)
        return True, out + err
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        return False, out + err


def _running_pod(
    kubectl: Path, kubeconfig: Path, api_client: client.ApiClient, namespace: str, name: str,
    sensitivity: str,
) -> None:  # fmt: skip
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": _marked(sensitivity),
            "annotations": {"hush.dev/policy": "survey"},
        },
        "spec": {"containers": [{"name": "app", "image": PINNED,
                                 "ports": [{"name": "http", "containerPort": 8080}]}]},
    }  # fmt: skip
    created = _apply(kubectl, kubeconfig, namespace, pod)
    assert created.returncode == 0, created.stderr
    core = client.CoreV1Api(api_client)
    waiting.wait_for(  # kubectl port-forward asks the pod to be Running first
        lambda: core.read_namespaced_pod(name, namespace).status.phase == "Running",
        timeout=60,
        description=f"pod {name} running",
    )


def test_port_forward_into_a_restricted_pod_is_refused_by_admission(
    hush_installed: dict[str, Any], enforced: Callable[[str], str], kubectl: Path,
    kubeconfig: Path, api_client: client.ApiClient,
) -> None:  # fmt: skip
    namespace = enforced("enforce")
    _ready_policy(api_client, namespace)
    _running_pod(kubectl, kubeconfig, api_client, namespace, "vault", "restricted")
    _running_pod(kubectl, kubeconfig, api_client, namespace, "open", "internal")

    ended, output = _port_forward(kubectl, kubeconfig, namespace, "vault")
    assert ended, output
    assert "denied the request" in output
    assert "may not port-forward to a pod labelled hush.dev/sensitivity=restricted" in output
    assert "hush:break-glass" in output
    assert "query it through its Service" in output

    # Not restricted: admission lets it through (the kwok node then has no kubelet).
    _, output = _port_forward(kubectl, kubeconfig, namespace, "open")
    assert "denied the request" not in output
    assert "hush.dev/sensitivity" not in output

    # Break-glass: let through by admission and recorded in an Event on the pod.
    _, output = _port_forward(
        kubectl, kubeconfig, namespace, "vault",
        "--as=oncall", f"--as-group={ADMINS}", "--as-group=hush:break-glass",
    )  # fmt: skip
    assert "denied the request" not in output

    def recorded() -> Any:
        events = client.CoreV1Api(api_client).list_namespaced_event(
            namespace, field_selector="involvedObject.name=vault"
        )
        return [
            event
            for event in events.items
            if event.reason == validation.BREAK_GLASS_EVENT_REASON
            and "port-forward to" in event.message
        ] or None

    (event,) = waiting.wait_for(recorded, timeout=30, description="the break-glass Event")
    assert "User oncall used break-glass group hush:break-glass" in event.message


def test_kube_system_is_untouched_with_the_operator_stopped(
    api_client: client.ApiClient, kubeconfig: Path, tmp_path: Path, namespace: str
) -> None:
    """Webhooks registered, VAPs installed, operator down: kube-system still admits pods;
    elsewhere plain pods are admitted and only pods that asked for injection are refused."""
    token = secrets.token_hex(3)
    settings = policies.PolicySettings(
        name_prefix=f"hush-e2e-down-{token}",
        hush_namespace=webhook_setup.HUSH_NAMESPACE,
        operator_service_account="hush-operator",
    )
    dead_url = f"https://127.0.0.1:{operator_process.free_port()}"  # nobody listens
    cert, _ = operator_process.write_serving_certificate(tmp_path)
    with (
        webhook_setup.installed_policies(api_client, policies.all_manifests(settings)),
        webhook_setup.registered_webhooks(api_client, url=dead_url, ca_pem=cert.read_bytes()),
    ):
        name = f"hush-e2e-untouched-{token}"
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "annotations": {"hush.dev/policy": "anything"}},
            "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
        }
        core = client.CoreV1Api(api_client)
        created = core.create_namespaced_pod("kube-system", pod)
        try:
            assert not created.spec.init_containers
        finally:
            core.delete_namespaced_pod(name, "kube-system", grace_period_seconds=0)
        plain = {**pod, "metadata": {"name": "plain"}}
        assert core.create_namespaced_pod(namespace, plain).metadata.name == "plain"
        with pytest.raises(ApiException) as refused:
            core.create_namespaced_pod(namespace, pod)
        message = json.loads(refused.value.body)["message"]
        assert "has no hush-sidecar" in message
        assert "refused rather than started without noise" in message
