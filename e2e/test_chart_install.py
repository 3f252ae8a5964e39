"""The chart installed for real: helm install, Hush working under the chart's RBAC, helm
upgrade, helm uninstall.

Pods do not run under kwok, so the operator runs on this host, exactly as the chart's
Deployment runs it: with the arguments of the installed Deployment (only addresses, ports
and file paths replaced by loopback ones), ``POD_NAME``/``POD_NAMESPACE`` of one of the
chart's (kwok) pods, and a token of the chart's ServiceAccount from the TokenRequest API —
nothing else, so any rule the chart's RBAC forgot fails the flows below and shows as
"forbidden" in the operator's log. The apiserver cannot reach Services here, so the release
is installed with ``webhook.url`` on loopback (the chart's option for environments without
Service networking); the operator itself makes the serving certificate (self-signed mode,
the chart's default), for the URL's IP, and writes the caBundle into the chart's webhook
configurations.

Through that operator: a budget and a policy reconcile to Ready, a pod annotated with the
policy gets its sidecar from the chart's mutating webhook, a charge with that pod's token is
recorded by the accountant, a policy change rolls a Deployment, and in an enforce namespace
the chart's validating webhook refuses a workload that names a missing policy. The
sidecar's identity (the app pod's ServiceAccount, with a token projected for the accountant
only) can neither write budgets nor read Secrets. ``helm upgrade`` keeps the caBundle and
removes what it no longer renders, and ``helm uninstall`` leaves no webhook configuration
or admission policy behind, while the CRDs (and every budget) stay.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from hush.accountant import leadership
from hush.admission import mutation, validation
from hush.api import crds
from hush.dev import binaries
from hush.rollout import trigger

import devcluster
import hush_resources
import operator_process
import spending
import waiting
import webhook_setup

CHART = devcluster.REPO_ROOT / "charts" / "hush"
POLICY = "survey"
APP_IMAGE = "registry.invalid/app@sha256:" + "a" * 64
HELM_TIMEOUT = "3m"


# -- helm ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Helm:
    binary: Path
    kubeconfig: Path
    home: Path  # cache, config and data: never the user's

    def __call__(self, *arguments: str, timeout: float = 240) -> str:
        environment = {
            **os.environ,
            "HELM_CACHE_HOME": str(self.home / "cache"),
            "HELM_CONFIG_HOME": str(self.home / "config"),
            "HELM_DATA_HOME": str(self.home / "data"),
        }
        result = subprocess.run(
            [str(self.binary), f"--kubeconfig={self.kubeconfig}", *arguments],
            capture_output=True, text=True, timeout=timeout, env=environment, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise AssertionError(f"helm {' '.join(arguments)} failed:\n{result.stderr}")
        return result.stdout


def _helm_binary(uses_dev_cluster: bool) -> Path:
    if uses_dev_cluster or os.environ.get("HUSH_CONTROLPLANE_BIN"):
        return binaries.locate(os.environ).path("helm")
    found = shutil.which("helm")
    if found is None:
        pytest.skip("helm is not on PATH")
    return Path(found)


def _adopt_crds(api_client: client.ApiClient, release: str, namespace: str) -> None:
    """Let the release take over CRDs that exist already (installed by ``hush dev``, other
    tests, or an earlier release kept them on uninstall): Helm adopts an object that carries
    its release's ownership metadata, as docs/operating.md describes for upgrades."""
    extensions = client.ApiextensionsV1Api(api_client)
    for manifest in crds.all_crds():
        with contextlib.suppress(ApiException):  # 404: the release creates it
            extensions.patch_custom_resource_definition(
                manifest["metadata"]["name"],
                {
                    "metadata": {
                        "labels": {"app.kubernetes.io/managed-by": "Helm"},
                        "annotations": {
                            "meta.helm.sh/release-name": release,
                            "meta.helm.sh/release-namespace": namespace,
                        },
                    }
                },
                _content_type="application/merge-patch+json",
            )


# -- the operator as the chart runs it ---------------------------------------------------------


def _service_account_kubeconfig(
    api_client: client.ApiClient, admin_kubeconfig: Path, namespace: str, account: str, path: Path
) -> Path:
    """A kubeconfig that authenticates with a fresh token of ``account`` (TokenRequest)."""
    request = client.CoreV1Api(api_client).create_namespaced_service_account_token(
        account,
        namespace,
        client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
        ),
    )
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    context_name = admin["current-context"]
    context = next(c for c in admin["contexts"] if c["name"] == context_name)["context"]
    cluster = next(c for c in admin["clusters"] if c["name"] == context["cluster"])
    user = f"system:serviceaccount:{namespace}:{account}"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [cluster],
                "users": [{"name": user, "user": {"token": request.status.token}}],
                "contexts": [
                    {"name": "operator", "context": {"cluster": cluster["name"], "user": user}}
                ],
                "current-context": "operator",
            }
        )
    )
    return path


def _host_arguments(chart_arguments: list[str], overrides: dict[str, str]) -> list[str]:
    """The Deployment's ``hush operator`` arguments with host-specific ``overrides``."""
    assert chart_arguments[0] == "operator"
    kept = [
        argument
        for argument in chart_arguments[1:]
        if argument.partition("=")[0] not in (*overrides, "--liveness")
    ]
    return kept + [f"{flag}={value}" for flag, value in overrides.items()]


@dataclasses.dataclass
class Installed:
    helm: Helm
    release: str
    fullname: str
    namespace: str  # the release's
    workloads: str  # an ordinary namespace where applications run
    service_account: str
    digest: str
    pod: str  # the chart pod the host operator stands in for
    operator: subprocess.Popen[bytes]
    log: Path
    accountant_url: str
    metrics_url: str
    uninstalled: bool = False

    def operator_log(self) -> str:
        return self.log.read_text(errors="replace")


def _bundles(api_client: client.ApiClient, fullname: str) -> dict[str, set[str]]:
    """The caBundles of the release's webhook configurations, by kind."""
    admission = client.AdmissionregistrationV1Api(api_client)
    found: dict[str, set[str]] = {}
    for kind, read in (
        ("mutating", admission.read_mutating_webhook_configuration),
        ("validating", admission.read_validating_webhook_configuration),
    ):
        suffix = "injector" if kind == "mutating" else "validator"
        try:
            configuration = read(f"{fullname}-{suffix}")
        except ApiException as error:
            if error.status != 404:
                raise
            continue
        found[kind] = {hook.client_config.ca_bundle or "" for hook in configuration.webhooks}
    return found


def _endpoint_pods(api_client: client.ApiClient, namespace: str, service: str) -> list[str]:
    slices = client.DiscoveryV1Api(api_client).list_namespaced_endpoint_slice(
        namespace, label_selector=f"kubernetes.io/service-name={service}"
    )
    return sorted(
        endpoint.target_ref.name
        for endpoint_slice in slices.items
        for endpoint in endpoint_slice.endpoints or []
        if endpoint.conditions.ready and endpoint.target_ref is not None
    )


def _release_pods(api_client: client.ApiClient, namespace: str, release: str) -> list[str]:
    pods = client.CoreV1Api(api_client).list_namespaced_pod(
        namespace, label_selector=f"app.kubernetes.io/instance={release}"
    )
    return sorted(
        pod.metadata.name for pod in pods.items if pod.metadata.deletion_timestamp is None
    )


@pytest.fixture(scope="module")
def installed(
    api_client: client.ApiClient,
    kubeconfig: Path,
    uses_dev_cluster: bool,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Installed]:
    directory = tmp_path_factory.mktemp("chart")
    helm = Helm(_helm_binary(uses_dev_cluster), kubeconfig, directory / "helm")
    core = client.CoreV1Api(api_client)
    suffix = secrets.token_hex(3)
    release = f"chart{suffix}"  # sorts before hush-*: its mutating webhook is called first
    fullname = f"{release}-hush"
    release_namespace = f"hush-chart-{suffix}"
    workloads = f"hush-e2e-apps-{suffix}"
    for name in (release_namespace, workloads):
        core.create_namespace({"metadata": {"name": name, "labels": {"hush.dev/e2e": "true"}}})
    digest = "sha256:" + secrets.token_hex(32)
    webhook_port, accountant_port, metrics_port = (operator_process.free_port() for _ in "abc")
    try:
        _adopt_crds(api_client, release, release_namespace)
        helm(
            "install", release, str(CHART), f"--namespace={release_namespace}",
            f"--set=image.digest={digest}",
            f"--set=webhook.url=https://127.0.0.1:{webhook_port}",
            # The dev cluster's admin may label namespaces for enforcement.
            "--set=admissionPolicies.enforcementLabelGroups={system:masters}",
            "--wait", f"--timeout={HELM_TIMEOUT}",
        )  # fmt: skip
        deployment = client.AppsV1Api(api_client).read_namespaced_deployment(
            f"{fullname}-operator", release_namespace
        )
        (container,) = deployment.spec.template.spec.containers
        account = deployment.spec.template.spec.service_account_name
        pod = waiting.wait_for(
            lambda: _release_pods(api_client, release_namespace, release),
            timeout=60,
            description="the chart's operator pod",
        )[0]
        # No certificate by hand: the chart's self-signed mode, the operator keeps the
        # accountant's CA and leaf in accountant.tlsSecretName (also valid for the loopback
        # address the host process listens on) and publishes the CA for sidecars.
        arguments = _host_arguments(
            container.args,
            {
                "--accountant-host": "127.0.0.1",
                "--accountant-port": str(accountant_port),
                "--accountant-cert-ip": "127.0.0.1",
                "--accountant-cert-dir": str(directory / "accountant-certs"),
                "--webhook-host": "127.0.0.1",
                "--webhook-port": str(webhook_port),
                "--webhook-cert-dir": str(directory / "webhook-certs"),
                "--metrics-port": str(metrics_port),
            },
        )
        operator_kubeconfig = _service_account_kubeconfig(
            api_client, kubeconfig, release_namespace, account, directory / "operator.kubeconfig"
        )
        log = directory / "operator.log"
        with operator_process.running_operator(
            operator_kubeconfig,
            log,
            *arguments,
            environment={"POD_NAMESPACE": release_namespace, "POD_NAME": pod},
        ) as process:
            yield Installed(
                helm=helm,
                release=release,
                fullname=fullname,
                namespace=release_namespace,
                workloads=workloads,
                service_account=account,
                digest=digest,
                pod=pod,
                operator=process,
                log=log,
                accountant_url=f"https://127.0.0.1:{accountant_port}",
                metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
            )
    finally:
        helm("uninstall", release, f"--namespace={release_namespace}", "--ignore-not-found",
             "--wait", f"--timeout={HELM_TIMEOUT}")  # fmt: skip
        for name in (workloads, release_namespace):
            with contextlib.suppress(ApiException):
                core.delete_namespace(name, propagation_policy="Background")


def _assert_no_forbidden(installed: Installed) -> None:
    """The chart's RBAC sufficed for everything the operator did so far."""
    lines = [
        line
        for line in installed.operator_log().splitlines()
        # A test namespace being deleted also answers "forbidden"; that is not RBAC.
        if "forbidden" in line.lower() and "being terminated" not in line
    ]
    assert lines == [], "\n".join(lines[:5])


# -- the tests, in the order a platform engineer meets them -----------------------------------


def test_the_operator_serves_the_charts_webhooks_and_leads_the_accountant(
    api_client: client.ApiClient, installed: Installed
) -> None:
    # The operator made the certificate for the webhook.url IP and published its CA into
    # both of the chart's webhook configurations (which render no caBundle).
    bundles = waiting.wait_for(
        lambda: (
            found
            if len(found := _bundles(api_client, installed.fullname)) == 2
            and all(len(values) == 1 and "" not in values for values in found.values())
            else None
        ),
        timeout=60,
        description="the operator to write the caBundle into both webhook configurations",
        observe=lambda: _bundles(api_client, installed.fullname),
    )
    assert bundles["mutating"] == bundles["validating"]
    secret = client.CoreV1Api(api_client).read_namespaced_secret(
        f"{installed.fullname}-webhook-tls", installed.namespace
    )
    assert base64.b64decode(secret.data["ca.crt"]) == base64.b64decode(
        next(iter(bundles["mutating"]))
    )
    # Charges go to the elected replica alone: it labelled its pod, which the accountant
    # Service selects; webhook calls may go to every replica.
    waiting.wait_for(
        lambda: (
            _endpoint_pods(api_client, installed.namespace, f"{installed.fullname}-accountant")
            == [installed.pod]
        ),
        timeout=60,
        description="the accountant Service to route to the leader's pod",
        observe=lambda: _endpoint_pods(
            api_client, installed.namespace, f"{installed.fullname}-accountant"
        ),
    )
    pod = client.CoreV1Api(api_client).read_namespaced_pod(installed.pod, installed.namespace)
    assert pod.metadata.labels[leadership.LEADER_LABEL] == "true"
    every_replica = _release_pods(api_client, installed.namespace, installed.release)
    waiting.wait_for(
        lambda: (
            _endpoint_pods(api_client, installed.namespace, f"{installed.fullname}-webhook")
            == every_replica
        ),
        timeout=60,
        description="the webhook Service to route to every replica",
    )
    _assert_no_forbidden(installed)


def _pod(name: str, account: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "annotations": {mutation.POLICY_ANNOTATION: POLICY}},
        "spec": {
            "serviceAccountName": account,
            "containers": [
                {
                    "name": "app",
                    "image": APP_IMAGE,
                    "ports": [{"name": "http", "containerPort": 8080}],
                }
            ],
        },
    }


def _sidecar(pod: client.V1Pod) -> client.V1Container | None:
    containers = [*(pod.spec.init_containers or []), *pod.spec.containers]
    return next((c for c in containers if c.name == "hush-sidecar"), None)


def _create_pod_through_the_injector(
    core: client.CoreV1Api, namespace: str, manifest: dict[str, Any]
) -> client.V1Pod:
    """Create the pod once the chart's injector answers: until the apiserver has loaded the
    caBundle, the Ignore webhook is skipped and the injected-pods policy refuses the pod."""

    def injected_dry_run() -> bool:
        try:
            pod = core.create_namespaced_pod(namespace, manifest, dry_run="All")
        except ApiException as error:
            if error.status in (400, 403, 422) and "did not run" in str(error.body):
                return False
            raise
        return _sidecar(pod) is not None

    waiting.wait_for(
        injected_dry_run, timeout=60, interval=0.5, description="the injector to answer"
    )
    return core.create_namespaced_pod(namespace, manifest)


def _charge(
    installed: Installed, token: str, request_id: str, policy_hash: str, ca: str
) -> tuple[int, dict[str, Any]]:
    body = spending.charge_body(request_id, POLICY, policy_hash)
    request = urllib.request.Request(  # noqa: S310 - a fixed https URL on loopback
        f"{installed.accountant_url}/v1/charge",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    context = ssl.create_default_context(cadata=ca)  # what the sidecar mounts
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as reply:  # noqa: S310
            return int(reply.status), json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return int(error.code), json.loads(error.read() or b"{}")


def test_budgets_injection_charges_and_rollouts_work_under_the_charts_rbac(
    api_client: client.ApiClient, installed: Installed
) -> None:
    namespace, core = installed.workloads, client.CoreV1Api(api_client)
    hush_resources.create(api_client, namespace, spending.budget_manifest(POLICY, team_epsilon=1.0))
    hush_resources.create(
        api_client, namespace, spending.count_policy_manifest(POLICY, budget=POLICY, epsilon=0.1)
    )
    policy = hush_resources.wait_for_condition(
        api_client, namespace, "DPPolicy", POLICY, status="True", reason="Accepted"
    )
    hush_resources.wait_for_condition(
        api_client, namespace, "PrivacyBudget", POLICY, status="True", reason="Accepted"
    )

    # The chart's mutating webhook injects the chart's image, by digest, pointing at the
    # chart's accountant Service.
    account = f"app-{POLICY}"
    core.create_namespaced_service_account(namespace, {"metadata": {"name": account}})
    pod = _create_pod_through_the_injector(core, namespace, _pod(f"app-{POLICY}", account))
    sidecar = _sidecar(pod)
    assert sidecar is not None
    assert sidecar.image == f"ghcr.io/hush-dev/hush@{installed.digest}"
    baked = next(variable.value for variable in sidecar.env if variable.name.startswith("HUSH_"))
    assert f"https://{installed.fullname}-accountant.{installed.namespace}.svc:8443" in baked
    assert (
        pod.metadata.annotations[mutation.POLICY_HASH_ANNOTATION] == policy["status"]["policyHash"]
    )

    # A charge with the pod's projected token: TokenReview, the pod, the policy, the
    # compare-and-swap status write, all as the chart's ServiceAccount.
    token = core.create_namespaced_service_account_token(
        account,
        namespace,
        client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(
                audiences=[spending.AUDIENCE],
                expiration_seconds=3600,
                bound_object_ref=client.V1BoundObjectReference(
                    kind="Pod", api_version="v1", name=pod.metadata.name, uid=pod.metadata.uid
                ),
            )
        ),
    ).status.token
    # The CA the operator published for the sidecars of this namespace: the one it keeps in
    # the chart's accountant Secret.
    published = waiting.wait_for(
        lambda: (
            core.read_namespaced_config_map(mutation.ACCOUNTANT_CA_CONFIG_MAP, namespace).data or {}
        ).get("ca.crt"),
        timeout=60,
        description="the accountant's CA published in the workloads' namespace",
    )
    secret = core.read_namespaced_secret("hush-accountant-tls", installed.namespace)
    assert base64.b64decode(secret.data["ca.crt"]).decode() == published
    status, answer = _charge(installed, token, "chart-1", policy["status"]["policyHash"], published)
    assert status == 200, answer
    ledger = spending.ledger(api_client, namespace, POLICY)
    assert [entry.request_id for entry in ledger.entries] == ["chart-1"]

    # A policy change rolls a Deployment that uses it (server-side apply of one annotation).
    apps = client.AppsV1Api(api_client)
    deployment = {
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {
                    "labels": {"app": "web"},
                    "annotations": {mutation.POLICY_ANNOTATION: POLICY},
                },
                "spec": {"containers": _pod("web", "default")["spec"]["containers"]},
            },
        },
    }
    apps.create_namespaced_deployment(namespace, deployment)

    def pods_at(policy_hash: str) -> bool:
        pods = core.list_namespaced_pod(namespace, label_selector="app=web").items
        return bool(pods) and all(
            (pod.metadata.annotations or {}).get(mutation.POLICY_HASH_ANNOTATION) == policy_hash
            for pod in pods
        )

    waiting.wait_for(
        lambda: pods_at(policy["status"]["policyHash"]),
        timeout=120,
        description="the Deployment's pod, injected at the first policy hash",
    )
    routes = policy["spec"]["routes"]
    routes[0]["epsilon"] = 0.2
    hush_resources.patch_spec(api_client, namespace, "DPPolicy", POLICY, {"routes": routes})

    def rolled() -> str | None:
        template = apps.read_namespaced_deployment("web", namespace).spec.template
        value = (template.metadata.annotations or {}).get(trigger.ROLLOUT_ANNOTATION)
        return str(value) if value and value != policy["status"]["policyHash"] else None

    new_hash = waiting.wait_for(rolled, timeout=120, description="the rollout annotation")
    current = hush_resources.get(api_client, namespace, "DPPolicy", POLICY)
    assert current["status"]["policyHash"] == new_hash
    _assert_no_forbidden(installed)


def test_the_charts_validating_webhook_enforces(
    api_client: client.ApiClient, installed: Installed, kubectl: Path, kubeconfig: Path
) -> None:
    namespace = installed.workloads

    def kubectl_run(*arguments: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(kubectl), f"--kubeconfig={kubeconfig}", *arguments],
            input=stdin, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    labelled = kubectl_run(
        "label", "namespace", namespace, f"{validation.ENFORCEMENT_LABEL}=enforce", "--overwrite"
    )
    assert labelled.returncode == 0, labelled.stderr
    marks = {"hush.dev/team": "analytics", "hush.dev/sensitivity": "confidential"}
    workload = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "refused", "labels": marks},
        "spec": {
            "selector": {"matchLabels": {"app": "refused"}},
            "template": {
                "metadata": {
                    "labels": {"app": "refused", **marks},
                    "annotations": {mutation.POLICY_ANNOTATION: "missing-policy"},
                },
                "spec": {"containers": [{"name": "app", "image": APP_IMAGE}]},
            },
        },
    }
    denied_before = webhook_setup.admission_requests(
        installed.metrics_url, "validate-workloads", "denied"
    )

    def refused_by_the_webhook() -> str | None:
        result = kubectl_run(
            "-n", namespace, "apply", "--dry-run=server", "-f", "-", stdin=json.dumps(workload)
        )
        return result.stderr if result.returncode != 0 else None

    message = waiting.wait_for(
        refused_by_the_webhook, timeout=30, interval=0.5, description="the webhook to refuse"
    )
    assert "missing-policy" in message
    assert "workloads.enforce.hush.dev" in message
    # The call reached this operator through the release's webhook configuration.
    assert (
        webhook_setup.admission_requests(installed.metrics_url, "validate-workloads", "denied")
        > denied_before
    )


def _may(
    api_client: client.ApiClient,
    user: str,
    namespace: str,
    verb: str,
    group: str,
    resource: str,
    subresource: str = "",
) -> bool:
    account_namespace = user.split(":")[2]
    review = client.AuthorizationV1Api(api_client).create_subject_access_review(
        {
            "spec": {
                "user": user,
                "groups": [
                    "system:serviceaccounts",
                    f"system:serviceaccounts:{account_namespace}",
                    "system:authenticated",
                ],
                "resourceAttributes": {
                    "namespace": namespace,
                    "verb": verb,
                    "group": group,
                    "resource": resource,
                    "subresource": subresource,
                },
            }
        }
    )
    return bool(review.status.allowed)


def test_the_sidecars_identity_cannot_write_budgets_or_read_secrets(
    api_client: client.ApiClient, installed: Installed, kubectl: Path, kubeconfig: Path
) -> None:
    namespace = installed.workloads
    with contextlib.suppress(ApiException):  # made by the injection test, unless run alone
        client.CoreV1Api(api_client).create_namespaced_service_account(
            namespace, {"metadata": {"name": f"app-{POLICY}"}}
        )
    sidecar = f"system:serviceaccount:{namespace}:app-{POLICY}"
    operator = f"system:serviceaccount:{installed.namespace}:{installed.service_account}"
    for where in (namespace, installed.namespace):
        for verb in ("update", "patch"):
            assert not _may(
                api_client, sidecar, where, verb, "hush.dev", "privacybudgets", "status"
            )
            assert not _may(api_client, sidecar, where, verb, "hush.dev", "privacybudgets")
        for verb in ("get", "list", "watch"):
            assert not _may(api_client, sidecar, where, verb, "", "secrets")
    # The only writer of the ledger is the operator (control: the review itself works).
    assert _may(api_client, operator, namespace, "update", "hush.dev", "privacybudgets", "status")
    assert not _may(api_client, operator, namespace, "get", "", "secrets")
    assert not _may(api_client, operator, namespace, "patch", "", "pods")

    # What a platform engineer would type.
    asked = subprocess.run(
        [str(kubectl), f"--kubeconfig={kubeconfig}", "auth", "can-i", "update",
         "privacybudgets.hush.dev", "--subresource=status", f"--namespace={namespace}",
         f"--as={sidecar}"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert asked.stdout.strip() == "no", asked.stdout + asked.stderr

    # The token the sidecar actually holds is for the accountant only: the apiserver refuses
    # it outright.
    token = (
        client.CoreV1Api(api_client)
        .create_namespaced_service_account_token(
            f"app-{POLICY}",
            namespace,
            client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(
                    audiences=[spending.AUDIENCE], expiration_seconds=600
                )
            ),
        )
        .status.token
    )
    configuration = client.Configuration()
    configuration.host = api_client.configuration.host
    configuration.ssl_ca_cert = api_client.configuration.ssl_ca_cert
    configuration.api_key = {"authorization": f"Bearer {token}"}
    with client.ApiClient(configuration) as as_sidecar, pytest.raises(ApiException) as refused:
        client.CoreV1Api(as_sidecar).list_namespaced_secret(namespace)
    assert refused.value.status == 401


def test_upgrade_and_uninstall_leave_no_webhook_configuration_pointing_at_nothing(
    api_client: client.ApiClient, installed: Installed
) -> None:
    helm, core = installed.helm, client.CoreV1Api(api_client)
    before = _bundles(api_client, installed.fullname)
    assert len(before) == 2

    # Two replicas: a second (kwok) pod, a PodDisruptionBudget; the operator's caBundle
    # survives the upgrade (the chart never renders one, so helm's merge leaves it).
    helm(
        "upgrade", installed.release, str(CHART), f"--namespace={installed.namespace}",
        "--reuse-values", "--set=operator.replicas=2", "--wait", f"--timeout={HELM_TIMEOUT}",
    )  # fmt: skip
    assert _bundles(api_client, installed.fullname) == before
    policy_budgets = client.PolicyV1Api(api_client).list_namespaced_pod_disruption_budget(
        installed.namespace
    )
    assert [budget.spec.min_available for budget in policy_budgets.items] == [1]
    pods = waiting.wait_for(
        lambda: (
            found
            if len(found := _release_pods(api_client, installed.namespace, installed.release)) == 2
            else None
        ),
        timeout=60,
        description="two operator pods",
    )
    waiting.wait_for(
        lambda: (
            _endpoint_pods(api_client, installed.namespace, f"{installed.fullname}-webhook") == pods
        ),
        timeout=60,
        description="the webhook Service to route to both replicas",
    )
    assert _endpoint_pods(api_client, installed.namespace, f"{installed.fullname}-accountant") == [
        installed.pod
    ]
    # Everything so far worked with the chart's RBAC. (From here on the host operator runs
    # with the arguments of the first revision, which the next revision's RBAC no longer
    # matches: in a cluster the Deployment would roll to the new arguments.)
    _assert_no_forbidden(installed)

    # Turning injection off removes the mutating configuration instead of leaving it to call
    # an operator that no longer injects; the running operator never re-creates it.
    helm(
        "upgrade", installed.release, str(CHART), f"--namespace={installed.namespace}",
        "--reuse-values", "--set=webhook.injection.enabled=false", "--wait",
        f"--timeout={HELM_TIMEOUT}",
    )  # fmt: skip
    assert set(_bundles(api_client, installed.fullname)) == {"validating"}

    helm("uninstall", installed.release, f"--namespace={installed.namespace}", "--wait",
         f"--timeout={HELM_TIMEOUT}")  # fmt: skip
    admission = client.AdmissionregistrationV1Api(api_client)
    mine = f"{installed.fullname}-"

    def left_over() -> list[str]:
        names = [
            *(c.metadata.name for c in admission.list_mutating_webhook_configuration().items),
            *(c.metadata.name for c in admission.list_validating_webhook_configuration().items),
            *(p.metadata.name for p in admission.list_validating_admission_policy().items),
            *(b.metadata.name for b in admission.list_validating_admission_policy_binding().items),
        ]
        return [name for name in names if name.startswith(mine)]

    assert left_over() == []
    operator_process.stop(installed.operator)  # it never creates a webhook configuration
    assert left_over() == []
    assert not _endpoint_pods(api_client, installed.namespace, f"{installed.fullname}-webhook")
    assert (
        not client.RbacAuthorizationV1Api(api_client)
        .list_cluster_role(label_selector=f"app.kubernetes.io/instance={installed.release}")
        .items
    )
    # The CRDs stay, and with them every budget and its ledger.
    extensions = client.ApiextensionsV1Api(api_client)
    for manifest in crds.all_crds():
        extensions.read_custom_resource_definition(manifest["metadata"]["name"])
    ledger = spending.ledger(api_client, installed.workloads, POLICY)
    assert [entry.request_id for entry in ledger.entries] == ["chart-1"]
    assert core.read_namespace(installed.workloads).status.phase == "Active"
