"""Images built here, pulled by digest from the cluster's own registry, running on the real node.

Runs only with ``HUSH_REAL_NODE=1`` (root on Linux, like ``e2e/test_real_node.py``; only one
real node runs per machine, so not while another cluster owns it). It starts the cluster
``h7`` with ``hush dev up --real-node`` (which starts the registry on 127.0.0.1), builds and
pushes the images with ``python -m hush.dev.image_build`` (the Debian base from the archive,
Hush from the project's Dockerfile, the sample app), then runs pods that reference them as
``127.0.0.1:<port>/<repository>@sha256:<digest>`` with ``imagePullPolicy: Always``: containerd
pulls them over plain HTTP on loopback, nothing else. The last test is ``hush dev down``.

Every packet to a pod goes to an address first checked with ``ip route get`` (our bridge).
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hush.dev import binaries, layout, network_guard, processes, real_node, registry

import real_node_cluster

pytestmark = pytest.mark.skipif(
    os.environ.get("HUSH_REAL_NODE") != "1",
    reason=(
        "real-node e2e runs only with HUSH_REAL_NODE=1 (needs root on Linux; it starts "
        "containerd, a kubelet and a registry, and builds images with mmdebstrap and buildah)"
    ),
)

CLUSTER = real_node_cluster.name("real-images")
NAMESPACE = "default"
POD_TIMEOUT_SECONDS = 180.0
BUILD_TIMEOUT_SECONDS = 3600.0
WARM_BUILD_BUDGET_SECONDS = 30.0
RESTRICTED: dict[str, Any] = {
    "runAsNonRoot": True,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


class Cluster(real_node_cluster.Cluster):
    """The cluster of this module, its kubectl and its registry's address."""

    def __init__(self, cluster_name: str, kubeconfig: Path) -> None:
        super().__init__(cluster_name, kubeconfig)
        self.layout = layout.layout_for(cluster_name, os.environ)
        address = registry.address(registry.RegistryFiles(cluster=self.layout))
        assert address is not None, "hush dev up --real-node started no registry"
        self.registry = address


@pytest.fixture(scope="module")
def real_cluster() -> Iterator[Cluster]:
    yield Cluster(CLUSTER, real_node_cluster.up(CLUSTER, timeout=1800))
    # The last test tears it down and checks; this only covers an earlier failure.
    real_node_cluster.down(CLUSTER)


def _build_images() -> tuple[dict[str, Any], float]:
    began = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "hush.dev.image_build", "--name", CLUSTER],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    document: dict[str, Any] = json.loads(result.stdout)
    return document, time.monotonic() - began


@pytest.fixture(scope="module")
def images(real_cluster: Cluster) -> dict[str, Any]:
    document, _ = _build_images()
    return document


def test_the_images_are_in_our_registry_by_digest(
    real_cluster: Cluster, images: dict[str, Any]
) -> None:
    for name in ("base", "hush", "sample_app"):
        reference = images[name]["reference"]
        repository_path, digest = reference.split("@")
        address, repository = repository_path.split("/", 1)
        assert address == real_cluster.registry
        assert address.startswith("127.0.0.1:")
        assert registry.manifest_digest(address, repository, digest) == digest


def test_a_warm_rebuild_of_unchanged_images_takes_seconds(
    real_cluster: Cluster, images: dict[str, Any]
) -> None:
    # Twice in a row; the second must build nothing. When the inputs changed in between (a
    # shared working tree being edited), the keys say so: then the pair is tried again.
    for _ in range(3):
        first, _seconds = _build_images()
        again, seconds = _build_images()
        if all(again[name]["key"] == first[name]["key"] for name in again):
            break
    else:
        pytest.fail("the build inputs changed between every two builds")
    assert {name: again[name]["digest"] for name in again} == {
        name: first[name]["digest"] for name in first
    }
    assert all(again[name]["cached"] for name in again), again
    assert seconds < WARM_BUILD_BUDGET_SECONDS, f"warm rebuild took {seconds:.1f}s"
    # The base does not depend on the working tree: the one the pods use is the same.
    assert again["base"]["digest"] == images["base"]["digest"]


def _pod(name: str, containers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": name}},
        "spec": {
            "nodeSelector": real_node.NODE_LABELS,
            "terminationGracePeriodSeconds": 1,
            "automountServiceAccountToken": False,
            "containers": containers,
            **spec,
        },
    }


def _wait_pod(real: Cluster, name: str, *, phase: str | None = None) -> dict[str, Any]:
    """Until the pod reaches ``phase`` (or is Ready when None); fails early on a pull error."""
    deadline = time.monotonic() + POD_TIMEOUT_SECONDS
    pod: dict[str, Any] = {}
    while time.monotonic() < deadline:
        pod = real.get("pod", name, f"--namespace={NAMESPACE}")
        status = pod.get("status", {})
        for container in status.get("containerStatuses", []):
            waiting = container.get("state", {}).get("waiting", {})
            if waiting.get("reason") in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName"):
                raise AssertionError(f"{name}: {waiting}")
        if phase is not None and status.get("phase") == phase:
            return pod
        conditions = status.get("conditions", [])
        if phase is None and any(
            c["type"] == "Ready" and c["status"] == "True" for c in conditions
        ):
            return pod
        time.sleep(1)
    raise AssertionError(f"pod {name} not {phase or 'Ready'}: {json.dumps(pod.get('status'))}")


CHECK_SCRIPT = """\
import os, pathlib
print("uid", os.getuid(), "gid", os.getgid())
try:
    pathlib.Path("/probe").write_text("x")
    print("root filesystem writable")
except OSError as error:
    print("root filesystem read-only", error.errno)
import hush.cli
print("hush imported")
"""


def test_hush_pulled_by_digest_runs_as_65532_on_a_read_only_root(
    real_cluster: Cluster, images: dict[str, Any]
) -> None:
    reference = images["hush"]["reference"]
    manifest = _pod(
        "hush-image",
        [
            {
                "name": "help",
                "image": reference,
                "imagePullPolicy": "Always",
                "args": ["--help"],
                "securityContext": RESTRICTED,
            },
            {
                "name": "identity",
                "image": reference,
                "imagePullPolicy": "IfNotPresent",
                "command": ["python", "-c", CHECK_SCRIPT],
                "securityContext": RESTRICTED,
            },
        ],
        restartPolicy="Never",
    )
    real_cluster.kubectl("apply", "--filename=-", stdin=json.dumps(manifest))
    try:
        pod = _wait_pod(real_cluster, "hush-image", phase="Succeeded")
        assert pod["spec"]["nodeName"] == real_node.NODE_NAME
        for status in pod["status"]["containerStatuses"]:
            # What ran is exactly the digest we pushed, from our registry.
            assert status["imageID"] == reference, status
            assert status["state"]["terminated"]["exitCode"] == 0, status
        help_text = real_cluster.kubectl(
            "logs", "hush-image", "--container=help", f"--namespace={NAMESPACE}"
        )
        assert "usage: hush" in help_text
        assert "operator" in help_text
        assert "sidecar" in help_text
        identity = real_cluster.kubectl(
            "logs", "hush-image", "--container=identity", f"--namespace={NAMESPACE}"
        )
        # No runAsUser in the pod: the UID is the image's USER.
        assert "uid 65532 gid 65532" in identity
        assert "root filesystem read-only 30" in identity  # EROFS
        assert "hush imported" in identity
    finally:
        real_cluster.kubectl(
            "delete", "pod", "hush-image", f"--namespace={NAMESPACE}", "--wait=false", check=False
        )


def test_the_sample_app_image_serves_its_api(real_cluster: Cluster, images: dict[str, Any]) -> None:
    reference = images["sample_app"]["reference"]
    manifest = _pod(
        "sample-app",
        [
            {
                "name": "app",
                "image": reference,
                "imagePullPolicy": "Always",
                "ports": [{"containerPort": 8080}],
                "readinessProbe": {
                    "httpGet": {"path": "/healthz", "port": 8080},
                    "periodSeconds": 1,
                },
                "securityContext": RESTRICTED,
            }
        ],
    )
    real_cluster.kubectl("apply", "--filename=-", stdin=json.dumps(manifest))
    try:
        pod = _wait_pod(real_cluster, "sample-app")
        assert pod["status"]["containerStatuses"][0]["imageID"] == reference
        pod_ip = pod["status"]["podIP"]
        assert ipaddress.ip_address(pod_ip) in ipaddress.ip_network(network_guard.NODE_POD_SUBNET)
        # Checked before the first packet: the pod's address routes to our bridge.
        assert real_node_cluster.route_device(pod_ip) == network_guard.BRIDGE
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://{pod_ip}:8080/count?region=north", timeout=5) as response:
            body = json.loads(response.read())
        from hush.dev import sample_app

        expected = sum(1 for person in sample_app.PEOPLE if person.region == "north")
        assert body == {"count": expected}
    finally:
        real_cluster.kubectl(
            "delete", "pod", "sample-app", f"--namespace={NAMESPACE}", "--wait=false", check=False
        )


def test_any_other_registry_is_refused_on_loopback(real_cluster: Cluster) -> None:
    """A pull from anywhere but our registry dies at the closed loopback proxy: containerd
    never resolves or dials the host (``.invalid`` would resolve nowhere anyway)."""
    image = "registry.invalid/hush@sha256:" + "0" * 64
    closed_proxy = real_node.CLOSED_PROXY.removeprefix("http://")  # 127.0.0.1:9
    manifest = _pod(
        "outside-image",
        [{"name": "app", "image": image, "imagePullPolicy": "Always"}],
        restartPolicy="Never",
    )
    real_cluster.kubectl("apply", "--filename=-", stdin=json.dumps(manifest))
    try:
        deadline = time.monotonic() + POD_TIMEOUT_SECONDS
        message = ""
        while time.monotonic() < deadline and "proxyconnect" not in message:
            events = real_cluster.get(
                "events",
                f"--namespace={NAMESPACE}",
                "--field-selector=involvedObject.name=outside-image,reason=Failed",
            )["items"]
            message = " ".join(event.get("message", "") for event in events)
            time.sleep(1)
        assert "proxyconnect" in message, message
        assert f"dial tcp {closed_proxy}:" in message, message
    finally:
        real_cluster.kubectl(
            "delete",
            "pod",
            "outside-image",
            f"--namespace={NAMESPACE}",
            "--wait=false",
            check=False,
        )


def test_down_stops_the_registry_and_keeps_its_storage(real_cluster: Cluster) -> None:
    record = processes.read_pid_file(real_cluster.layout.pid_file(registry.COMPONENT))
    assert record is not None
    assert processes.is_alive(record)
    result = real_node_cluster.down(CLUSTER)
    assert result.returncode == 0, result.stderr
    assert not processes.is_alive(record)
    assert not real_cluster.layout.state_dir.exists()
    # The registry's storage is a cache shared by clusters: the next up pushes nothing.
    assert (registry.storage_dir(binaries.cache_root(os.environ)) / "docker").is_dir()
