"""The cluster itself: what every other e2e test takes for granted.

The first tests hold for any cluster (dev or ``HUSH_KUBECONFIG``): Ready nodes, a real
version, and Deployments that roll out, which needs the deployment controller, the
scheduler and kwok's pod stages (including pod-delete, without which a rolling update hangs
on Terminating pods). The last ones are about ``hush dev`` itself and are skipped against
other clusters: ``up`` reuses a healthy cluster, ``status`` names a crashed component, ``up``
recovers from it, and ``down`` leaves no process and no file behind.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

import devcluster
import waiting

pytestmark = pytest.mark.e2e

KUBERNETES_GO_MOD = devcluster.REPO_ROOT / "hack" / "controlplane" / "kubernetes" / "go.mod"


def pinned_kubernetes_version() -> str:
    """The k8s.io/kubernetes version the dev control plane is built from (its go.mod)."""
    match = re.search(
        r"^\s*k8s\.io/kubernetes (v\d+\.\d+\.\d+)", KUBERNETES_GO_MOD.read_text(), re.M
    )
    if match is None:
        raise AssertionError(f"No k8s.io/kubernetes requirement in {KUBERNETES_GO_MOD}")
    return match.group(1)


def as_dict(api_client: client.ApiClient, obj: object) -> dict[str, Any]:
    """A client model as the API's JSON (camelCase keys), free of Optional attributes."""
    data: dict[str, Any] = api_client.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
    return data


def node_is_ready(node: dict[str, Any]) -> bool:
    conditions = node.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def test_nodes_are_ready(api_client: client.ApiClient, kubeconfig: Path, kubectl: Path) -> None:
    nodes = as_dict(api_client, client.CoreV1Api(api_client).list_node())["items"]
    assert nodes, "the cluster has no nodes"
    assert all(node_is_ready(node) for node in nodes), [
        (node["metadata"]["name"], node["status"].get("conditions")) for node in nodes
    ]

    result = subprocess.run(
        [str(kubectl), f"--kubeconfig={kubeconfig}", "get", "nodes", "--no-headers"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.strip().splitlines()]
    assert {row[0] for row in rows} == {node["metadata"]["name"] for node in nodes}
    assert all(row[1] == "Ready" for row in rows), result.stdout


def test_version_is_a_release(api_client: client.ApiClient, uses_dev_cluster: bool) -> None:
    version = as_dict(api_client, client.VersionApi(api_client).get_code())
    # Without the build's version ldflags this is v0.0.0-master+$Format:%H$, which breaks
    # semver checks such as helm's kubeVersion.
    assert re.fullmatch(r"v1\.\d+\.\d+.*", version["gitVersion"]), version
    if uses_dev_cluster:
        assert version["gitVersion"] == pinned_kubernetes_version()


def _deployment(name: str) -> client.V1Deployment:
    labels = {"app": name}
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1DeploymentSpec(
            replicas=3,
            selector=client.V1LabelSelector(match_labels=labels),
            strategy=client.V1DeploymentStrategy(
                type="RollingUpdate",
                rolling_update=client.V1RollingUpdateDeployment(max_unavailable=1, max_surge=1),
            ),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels, annotations={"revision": "1"}),
                spec=client.V1PodSpec(
                    containers=[
                        client.V1Container(name="main", image="registry.k8s.io/pause:3.10")
                    ],
                    # kwok's pod-delete stage removes a terminating pod at a random moment
                    # within its grace period (like a container that takes its time to exit);
                    # 30 s by default, which would make the rolling update needlessly slow.
                    termination_grace_period_seconds=1,
                ),
            ),
        ),
    )


def _read_deployment(api_client: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    apps = client.AppsV1Api(api_client)
    return as_dict(api_client, apps.read_namespaced_deployment_status(name, namespace))


def _list_pods(api_client: client.ApiClient, namespace: str, app: str) -> list[dict[str, Any]]:
    core = client.CoreV1Api(api_client)
    pods = core.list_namespaced_pod(namespace, label_selector=f"app={app}")
    items: list[dict[str, Any]] = as_dict(api_client, pods)["items"]
    return items


def _summary(api_client: client.ApiClient, namespace: str, name: str) -> str:
    deployment = _read_deployment(api_client, namespace, name)
    return f"generation {deployment['metadata']['generation']}, status {deployment['status']}"


def _rolled_out(api_client: client.ApiClient, namespace: str, name: str) -> bool:
    """True when the latest generation of the Deployment is fully rolled out."""
    deployment = _read_deployment(api_client, namespace, name)
    wanted, status = deployment["spec"]["replicas"], deployment["status"]
    return bool(
        status.get("observedGeneration", 0) >= deployment["metadata"]["generation"]
        and status.get("replicas") == wanted
        and status.get("updatedReplicas") == wanted
        and status.get("readyReplicas") == wanted
        and status.get("availableReplicas") == wanted
    )


def test_deployment_rolls_out_and_updates(api_client: client.ApiClient, namespace: str) -> None:
    apps = client.AppsV1Api(api_client)
    apps.create_namespaced_deployment(namespace, _deployment("web"))

    waiting.wait_for(
        lambda: _rolled_out(api_client, namespace, "web"),
        timeout=120,
        description="deployment web to have 3 ready replicas",
        observe=lambda: _summary(api_client, namespace, "web"),
    )
    pods = _list_pods(api_client, namespace, "web")
    assert len(pods) == 3
    assert all(pod["spec"].get("nodeName") for pod in pods), "pods were not scheduled"
    assert all(pod["status"]["phase"] == "Running" for pod in pods)
    old_pods = {pod["metadata"]["name"] for pod in pods}

    patch = {"spec": {"template": {"metadata": {"annotations": {"revision": "2"}}}}}
    apps.patch_namespaced_deployment("web", namespace, patch)

    def replaced() -> bool:
        if not _rolled_out(api_client, namespace, "web"):
            return False
        current = _list_pods(api_client, namespace, "web")
        # Terminating pods disappear only through kwok's pod-delete stage.
        return len(current) == 3 and not old_pods & {pod["metadata"]["name"] for pod in current}

    waiting.wait_for(
        replaced,
        timeout=120,
        description="the rolling update of deployment web to complete",
        observe=lambda: _summary(api_client, namespace, "web"),
    )
    current = _list_pods(api_client, namespace, "web")
    assert all(pod["metadata"]["annotations"]["revision"] == "2" for pod in current)


# -- hush dev itself ----------------------------------------------------------------------


@pytest.fixture
def dev_cluster_only(uses_dev_cluster: bool) -> None:
    if not uses_dev_cluster:
        pytest.skip("tests hush dev itself; HUSH_KUBECONFIG points at another cluster")


@pytest.mark.usefixtures("dev_cluster_only")
def test_up_reuses_a_healthy_cluster(kubeconfig: Path) -> None:
    before = devcluster.status()
    assert before["healthy"], before

    result = devcluster.run_hush("dev", "up", "--name", devcluster.DEFAULT_CLUSTER, "--no-hush")

    assert result.returncode == 0, result.stderr
    assert Path(devcluster.last_line(result.stdout)) == kubeconfig
    assert "Reused running cluster" in result.stderr
    assert devcluster.pids(devcluster.status()) == devcluster.pids(before)


@pytest.mark.usefixtures("dev_cluster_only")
@pytest.mark.timeout(900)
def test_separate_cluster_crash_recovery_and_down(tmp_path: Path) -> None:
    name = "hush-e2e-other"
    state_root = tmp_path / "clusters"
    env = {**os.environ, "HUSH_STATE_DIR": str(state_root)}
    try:
        up = devcluster.run_hush("dev", "up", "--name", name, "--nodes", "1", "--no-hush", env=env)
        assert up.returncode == 0, up.stderr
        kubeconfig = Path(devcluster.last_line(up.stdout))
        assert kubeconfig == state_root / name / "kubeconfig"
        first = devcluster.status(name=name, env=env)
        assert first["healthy"], first
        assert first["exitCode"] == 0
        assert first["nodes"] == 1

        # A crashed component is named by status, which then exits non-zero.
        scheduler_pid = devcluster.pids(first)["kube-scheduler"]
        os.kill(scheduler_pid, signal.SIGKILL)
        waiting.wait_for(
            lambda: not devcluster.process_exists(scheduler_pid),
            timeout=30,
            description=f"kube-scheduler (pid {scheduler_pid}) to die",
        )
        crashed = devcluster.run_hush("dev", "status", "--name", name, env=env, timeout=60)
        assert crashed.returncode != 0
        scheduler_line = next(
            line
            for line in crashed.stdout.splitlines()
            if line.strip().startswith("kube-scheduler")
        )
        assert "crashed" in scheduler_line, crashed.stdout
        assert str(scheduler_pid) in scheduler_line

        # `up` names the dead component and replaces the whole cluster with a healthy one.
        again = devcluster.run_hush("dev", "up", "--name", name, "--no-hush", env=env)
        assert again.returncode == 0, again.stderr
        assert "kube-scheduler" in again.stderr
        assert "crashed" in again.stderr
        assert Path(devcluster.last_line(again.stdout)) == kubeconfig
        second = devcluster.status(name=name, env=env)
        assert second["healthy"], second
        old_pids = set(devcluster.pids(first).values())
        assert not old_pids & set(devcluster.pids(second).values())
        assert not [pid for pid in old_pids if devcluster.process_exists(pid)]
    finally:
        pids = [
            pid for pid in devcluster.pids(devcluster.status(name=name, env=env)).values() if pid
        ]
        down = devcluster.run_hush("dev", "down", "--name", name, env=env)

    assert down.returncode == 0, down.stderr
    assert pids, "status reported no pids before down"
    assert not [pid for pid in pids if devcluster.process_exists(pid)]
    assert not (state_root / name).exists()
    assert not list(Path("/dev/shm").glob(f"hush-{os.getuid()}-{name}-*"))
    # Safe to repeat when nothing runs.
    assert devcluster.run_hush("dev", "down", "--name", name, env=env).returncode == 0
