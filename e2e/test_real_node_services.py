"""The real node's cluster services: CoreDNS as a pod, NetworkPolicies enforced by kube-router.

Runs only with ``HUSH_REAL_NODE=1`` (root on Linux; docs/design/0020-real-nodes.md). It starts
its own cluster with ``hush dev up --real-node`` (named ``$HUSH_DEV_CLUSTER-real``, like
``test_real_node``: only one real node runs per machine), and its last test is ``hush dev
down``, which must leave none of kube-router's chains or ipsets behind.

What it shows, from pods on the real node:
- names of the cluster resolve through CoreDNS behind ``kube-dns`` (the API's Service, a
  Service of ours, by full and by short name);
- a name outside the cluster does not resolve, and nothing leaves: CoreDNS has no forwarder
  (its Corefile and its binary), it answers REFUSED itself, and the network guard's drop
  counters do not move;
- a default-deny NetworkPolicy blocks pod-to-pod HTTP that worked before, and an allow rule
  for a labelled client restores it for that client only.

Every address dialled is a pod or Service address of our ranges, which route to our bridge.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from hush.dev import (
    binaries,
    cluster_dns,
    layout,
    network_guard,
    network_policy,
    real_node,
)

import real_node_cluster

pytestmark = pytest.mark.skipif(
    os.environ.get("HUSH_REAL_NODE") != "1",
    reason=(
        "real-node e2e runs only with HUSH_REAL_NODE=1 (needs root on Linux; it starts "
        "containerd, a kubelet, CoreDNS and kube-router and changes the host's network)"
    ),
)

CLUSTER = real_node_cluster.name("real")
NAMESPACE = "netpol"
POD_TIMEOUT_SECONDS = 90.0
POLICY_TIMEOUT_SECONDS = 30.0
OUTSIDE_NAME = "example.com"
"""A name outside the cluster (RFC 2606): with no forwarder it must never be resolved."""
SERVER_BODY = "hush real node"


class Cluster(real_node_cluster.Cluster):
    """The real-node cluster of this module: kubectl, and apply a manifest."""

    def apply(self, manifest: dict[str, Any]) -> None:
        self.kubectl("apply", "--filename=-", stdin=json.dumps(manifest))

    def exec(self, pod: str, *command: str, stdin: str | None = None) -> str:
        """Run ``command`` in ``pod`` (namespace :data:`NAMESPACE`); output and errors."""
        interactive = ("-i",) if stdin is not None else ()
        return self.kubectl(
            "exec",
            pod,
            f"--namespace={NAMESPACE}",
            *interactive,
            "--",
            *command,
            stdin=stdin,
            check=False,
        )


@pytest.fixture(scope="module")
def real_cluster() -> Iterator[Cluster]:
    yield Cluster(CLUSTER, real_node_cluster.up(CLUSTER, timeout=1800))
    # The last test tears it down and checks; this only covers an earlier failure.
    real_node_cluster.down(CLUSTER)


def _pod(name: str, image: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels},
        "spec": {
            "nodeSelector": real_node.NODE_LABELS,
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "web",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "ports": [{"containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
                }
            ],
        },
    }


def _wait_for(
    description: str, check: Callable[[], str | None], timeout: float = POD_TIMEOUT_SECONDS
) -> None:
    """Poll ``check`` (None: done; a string: what is still wrong) until ``timeout``."""
    deadline = time.monotonic() + timeout
    last = "not checked"
    while time.monotonic() < deadline:
        outcome = check()
        if outcome is None:
            return
        last = outcome
        time.sleep(1)
    raise AssertionError(f"{description}: {last}")


def _ready_pod(real: Cluster, name: str) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def ready() -> str | None:
        found.update(real.get("pod", name, f"--namespace={NAMESPACE}"))
        conditions = found.get("status", {}).get("conditions", [])
        ok = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
        return None if ok else json.dumps(found.get("status"))

    _wait_for(f"pod {name} not Ready", ready)
    return found


@pytest.fixture(scope="module")
def pods(real_cluster: Cluster) -> Iterator[dict[str, dict[str, Any]]]:
    """A server with a Service, a labelled client and an unlabelled one, in their namespace."""
    image = real_node.build_images(binaries.cache_root(os.environ)).busybox.reference
    real_cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    wanted = {
        "server": {"app": "server"},
        "client": {"app": "client", "role": "client"},
        "stranger": {"app": "stranger"},
    }
    for name, labels in wanted.items():
        real_cluster.apply(_pod(name, image, labels))
    real_cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": NAMESPACE},
            "spec": {"selector": {"app": "server"}, "ports": [{"port": 80, "targetPort": 8080}]},
        }
    )
    yield {name: _ready_pod(real_cluster, name) for name in wanted}
    real_cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)


def _lookup(real: Cluster, pod: str, name: str) -> str:
    return real.exec(pod, "/bin/busybox", "nslookup", name)


def _answers(output: str) -> list[str]:
    """The addresses in busybox nslookup's answer section (after the server's own lines)."""
    _, _, answer = output.partition("\nName:")
    return [
        line.split(":", 1)[1].strip()
        for line in answer.splitlines()
        if line.startswith("Address") and ":" in line
    ]


def test_coredns_runs_as_a_pod_behind_kube_dns_at_the_kubelets_address(
    real_cluster: Cluster,
) -> None:
    service = real_cluster.get("service", cluster_dns.SERVICE_NAME, "--namespace=kube-system")
    assert service["spec"]["clusterIP"] == real_node.CLUSTER_DNS
    assert real_node_cluster.route_device(real_node.CLUSTER_DNS) == network_guard.BRIDGE
    listed = real_cluster.get("pods", "--namespace=kube-system", "--selector=k8s-app=kube-dns")
    (pod,) = listed["items"]
    assert pod["spec"]["nodeName"] == real_node.NODE_NAME
    assert pod["status"]["phase"] == "Running"
    assert pod["status"]["containerStatuses"][0]["containerID"].startswith("containerd://")
    assert pod["status"]["containerStatuses"][0]["image"].startswith("hush.local/coredns:")
    pod_ip = ipaddress.ip_address(pod["status"]["podIP"])
    assert pod_ip in ipaddress.ip_network(network_guard.NODE_POD_SUBNET)
    # No upstream in the served Corefile.
    config = real_cluster.get("configmap", "coredns", "--namespace=kube-system")
    assert "forward" not in config["data"]["Corefile"]
    assert config["data"]["Corefile"] == cluster_dns.corefile()


def test_a_pod_resolves_the_api_and_a_service_through_coredns(
    real_cluster: Cluster, pods: dict[str, dict[str, Any]]
) -> None:
    api_ip = real_cluster.get("service", "kubernetes", "--namespace=default")["spec"]["clusterIP"]
    web_ip = real_cluster.get("service", "web", f"--namespace={NAMESPACE}")["spec"]["clusterIP"]
    output = _lookup(real_cluster, "client", "kubernetes.default.svc.cluster.local")
    assert real_node.CLUSTER_DNS in output, output  # the server that answered
    assert api_ip in _answers(output), output
    output = _lookup(real_cluster, "client", f"web.{NAMESPACE}.svc.cluster.local")
    assert web_ip in _answers(output), output
    # The short name, through the pod's search path (ClusterFirst).
    resolv = real_cluster.exec("client", "/bin/busybox", "cat", "/etc/resolv.conf")
    assert f"nameserver {real_node.CLUSTER_DNS}" in resolv
    assert f"{NAMESPACE}.svc.cluster.local" in resolv
    assert web_ip in _answers(_lookup(real_cluster, "client", "web"))
    # And the Service answers by its name (the server's page through kube-proxy).
    answer = real_cluster.exec(
        "client",
        "/bin/busybox",
        "nc",
        "-w",
        "3",
        f"web.{NAMESPACE}.svc.cluster.local",
        "80",
        stdin="GET / HTTP/1.0\r\n\r\n",
    )
    assert SERVER_BODY in answer, answer


def test_an_outside_name_is_not_resolved_and_nothing_leaves(
    real_cluster: Cluster, pods: dict[str, dict[str, Any]]
) -> None:
    network_guard.verify()
    before = network_guard.counters()
    for name in (OUTSIDE_NAME, f"{OUTSIDE_NAME}."):
        output = _lookup(real_cluster, "client", name)
        assert _answers(output) == [], output
        assert "REFUSED" in output or "NXDOMAIN" in output, output
    after = network_guard.counters()
    # CoreDNS answered from the pod network itself: nothing was forwarded towards another
    # interface, so no drop counter of the guard moved (a forwarder would have).
    assert after == before
    # And what served the answer has no forwarder at all.
    logs = real_cluster.kubectl(
        "logs", "--namespace=kube-system", "--selector=k8s-app=kube-dns", "--tail=200"
    )
    assert "plugin/forward" not in logs


def _http(real: Cluster, client: str, server_ip: str) -> str:
    return real.exec(
        client,
        "/bin/busybox",
        "nc",
        "-w",
        "2",
        server_ip,
        "8080",
        stdin="GET / HTTP/1.0\r\n\r\n",
    )


def _reaches(real: Cluster, client: str, server_ip: str) -> bool:
    return SERVER_BODY in _http(real, client, server_ip)


def test_a_network_policy_blocks_pod_to_pod_http_and_an_allow_rule_restores_one_client(
    real_cluster: Cluster, pods: dict[str, dict[str, Any]]
) -> None:
    assert network_policy.enforcing()
    server_ip = pods["server"]["status"]["podIP"]
    assert real_node_cluster.route_device(server_ip) == network_guard.BRIDGE
    # Before any policy: both clients reach the server.
    assert _reaches(real_cluster, "client", server_ip)
    assert _reaches(real_cluster, "stranger", server_ip)

    real_cluster.apply(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "default-deny", "namespace": NAMESPACE},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
        }
    )
    _wait_for(
        "the default-deny policy never blocked the client",
        lambda: "still reached" if _reaches(real_cluster, "client", server_ip) else None,
        timeout=POLICY_TIMEOUT_SECONDS,
    )
    assert not _reaches(real_cluster, "stranger", server_ip)
    # kube-router keeps a chain per policed pod.
    saved = subprocess.run(
        ["iptables-save", "-t", "filter"], capture_output=True, text=True, check=True
    ).stdout
    assert any(chain.startswith("KUBE-POD-FW-") for chain in network_policy.parse_chains(saved))

    real_cluster.apply(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "allow-clients", "namespace": NAMESPACE},
            "spec": {
                "podSelector": {"matchLabels": {"app": "server"}},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {
                        "from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                        "ports": [{"protocol": "TCP", "port": 8080}],
                    }
                ],
            },
        }
    )
    _wait_for(
        "the allow rule never let the labelled client through",
        lambda: None if _reaches(real_cluster, "client", server_ip) else "still blocked",
        timeout=POLICY_TIMEOUT_SECONDS,
    )
    assert not _reaches(real_cluster, "stranger", server_ip)
    # The allowed sources live in an ipset of kube-router's (down must destroy it).
    assert any(item.startswith("ipset KUBE-SRC-") for item in network_policy.remaining())
    # The server's readiness probe (from the node) still passes: policies do not cut the
    # kubelet off.
    assert _ready_pod(real_cluster, "server")["status"]["podIP"] == server_ip


def test_down_removes_kube_routers_chains_and_ipsets(real_cluster: Cluster) -> None:
    assert network_policy.remaining() != []  # what down must remove is there now
    state = layout.layout_for(CLUSTER, os.environ)
    node = real_node.NodeLayout(state)
    result = real_node_cluster.down(CLUSTER)
    assert result.returncode == 0, result.stderr
    assert network_policy.remaining() == []
    assert not network_policy.enforcing()
    assert real_node.remaining_resources(node) == []
    assert network_guard.owner() is None
    leftover = subprocess.run(
        ["pgrep", "-f", f"kube-router --kubeconfig={network_policy.kubeconfig_path(node)}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert leftover.stdout.strip() == ""
