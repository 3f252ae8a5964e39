"""A real node in the local cluster: a kubelet that runs containers, behind the network guard.

Runs only with ``HUSH_REAL_NODE=1`` (root on Linux; not part of ``make test`` yet, see
docs/design/0020-real-nodes.md): it starts its own cluster with ``hush dev up --real-node``
(named ``$HUSH_DEV_CLUSTER-real``, so it never recreates the suite's kwok cluster; only one
real node runs per machine), and its last test is ``hush dev down``, which must leave
nothing of ours behind.

Nothing here sends a packet to an address it has not first checked with ``ip route get``:
pod and bridge addresses route to our bridge; the one outside address (TEST-NET-3, which the
uplink's default route would carry) is only dialled from inside a pod after the guard was
verified, and the test asserts that the guard's counter took the packet.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from hush.dev import binaries, layout, network_guard, real_node

import real_node_cluster

pytestmark = pytest.mark.skipif(
    os.environ.get("HUSH_REAL_NODE") != "1",
    reason=(
        "real-node e2e runs only with HUSH_REAL_NODE=1 (needs root on Linux; it starts "
        "containerd and a kubelet and changes the host's network)"
    ),
)

CLUSTER = real_node_cluster.name("real")
OUTSIDE_ADDRESS = "203.0.113.7"
"""TEST-NET-3 (RFC 5737): never a real host; the default route would carry it off the machine."""
POD_TIMEOUT_SECONDS = 90.0


@pytest.fixture(scope="module")
def real_cluster() -> Iterator[real_node_cluster.Cluster]:
    yield real_node_cluster.Cluster(CLUSTER, real_node_cluster.up(CLUSTER, timeout=900))
    # The last test tears it down and checks; this only covers an earlier failure.
    real_node_cluster.down(CLUSTER)


def _pod_manifest(name: str, image: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
        "spec": {
            "nodeSelector": real_node.NODE_LABELS,
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "web",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "ports": [{"containerPort": 8080}],
                    "readinessProbe": {
                        "httpGet": {"path": "/", "port": 8080},
                        "periodSeconds": 1,
                    },
                }
            ],
        },
    }


def _wait_ready_pod(real: real_node_cluster.Cluster, name: str) -> dict[str, Any]:
    deadline = time.monotonic() + POD_TIMEOUT_SECONDS
    pod: dict[str, Any] = {}
    while time.monotonic() < deadline:
        pod = real.get("pod", name, "--namespace=default")
        conditions = pod.get("status", {}).get("conditions", [])
        if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
            return pod
        time.sleep(1)
    raise AssertionError(f"pod {name} not Ready: {json.dumps(pod.get('status'), indent=1)}")


def test_the_guard_routes_every_cluster_range_to_our_bridge(
    real_cluster: real_node_cluster.Cluster,
) -> None:
    network_guard.verify()
    for check in network_guard.route_checks():
        assert check.device == network_guard.BRIDGE, check
        assert real_node_cluster.route_device(check.address) == network_guard.BRIDGE
    assert (
        real_node_cluster.route_device(network_guard.NODE_ADDRESS) == "lo"
    )  # our own address: local


def test_the_real_node_is_ready_and_the_kwok_nodes_are_tainted(
    real_cluster: real_node_cluster.Cluster,
) -> None:
    node = real_cluster.get("node", real_node.NODE_NAME)
    assert real_node.node_problem(node) is None
    assert node["status"]["nodeInfo"]["kubeletVersion"].startswith("v1.")
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses["InternalIP"] == network_guard.NODE_ADDRESS
    kwok_nodes = real_cluster.get("nodes", "--selector=type=kwok")["items"]
    assert kwok_nodes
    for kwok_node in kwok_nodes:
        keys = {taint["key"] for taint in kwok_node["spec"].get("taints", [])}
        assert real_node.KWOK_TAINT.split("=")[0] in keys


@pytest.fixture(scope="module")
def web_pod(real_cluster: real_node_cluster.Cluster) -> Iterator[dict[str, Any]]:
    images = real_node.build_images(binaries.cache_root(os.environ))
    manifest = _pod_manifest("real-web", images.busybox.reference)
    real_cluster.kubectl("apply", "--filename=-", stdin=json.dumps(manifest))
    yield _wait_ready_pod(real_cluster, "real-web")
    real_cluster.kubectl(
        "delete", "pod", "real-web", "--namespace=default", "--wait=false", check=False
    )


def test_a_pod_runs_on_the_real_node_and_serves_http_over_the_bridge(
    real_cluster: real_node_cluster.Cluster, web_pod: dict[str, Any]
) -> None:
    assert web_pod["spec"]["nodeName"] == real_node.NODE_NAME
    assert web_pod["status"]["phase"] == "Running"
    pod_ip = web_pod["status"]["podIP"]
    assert ipaddress.ip_address(pod_ip) in ipaddress.ip_network(network_guard.NODE_POD_SUBNET)
    # Checked before the first packet: the pod's address routes to our bridge.
    assert real_node_cluster.route_device(pod_ip) == network_guard.BRIDGE
    assert _http_get(f"http://{pod_ip}:8080/") == b"hush real node\n"
    # The container really runs in containerd (kwok never fakes this node's pods).
    statuses = web_pod["status"]["containerStatuses"]
    assert statuses[0]["containerID"].startswith("containerd://")


def _http_get(url: str) -> bytes:
    # No proxy, whatever the environment says: the address was checked to be ours.
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
        url, timeout=5
    ) as response:
        body: bytes = response.read()
    return body


def test_a_cluster_ip_service_reaches_the_pod_through_kube_proxy(
    real_cluster: real_node_cluster.Cluster, web_pod: dict[str, Any]
) -> None:
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "real-web", "namespace": "default"},
        "spec": {"selector": {"app": "real-web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    real_cluster.kubectl("apply", "--filename=-", stdin=json.dumps(service))
    cluster_ip = real_cluster.get("service", "real-web", "--namespace=default")["spec"]["clusterIP"]
    assert ipaddress.ip_address(cluster_ip) in ipaddress.ip_network(network_guard.SERVICE_RANGE)
    # Checked before the first packet: programmed or not, the Service IP stays on our bridge.
    assert real_node_cluster.route_device(cluster_ip) == network_guard.BRIDGE
    deadline = time.monotonic() + 30
    body, last_error = b"", ""
    while time.monotonic() < deadline:
        try:
            body = _http_get(f"http://{cluster_ip}/")
            break
        except OSError as error:  # kube-proxy has not synced the endpoints yet
            last_error = str(error)
            time.sleep(1)
    assert body == b"hush real node\n", last_error
    # From the pod itself (hairpin through the Service), with busybox nc.
    answer = real_cluster.kubectl(
        "exec",
        "real-web",
        "--namespace=default",
        "-i",
        "--",
        "/bin/busybox",
        "nc",
        "-w",
        "3",
        cluster_ip,
        "80",
        stdin="GET / HTTP/1.0\r\n\r\n",
    )
    assert "hush real node" in answer
    real_cluster.kubectl("delete", "service", "real-web", "--namespace=default")


def test_a_pod_reaches_the_apiserver_through_the_kubernetes_service(
    real_cluster: real_node_cluster.Cluster, web_pod: dict[str, Any]
) -> None:
    slices = real_cluster.get(
        "endpointslices", "--namespace=default", "--selector=kubernetes.io/service-name=kubernetes"
    )["items"]
    addresses = {a for s in slices for e in s["endpoints"] for a in e["addresses"]}
    assert addresses == {network_guard.NODE_ADDRESS}
    service_ip = real_cluster.get("service", "kubernetes", "--namespace=default")["spec"][
        "clusterIP"
    ]
    assert real_node_cluster.route_device(service_ip) == network_guard.BRIDGE
    # The apiserver listens on every address; the guard drops its port elsewhere.
    port = real_cluster.get(
        "endpointslices", "--namespace=default", "--selector=kubernetes.io/service-name=kubernetes"
    )["items"][0]["ports"][0]["port"]
    table = subprocess.run(
        ["nft", "list", "chain", network_guard.NFT_FAMILY, network_guard.NFT_TABLE, "input"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"tcp dport {port} " in table
    assert "inbound_dropped" in table
    # Plain HTTP to the TLS port: Go's TLS server answers in plain text, which proves the
    # pod's connection reached the apiserver (busybox has no TLS client).
    answer = real_cluster.kubectl(
        "exec",
        "real-web",
        "--namespace=default",
        "-i",
        "--",
        "/bin/busybox",
        "nc",
        "-w",
        "3",
        service_ip,
        "443",
        stdin="GET /version HTTP/1.0\r\n\r\n",
        check=False,
    )
    assert "Client sent an HTTP request to an HTTPS server" in answer, answer


def test_a_pod_cannot_reach_outside_the_packet_dies_on_our_drop_rule(
    real_cluster: real_node_cluster.Cluster, web_pod: dict[str, Any]
) -> None:
    pod_ip = web_pod["status"]["podIP"]
    # Where the kernel would send the pod's packet: out of the uplink, i.e. forwarded from
    # our bridge to another interface, which is exactly what the guard's forward rule drops.
    outbound = real_node_cluster.route_device(
        OUTSIDE_ADDRESS, "from", pod_ip, "iif", network_guard.BRIDGE
    )
    assert outbound not in ("", network_guard.BRIDGE, "lo")
    network_guard.verify()  # the drop rule is in place before anything is sent
    before = network_guard.counters()["egress_dropped"]
    attempt = real_cluster.kubectl(
        "exec",
        "real-web",
        "--namespace=default",
        "--",
        "/bin/busybox",
        "nc",
        "-w",
        "2",
        OUTSIDE_ADDRESS,
        "80",
        check=False,
    )
    after = network_guard.counters()["egress_dropped"]
    assert after > before, f"the guard counted nothing; nc said: {attempt}"
    assert "timed out" in attempt or "exit code 1" in attempt


def test_down_leaves_nothing_of_ours(real_cluster: real_node_cluster.Cluster) -> None:
    state = layout.layout_for(CLUSTER, os.environ)
    node = real_node.NodeLayout(state)
    socket = node.containerd.socket
    result = real_node_cluster.down(CLUSTER)
    assert result.returncode == 0, result.stderr
    links = subprocess.run(
        ["ip", "-j", "link", "show"], capture_output=True, text=True, check=True
    ).stdout
    assert network_guard.BRIDGE not in {link["ifname"] for link in json.loads(links)}
    routes = subprocess.run(
        ["ip", "-j", "route", "show", "proto", str(network_guard.ROUTE_PROTOCOL)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(routes or "[]") == []
    tables = subprocess.run(
        ["nft", "list", "tables"], capture_output=True, text=True, check=True
    ).stdout
    assert network_guard.NFT_TABLE not in tables
    assert real_node.remaining_resources(node) == []
    assert not node.run_dir.exists()
    assert not state.state_dir.exists()
    assert network_guard.owner() is None
    assert not socket.exists()
