"""Hush itself on real pods: the chart installed with the image built here, an injected app.

Runs only with ``HUSH_REAL_NODE=1`` (root on Linux, like ``e2e/test_real_node.py``; one real
node per machine, so not while another cluster owns it). It starts the cluster ``h13`` with
``hush dev up --real-node --no-hush``, builds and pushes the images
(``python -m hush.dev.image_build``), and installs ``charts/hush`` into ``hush-system`` with
``hush.dev.release_install``: Hush's image by digest from the registry on 127.0.0.1, two
operator replicas, injection on, the accountant's certificate as the documented Secret.

Then, on the real node:

- the operator pods run the pushed digest, on our bridge, and ``e2e/test_release.py`` (run
  with ``HUSH_E2E_RELEASE``/``HUSH_E2E_IMAGE`` pointing at this install, not copied) passes:
  UID 65532, read-only root, no restarts, a budget reconciled by the in-cluster operator, the
  apiserver calling the validating webhook through its Service;
- an annotated Deployment of the sample app (by digest), in a namespace enforcing the
  restricted Pod Security Standard (so is ``hush-system``), gets the native sidecar, which
  starts before the app; probes pass; a client pod (by the Service's DNS name) and the host
  (by its ClusterIP) get noised answers (``X-DP-*``) that the ledger records as charges, made
  by the sidecar at the accountant's Service DNS name; the budget drains to 429;
- ``kubectl logs`` and ``kubectl exec`` reach the kubelet.

The last test is ``hush dev down``. Every wait is bounded; on a failure the namespaces'
pods are described and their logs and events printed. Every packet from the host to a
cluster address goes to an address first checked with ``ip route get`` (our bridge).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from hush.accountant import leadership
from hush.admission import mutation, validation
from hush.dev import network_guard, real_node, release_install, sample_app

import devcluster
import hush_resources
import real_node_cluster
import spending
import waiting

pytestmark = pytest.mark.skipif(
    os.environ.get("HUSH_REAL_NODE") != "1",
    reason=(
        "real-pods e2e runs only with HUSH_REAL_NODE=1 (needs root on Linux; it starts "
        "containerd, a kubelet and a registry, builds images and installs the chart)"
    ),
)

CLUSTER = real_node_cluster.name("real-pods")
POD_TIMEOUT_SECONDS = 180.0
BUILD_TIMEOUT_SECONDS = 3600.0
ROUTE_EPSILON = 0.25
TEAM_EPSILON = 1.0  # four releases at ROUTE_EPSILON, then 429
APP = "census-api"
CLIENT = "client"
RESTRICTED: dict[str, Any] = {
    "runAsNonRoot": True,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
# Run in the client pod by `kubectl exec`: one GET, its status, headers and body as JSON.
QUERY_SCRIPT = """\
import json, sys, urllib.error, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    with opener.open(sys.argv[1], timeout=20) as response:
        status, headers, body = response.status, dict(response.headers), response.read()
except urllib.error.HTTPError as error:
    status, headers, body = error.code, dict(error.headers), error.read()
print(json.dumps({"status": status, "headers": headers, "body": body.decode()}))
"""


class Real(real_node_cluster.Cluster):
    """The cluster of this module: kubectl, the API, the images and the installed release."""

    def __init__(self, cluster_name: str, kubeconfig: Path) -> None:
        super().__init__(cluster_name, kubeconfig)
        self.api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig)
        )
        self.images: dict[str, Any] = {}
        self.release: release_install.Release | None = None
        self.timings: dict[str, float] = {}

    def kubectl(self, *arguments: str, stdin: str | None = None, check: bool = True) -> str:
        """Checked: stdout only (it is parsed); unchecked: stdout and stderr (for the dump)."""
        result = self.run_kubectl(*arguments, stdin=stdin)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(arguments)}: {result.stderr}")
        return result.stdout + (result.stderr if not check else "")

    def dump(self, *namespaces: str) -> str:
        """What a failure needs: pods described, every container's log, events."""
        parts: list[str] = []
        for namespace in namespaces:
            names = self.kubectl(
                "get", "pods", f"--namespace={namespace}", "--output=name", check=False
            ).split()
            commands = [
                ("get", "pods,services,endpointslices", "--output=wide"),
                ("describe", "pods"),
                *(("logs", name, "--all-containers", "--prefix", "--tail=80") for name in names),
                ("get", "events", "--sort-by=.lastTimestamp"),
            ]
            for arguments in commands:
                output = self.kubectl(*arguments, f"--namespace={namespace}", check=False)
                parts.append(f"--- kubectl {' '.join(arguments)} -n {namespace}\n{output}")
        return "\n".join(parts)


@contextlib.contextmanager
def diagnosed(real: Real, *namespaces: str) -> Iterator[None]:
    """On any failure inside, print the namespaces' state (pytest shows it with the failure)."""
    try:
        yield
    except BaseException:
        print(real.dump(*namespaces), file=sys.stderr)
        raise


@pytest.fixture(scope="module")
def real() -> Iterator[Real]:
    began = time.monotonic()
    found = Real(CLUSTER, real_node_cluster.up(CLUSTER, timeout=1800))
    found.timings["up"] = time.monotonic() - began
    try:
        began = time.monotonic()
        built = subprocess.run(
            [sys.executable, "-m", "hush.dev.image_build", "--name", CLUSTER],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_SECONDS,
            check=False,
        )
        assert built.returncode == 0, built.stderr[-4000:]
        found.images = json.loads(built.stdout)
        found.timings["images"] = time.monotonic() - began
        began = time.monotonic()
        with diagnosed(found, release_install.NAMESPACE):
            found.release = release_install.install(
                CLUSTER, os.environ, image=found.images["hush"]["reference"]
            )
        found.timings["install"] = time.monotonic() - began
        yield found
    finally:
        found.api.close()  # type: ignore[no-untyped-call]
        # The last test tears it down and checks; this only covers an earlier failure.
        real_node_cluster.down(CLUSTER)


def _release(real: Real) -> release_install.Release:
    assert real.release is not None
    return real.release


def _on_our_bridge(address: str) -> None:
    """Checked before the first packet: ``address`` routes to our bridge, nowhere else."""
    assert real_node_cluster.route_device(address) == network_guard.BRIDGE, address


# -- the chart ----------------------------------------------------------------------------------


def test_the_operator_runs_as_two_pods_of_the_built_image_on_the_real_node(real: Real) -> None:
    release = _release(real)
    with diagnosed(real, release.namespace):
        pods = real.get(
            "pods",
            f"--namespace={release.namespace}",
            f"--selector=app.kubernetes.io/instance={release.name},"
            "app.kubernetes.io/component=operator",
        )["items"]
        assert len(pods) == release_install.REPLICAS
        # Admitted under the restricted Pod Security Standard, enforced on the namespace.
        labels = real.get("namespace", release.namespace)["metadata"]["labels"]
        assert labels[release_install.PSS_ENFORCE_LABEL] == "restricted"
        for pod in pods:
            assert pod["spec"]["nodeName"] == real_node.NODE_NAME
            pod_ip = ipaddress.ip_address(pod["status"]["podIP"])
            assert pod_ip in ipaddress.ip_network(network_guard.NODE_POD_SUBNET)
            (status,) = pod["status"]["containerStatuses"]
            # What runs is exactly the digest pushed to our registry, pulled from there.
            assert status["imageID"] == release.image, status
            assert status["ready"] is True
            assert status["restartCount"] == 0, status
        # One replica leads and labels its pod: the accountant Service routes to it alone.
        leaders = [
            pod["metadata"]["name"]
            for pod in pods
            if pod["metadata"]["labels"].get(leadership.LEADER_LABEL) == "true"
        ]
        assert len(leaders) == 1, leaders


def test_the_release_checks_pass_against_this_install(real: Real) -> None:
    """``e2e/test_release.py`` unchanged, pointed at this install (none of it may skip)."""
    release = _release(real)
    environment = {
        **os.environ,
        "HUSH_KUBECONFIG": str(real.kubeconfig),
        "HUSH_E2E_RELEASE": f"{release.namespace}/{release.name}",
        "HUSH_E2E_IMAGE": release.image,
    }
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "e2e/test_release.py", "-q", "-rs",
         "-p", "no:cacheprovider"],
        cwd=devcluster.REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )  # fmt: skip
    with diagnosed(real, release.namespace):
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
        summary = result.stdout.strip().splitlines()[-1]
        assert "3 passed" in summary, summary
        assert "skipped" not in summary, summary


# -- an injected application --------------------------------------------------------------------


class App:
    """The app's namespace and names, the pod the sidecar was injected into, the Service."""

    def __init__(self, namespace: str, budget: str, policy: str) -> None:
        self.namespace = namespace
        self.budget = budget
        self.policy = policy
        self.pod: dict[str, Any] = {}
        self.cluster_ip = ""


def _deployment(image: str, policy: str) -> dict[str, Any]:
    labels = {
        "app": APP,
        validation.TEAM_LABEL: spending.TEAM,
        validation.SENSITIVITY_LABEL: "internal",
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": APP, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": APP}},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {mutation.POLICY_ANNOTATION: policy},
                },
                "spec": {
                    "nodeSelector": real_node.NODE_LABELS,
                    "terminationGracePeriodSeconds": 1,
                    "containers": [
                        {
                            "name": "app",
                            "image": image,
                            # Named, so that the injector gives the name to the sidecar.
                            "ports": [{"name": "http", "containerPort": 8080}],
                            # By number: the app's own port, not the sidecar's.
                            "readinessProbe": {
                                "httpGet": {"path": "/healthz", "port": 8080},
                                "periodSeconds": 1,
                            },
                            "securityContext": RESTRICTED,
                        }
                    ],
                },
            },
        },
    }


def _service() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": APP},
        "spec": {
            "selector": {"app": APP},
            # By name: after injection "http" is the sidecar's port.
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        },
    }


def _client_pod(image: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": CLIENT, "labels": {"app": CLIENT}},
        "spec": {
            "nodeSelector": real_node.NODE_LABELS,
            "terminationGracePeriodSeconds": 1,
            "automountServiceAccountToken": False,
            "containers": [
                {
                    "name": "client",
                    "image": image,
                    "command": ["python3", "-c", "import signal; signal.pause()"],
                    "securityContext": RESTRICTED,
                }
            ],
        },
    }


def _ready_pod(real: Real, namespace: str, selector: str) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        for pod in real.get("pods", f"--namespace={namespace}", f"--selector={selector}")["items"]:
            statuses = [
                *pod["status"].get("initContainerStatuses", []),
                *pod["status"].get("containerStatuses", []),
            ]
            for status in statuses:
                waiting_state = status.get("state", {}).get("waiting", {})
                if waiting_state.get("reason") in ("ErrImagePull", "ImagePullBackOff"):
                    raise AssertionError(f"{pod['metadata']['name']}: {waiting_state}")
            conditions = pod["status"].get("conditions", [])
            if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                found: dict[str, Any] = pod
                return found
        return None

    return waiting.wait_for(
        ready, timeout=POD_TIMEOUT_SECONDS, interval=1, description=f"a Ready pod {selector}"
    )


@pytest.fixture(scope="module")
def app(real: Real) -> Iterator[App]:
    release = _release(real)
    namespace = f"hush-e2e-real-{secrets.token_hex(3)}"
    found = App(namespace, budget="census", policy="survey")
    core = client.CoreV1Api(real.api)
    # Restricted Pod Security enforced: the injected pod (app and sidecar) must meet it.
    labels = {"hush.dev/e2e": "true", release_install.PSS_ENFORCE_LABEL: "restricted"}
    core.create_namespace({"metadata": {"name": namespace, "labels": labels}})
    try:
        with diagnosed(real, namespace, release.namespace):
            hush_resources.create(
                real.api,
                namespace,
                spending.budget_manifest(found.budget, team_epsilon=TEAM_EPSILON),
            )
            policy = spending.count_policy_manifest(
                found.policy, budget=found.budget, epsilon=ROUTE_EPSILON
            )
            # The sample app's one parameter; a query that differs is a new release.
            policy["spec"]["routes"][0]["queryParameters"] = [{"name": "region"}]
            hush_resources.create(real.api, namespace, policy)
            for kind, name in (("PrivacyBudget", found.budget), ("DPPolicy", found.policy)):
                hush_resources.wait_for_condition(
                    real.api, namespace, kind, name, status="True", timeout=120
                )
            # The operator publishes its CA where a DPPolicy lives; the sidecar mounts it.
            waiting.wait_for(
                lambda: (
                    core.list_namespaced_config_map(
                        namespace,
                        field_selector=f"metadata.name={mutation.ACCOUNTANT_CA_CONFIG_MAP}",
                    ).items
                ),
                timeout=60,
                description="the accountant's CA ConfigMap in the app's namespace",
            )
            app_image = real.images["sample_app"]["reference"]
            for manifest in (
                _deployment(app_image, found.policy),
                _service(),
                _client_pod(app_image),
            ):
                real.kubectl(
                    "apply", f"--namespace={namespace}", "--filename=-", stdin=json.dumps(manifest)
                )
            found.pod = _ready_pod(real, namespace, f"app={APP}")
            _ready_pod(real, namespace, f"app={CLIENT}")
            found.cluster_ip = real.get("service", APP, f"--namespace={namespace}")["spec"][
                "clusterIP"
            ]
        yield found
    finally:
        real.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def _container(pod: dict[str, Any], name: str, *, init: bool) -> dict[str, Any]:
    key = "initContainers" if init else "containers"
    found: dict[str, Any] = next(c for c in pod["spec"].get(key, []) if c["name"] == name)
    return found


def _status(pod: dict[str, Any], name: str, *, init: bool) -> dict[str, Any]:
    key = "initContainerStatuses" if init else "containerStatuses"
    found: dict[str, Any] = next(s for s in pod["status"].get(key, []) if s["name"] == name)
    return found


def test_the_injected_native_sidecar_starts_before_the_app_and_the_pod_is_ready(
    real: Real, app: App
) -> None:
    release = _release(real)
    pod = app.pod
    with diagnosed(real, app.namespace):
        assert pod["spec"]["nodeName"] == real_node.NODE_NAME
        sidecar = _container(pod, "hush-sidecar", init=True)
        assert sidecar["restartPolicy"] == "Always"  # native sidecar (KEP-753)
        assert sidecar["image"] == release.image  # the chart's image, by digest
        # The sidecar charges at the accountant's Service DNS name (resolved by CoreDNS).
        assert release_install.accountant_url(release.name, release.namespace) in json.dumps(
            sidecar
        )
        sidecar_status = _status(pod, "hush-sidecar", init=True)
        app_status = _status(pod, "app", init=False)
        assert sidecar_status["imageID"] == release.image
        assert sidecar_status["started"] is True
        assert sidecar_status["ready"] is True
        assert app_status["ready"] is True
        assert sidecar_status["restartCount"] == 0
        assert app_status["restartCount"] == 0
        # The kubelet starts the app only once the sidecar has started (RFC 3339, UTC).
        assert (
            sidecar_status["state"]["running"]["startedAt"]
            <= app_status["state"]["running"]["startedAt"]
        )
        assert _container(pod, "app", init=False)["ports"][0]["name"] == mutation.UPSTREAM_PORT_NAME


def _from_client(real: Real, app: App, path: str) -> dict[str, Any]:
    url = f"http://{APP}.{app.namespace}.svc{path}"  # CoreDNS, then the ClusterIP
    output = real.kubectl(
        "exec", CLIENT, f"--namespace={app.namespace}", "--", "python3", "-c", QUERY_SCRIPT, url
    )
    answer: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return answer


def _from_host(app: App, path: str) -> dict[str, Any]:
    _on_our_bridge(app.cluster_ip)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://{app.cluster_ip}{path}", timeout=20) as response:
            status, headers, body = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        status, headers, body = error.code, dict(error.headers), error.read()
    return {"status": status, "headers": headers, "body": body.decode()}


def test_answers_through_the_service_are_noised_and_charged_until_the_budget_drains(
    real: Real, app: App
) -> None:
    policy_hash = app.pod["metadata"]["annotations"][mutation.POLICY_HASH_ANNOTATION]
    with diagnosed(real, app.namespace, _release(real).namespace):
        # Four different queries (identical ones would be answered from the sidecar's cache).
        answers = [
            _from_client(real, app, "/count?region=north"),
            _from_host(app, "/count?region=south"),
            _from_client(real, app, "/count?region=east"),
            _from_host(app, "/count?region=west"),
        ]
        for answer in answers:
            assert answer["status"] == 200, answer
            headers = answer["headers"]
            assert headers["X-DP-Epsilon"] == str(ROUTE_EPSILON), headers
            assert headers["X-DP-Policy-Hash"] == policy_hash
            assert headers["X-DP-Mechanism"], headers
            assert "X-DP-Cache" not in headers
            assert isinstance(json.loads(answer["body"])["count"], int | float)
        # Noised: the true counts (the sample app's fixed dataset) are not what came back.
        true_counts = [
            sum(1 for person in sample_app.PEOPLE if person.region == region)
            for region in ("north", "south", "east", "west")
        ]
        released = [json.loads(answer["body"])["count"] for answer in answers]
        assert released != true_counts, released
        remaining = [Decimal(answer["headers"]["X-DP-Budget-Remaining"]) for answer in answers]
        assert remaining[-1] == 0, remaining
        # Drained: a new release is refused, from the pod and from the host.
        for refused in (
            _from_client(real, app, "/count?region=centre"),
            _from_host(app, "/count?region=islands"),
        ):
            assert refused["status"] == 429, refused
            assert json.loads(refused["body"])["error"] == "budget-exhausted"

        def charged() -> list[Any] | None:
            ledger = spending.ledger(real.api, app.namespace, app.budget)
            entries = [entry for entry in ledger.entries if entry.action == "charge"]
            return entries if len(entries) >= len(answers) else None

        entries = waiting.wait_for(
            charged, timeout=60, description="the four charges in the budget's ledger"
        )
        assert len(entries) == len(answers)
        assert {entry.consumer.policy for entry in entries} == {app.policy}
        assert {Decimal(entry.epsilon) for entry in entries} == {Decimal(str(ROUTE_EPSILON))}


def test_logs_and_exec_reach_the_kubelet(real: Real, app: App) -> None:
    release = _release(real)
    with diagnosed(real, app.namespace):
        operator_logs = real.kubectl(
            "logs",
            f"--namespace={release.namespace}",
            f"deployment/{release.fullname}-operator",
            "--tail=200",
        )
        assert operator_logs.strip(), "the operator wrote no log"
        sidecar_logs = real.kubectl(
            "logs", app.pod["metadata"]["name"], "--container=hush-sidecar",
            f"--namespace={app.namespace}",
        )  # fmt: skip
        assert sidecar_logs.strip(), "the sidecar wrote no log"
        # exec into an ordinary (not hush.dev/sensitivity=restricted) pod: the image's user.
        identity = real.kubectl(
            "exec", CLIENT, f"--namespace={app.namespace}", "--",
            "python3", "-c", "import os; print(os.getuid(), os.uname().nodename)",
        )  # fmt: skip
        assert identity.split() == ["65532", CLIENT]


def test_down_removes_the_cluster(real: Real) -> None:
    print(
        "h13 timings: "
        + ", ".join(f"{step} {seconds:.1f}s" for step, seconds in real.timings.items()),
        file=sys.stderr,
    )
    result = real_node_cluster.down(CLUSTER)
    assert result.returncode == 0, result.stderr
    assert not Path(real.kubeconfig).exists()
