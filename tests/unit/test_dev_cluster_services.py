"""The real node's cluster services: CoreDNS (hush.dev.cluster_dns) and kube-router's
NetworkPolicy firewall (hush.dev.network_policy), without starting anything."""

from __future__ import annotations

import datetime
import io
import os
import re
import tarfile
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from hush.dev import (
    cluster_dns,
    errors,
    host_setup,
    layout,
    network_guard,
    network_policy,
    pki,
    processes,
    real_node,
)

ROOT = Path(__file__).resolve().parents[2]
CONTROLPLANE = ROOT / "hack" / "controlplane"


def _by_kind(kind: str) -> dict[str, object]:
    found = [m for m in cluster_dns.manifests("hush.local/coredns:1-abc") if m["kind"] == kind]
    assert len(found) == 1
    return found[0]


# -- CoreDNS -----------------------------------------------------------------------------------


def test_the_corefile_serves_only_the_cluster_zones_and_has_no_upstream() -> None:
    corefile = cluster_dns.corefile()
    assert "forward" not in corefile
    assert "/etc/resolv.conf" not in corefile
    # One server block, keyed by the cluster's zones only: CoreDNS answers REFUSED for any
    # other name (no "." zone that would catch everything).
    header = corefile.splitlines()[0]
    assert header == "cluster.local:1053 in-addr.arpa:1053 ip6.arpa:1053 {"
    assert corefile.count("{") == corefile.count("}") == 2
    assert ".:" not in corefile
    assert f"health :{cluster_dns.HEALTH_PORT}" in corefile
    assert f"ready :{cluster_dns.READY_PORT}" in corefile
    assert "kubernetes cluster.local in-addr.arpa ip6.arpa {" in corefile
    assert "fallthrough" not in corefile


def test_the_binary_links_exactly_the_plugins_the_corefile_uses_and_never_forward() -> None:
    main = (CONTROLPLANE / "coredns" / "main.go").read_text()
    imported = set(re.findall(r'_ "github.com/coredns/coredns/plugin/([a-z0-9_]+)"', main))
    directives = re.search(r"var directives = \[\]string\{(.*?)\}", main, re.DOTALL)
    assert directives is not None
    listed = re.findall(r'"([a-z0-9_]+)"', directives.group(1))
    assert set(listed) == imported
    assert "forward" not in imported
    # That import links every plugin, forward included.
    assert '"github.com/coredns/coredns/core/plugin"' not in main
    used = {
        line.split()[0]
        for line in cluster_dns.corefile().splitlines()[1:]
        if line.startswith("    ") and not line.startswith("        ") and line.strip() != "}"
    }
    assert used == imported
    # CoreDNS's plugin.cfg order (a request passes plugins in this order).
    assert listed == ["reload", "ready", "health", "errors", "log", "cache", "kubernetes", "loop"]


def test_kube_dns_is_at_the_kubelets_cluster_dns_address_and_maps_53_to_coredns() -> None:
    service = _by_kind("Service")
    spec = service["spec"]
    assert isinstance(spec, dict)
    node = real_node.NodeLayout(
        layout.ClusterLayout(name="t", state_dir=Path("/nowhere"), tmpfs_dir=None)
    )
    kubelet = real_node.kubelet_configuration(
        node,
        ports=real_node.NodePorts(containerd_metrics=1, kubelet=2, kubelet_healthz=3),
        ca_certificate=Path("/ca.crt"),
    )
    assert kubelet["clusterDNS"] == [spec["clusterIP"]] == [cluster_dns.SERVICE_IP]
    assert service["metadata"] == {
        "name": "kube-dns",
        "namespace": "kube-system",
        "labels": {"k8s-app": "kube-dns", "app.kubernetes.io/managed-by": "hush-dev"},
    }
    assert {(p["protocol"], p["port"], p["targetPort"]) for p in spec["ports"]} == {
        ("UDP", 53, cluster_dns.DNS_PORT),
        ("TCP", 53, cluster_dns.DNS_PORT),
    }
    assert spec["selector"] == cluster_dns.APP_LABEL


def test_coredns_runs_unprivileged_from_the_imported_image_on_the_real_node() -> None:
    deployment = _by_kind("Deployment")
    pod = deployment["spec"]["template"]  # type: ignore[index]
    assert pod["metadata"]["labels"] == cluster_dns.APP_LABEL
    assert deployment["spec"]["selector"]["matchLabels"] == cluster_dns.APP_LABEL  # type: ignore[index]
    spec = pod["spec"]
    assert spec["nodeSelector"] == real_node.NODE_LABELS
    assert spec["serviceAccountName"] == "coredns"
    assert spec["securityContext"]["runAsNonRoot"] is True
    (container,) = spec["containers"]
    assert container["image"] == "hush.local/coredns:1-abc"
    assert container["imagePullPolicy"] == "Never"
    assert container["command"] == ["/coredns", "-conf", "/etc/coredns/Corefile"]
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert {p["containerPort"] for p in container["ports"]} == {cluster_dns.DNS_PORT}
    assert cluster_dns.DNS_PORT > 1024  # no NET_BIND_SERVICE needed
    assert container["readinessProbe"]["httpGet"]["port"] == cluster_dns.READY_PORT
    assert container["livenessProbe"]["httpGet"]["port"] == cluster_dns.HEALTH_PORT
    config = _by_kind("ConfigMap")
    assert config["data"] == {"Corefile": cluster_dns.corefile()}


def test_coredns_may_only_read_what_its_kubernetes_plugin_watches() -> None:
    role = _by_kind("ClusterRole")
    verbs = {verb for rule in role["rules"] for verb in rule["verbs"]}  # type: ignore[attr-defined]
    assert verbs == {"list", "watch"}
    binding = _by_kind("ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "coredns", "namespace": "kube-system"}
    ]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]  # type: ignore[index]


def test_the_coredns_image_is_one_static_file_and_its_tag_follows_the_binary() -> None:
    image = cluster_dns.coredns_image(b"\x7fELF one", version="v1.15.0")
    again = cluster_dns.coredns_image(b"\x7fELF one", version="v1.15.0")
    other = cluster_dns.coredns_image(b"\x7fELF two", version="v1.15.0")
    assert image.manifest_digest == again.manifest_digest
    assert other.manifest_digest != image.manifest_digest
    assert image.reference.startswith("hush.local/coredns:1.15.0-")
    assert image.reference != other.reference
    with tarfile.open(fileobj=io.BytesIO(cluster_dns.coredns_layer(b"bin"))) as layer:
        (member,) = layer.getmembers()
    assert (member.name, member.mode, member.size) == ("coredns", 0o755, 3)
    configs = [blob for blob in image.blobs.values() if blob.startswith(b'{"architecture"')]
    assert b'"User":"65532"' in configs[0]
    assert b'"Cmd":["/coredns"]' in configs[0]


def test_services_are_found_in_a_prepared_directory_or_refused(tmp_path: Path) -> None:
    with pytest.raises(errors.DevClusterError, match="coredns, kube-router"):
        cluster_dns.locate_services({"HUSH_NODE_SERVICES_BIN": str(tmp_path)})
    for name in cluster_dns.SERVICES_BINARIES:
        (tmp_path / name).write_text("#!/bin/sh\n")
        (tmp_path / name).chmod(0o755)
    assert cluster_dns.locate_services({"HUSH_NODE_SERVICES_BIN": str(tmp_path)}) == tmp_path
    assert cluster_dns.services_version(tmp_path, "coredns") == "unknown"
    (tmp_path / "versions.txt").write_text("coredns v1.15.0\nkube-router v2.1.0\n")
    assert cluster_dns.services_version(tmp_path, "coredns") == "v1.15.0"
    assert cluster_dns.services_version(tmp_path, "kube-router") == "v2.1.0"


def test_the_services_modules_never_change_the_control_planes_cache_key() -> None:
    # build.sh hashes every hack/controlplane/*/go.mod and go.sum: a go.mod here would
    # rebuild, and so recreate, every existing cluster.
    for tool in ("coredns", "kube-router"):
        directory = CONTROLPLANE / tool
        assert not (directory / "go.mod").exists()
        assert not (directory / "go.sum").exists()
        assert (directory / f"{tool}.mod").is_file()
        assert (directory / f"{tool}.sum").is_file()
    coredns = (CONTROLPLANE / "coredns" / "coredns.mod").read_text()
    assert re.search(r"^require github.com/coredns/coredns v1\.\d+\.\d+$", coredns, re.M)
    router = (CONTROLPLANE / "kube-router" / "kube-router.mod").read_text()
    assert re.search(r"^\tgithub.com/cloudnativelabs/kube-router/v2 v2\.\d+\.\d+", router, re.M)
    script = (CONTROLPLANE / "build-node-services.sh").read_text()
    assert "nice -n 19" in script
    assert "CGO_ENABLED=0" in script  # the one-file image needs a static binary
    for name in ("coredns/main.go", "coredns/coredns.mod", "kube-router/kube-router.sum"):
        assert f'"$here/{name}"' in script  # part of the cache key


# -- kube-router's firewall -------------------------------------------------------------------


def test_kube_router_runs_only_its_firewall_and_listens_nowhere() -> None:
    command = network_policy.command(Path("/bin-dir"), kubeconfig=Path("/k.kubeconfig"))
    assert command[0] == "/bin-dir/kube-router"
    flags = dict(argument.removeprefix("--").split("=", 1) for argument in command[1:])
    assert flags["run-firewall"] == "true"
    assert flags["run-router"] == flags["run-service-proxy"] == "false"
    assert flags["run-loadbalancer"] == "false"
    assert flags["health-port"] == flags["metrics-port"] == "0"
    assert flags["hostname-override"] == real_node.NODE_NAME
    assert flags["service-cluster-ip-range"] == network_guard.SERVICE_RANGE
    assert flags["kubeconfig"] == "/k.kubeconfig"


def test_kube_router_reads_policies_pods_and_namespaces_as_its_own_user() -> None:
    role, binding = network_policy.rbac_manifests()
    assert binding["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": network_policy.USER}
    ]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    resources = {r for rule in role["rules"] for r in rule["resources"]}
    assert {"networkpolicies", "pods", "namespaces", "nodes"} <= resources
    writes = {
        (resource, verb)
        for rule in role["rules"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
        if verb not in ("get", "list", "watch")
    }
    assert writes == {("events", "create"), ("events", "patch")}


SAVED = """\
# Generated by iptables-save v1.8.9 (nf_tables) on Tue Dec  8 00:40:00 2026
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-NWPLCY-DEFAULT - [0:0]
:KUBE-NWPLCY-ABCDEF - [0:0]
:KUBE-POD-FW-XYZ - [0:0]
:KUBE-ROUTER-FORWARD - [0:0]
:KUBE-ROUTER-INPUT - [0:0]
:KUBE-ROUTER-OUTPUT - [0:0]
-A INPUT -m comment --comment "kube-router netpol - 4IA2OSFRMVNDXBVV" -j KUBE-ROUTER-INPUT
-A INPUT -j KUBE-FIREWALL
-A FORWARD -m comment --comment "kube-router netpol - TEMCG2JMHZYE7H7T" -j KUBE-ROUTER-FORWARD
-A OUTPUT -m comment --comment "kube-router netpol - VEAAIY32XVBHCSCY" -j KUBE-ROUTER-OUTPUT
-A KUBE-ROUTER-FORWARD -d 10.245.0.5/32 -j KUBE-POD-FW-XYZ
-A KUBE-POD-FW-XYZ -j KUBE-NWPLCY-DEFAULT
COMMIT
"""


def test_the_clean_up_finds_kube_routers_chains_and_the_jumps_into_them() -> None:
    chains = network_policy.parse_chains(SAVED)
    assert [c for c in chains if network_policy.is_ours(c)] == [
        "KUBE-NWPLCY-DEFAULT",
        "KUBE-NWPLCY-ABCDEF",
        "KUBE-POD-FW-XYZ",
        "KUBE-ROUTER-FORWARD",
        "KUBE-ROUTER-INPUT",
        "KUBE-ROUTER-OUTPUT",
    ]
    assert not network_policy.is_ours("KUBE-FIREWALL")  # the kubelet's: real_node's to remove
    # Only the jumps from chains that are not ours; the comment stays one argument.
    assert network_policy.jumps_to_ours(SAVED) == [
        [
            "-D",
            "INPUT",
            "-m",
            "comment",
            "--comment",
            "kube-router netpol - 4IA2OSFRMVNDXBVV",
            "-j",
            "KUBE-ROUTER-INPUT",
        ],
        [
            "-D",
            "FORWARD",
            "-m",
            "comment",
            "--comment",
            "kube-router netpol - TEMCG2JMHZYE7H7T",
            "-j",
            "KUBE-ROUTER-FORWARD",
        ],
        [
            "-D",
            "OUTPUT",
            "-m",
            "comment",
            "--comment",
            "kube-router netpol - VEAAIY32XVBHCSCY",
            "-j",
            "KUBE-ROUTER-OUTPUT",
        ],
    ]


def test_only_kube_routers_ipsets_are_destroyed() -> None:
    listed = "KUBE-SRC-AAAA\nKUBE-DST-BBBB\nTMP-CCCC\ninet6:KUBE-SRC-DDDD\nmy-own-set\nKUBE-X\n"
    assert network_policy.parse_ipsets(listed) == [
        "KUBE-SRC-AAAA",
        "KUBE-DST-BBBB",
        "TMP-CCCC",
        "inet6:KUBE-SRC-DDDD",
    ]


def test_the_host_setup_installs_what_the_firewall_runs() -> None:
    assert host_setup.PACKAGES["ipset"] == (Path("/usr/sbin/ipset"),)
    assert Path("/usr/sbin/iptables-restore") in host_setup.PACKAGES["iptables"]


def test_a_reused_cluster_needs_a_live_enforcing_firewall(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = layout.ClusterLayout(name="t", state_dir=tmp_path, tmpfs_dir=None)
    problem = network_policy.problem(state)
    assert problem is not None
    assert problem.startswith("kube-router is not running")
    # A live process (this one) whose chains are missing is no better.
    record = processes.PidRecord(pid=os.getpid(), start_ticks=_own_start_ticks())
    state.pid_file(network_policy.COMPONENT).parent.mkdir(parents=True)
    state.pid_file(network_policy.COMPONENT).write_text(record.to_json())
    monkeypatch.setattr(network_policy, "enforcing", lambda: False)
    assert network_policy.problem(state) == (
        "kube-router runs but its chains are missing from the filter table"
    )
    monkeypatch.setattr(network_policy, "enforcing", lambda: True)
    assert network_policy.problem(state) is None


def _own_start_ticks() -> int:
    fields = Path(f"/proc/{os.getpid()}/stat").read_text().rpartition(")")[2].split()
    return int(fields[19])


def test_kube_router_gets_its_own_client_certificate_and_a_private_key(tmp_path: Path) -> None:
    now = datetime.datetime(2026, 12, 8, tzinfo=datetime.UTC)
    cluster_pki = pki.PkiFiles(tmp_path / "pki")
    pki.write_cluster_pki(cluster_pki, cluster_name="t", now=now)
    node = real_node.NodeLayout(layout.ClusterLayout(name="t", state_dir=tmp_path, tmpfs_dir=None))
    path = network_policy.write_credentials(
        node, cluster_pki=cluster_pki, apiserver_url="https://127.0.0.1:6443", now=now
    )
    kubeconfig = yaml.safe_load(path.read_text())
    assert kubeconfig["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443"
    assert kubeconfig["users"][0]["name"] == network_policy.USER
    pair = network_policy.client_pair(node)
    certificate = x509.load_pem_x509_certificate(pair.certificate.read_bytes())
    common_name = certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    assert common_name[0].value == network_policy.USER
    assert pair.key.stat().st_mode & 0o777 == 0o600
