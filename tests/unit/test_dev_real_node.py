"""The real node of ``hush dev up --real-node``: its pins, network guard, configs and images.

Everything here is pure (builders and parsers); the e2e test ``e2e/test_real_node.py``
runs the real thing as root.
"""

from __future__ import annotations

import argparse
import io
import ipaddress
import itertools
import json
import re
import shutil
import subprocess
import tarfile
import tomllib
from pathlib import Path
from typing import Any

import pytest

from hush.cli import dev as dev_cli
from hush.dev import (
    binaries,
    cluster,
    components,
    containerd_config,
    host_setup,
    layout,
    network_guard,
    oci_image,
    real_node,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
KUBERNETES_MODULE = REPO_ROOT / "hack" / "controlplane" / "kubernetes"


# -- one pin for the control plane and the node --------------------------------------------


def _module_versions(text: str) -> dict[str, str]:
    """module -> version of every require line and replace target in a go.mod."""
    versions: dict[str, str] = {}
    for line in text.splitlines():
        line = line.split("//")[0].strip()
        replaced = re.fullmatch(r"(\S+) => (\S+) (v\S+)", line)
        if replaced:
            versions[f"replace {replaced.group(1)}"] = replaced.group(3)
            continue
        required = re.fullmatch(r"(?:require )?(\S+) (v\S+)", line)
        if required:
            versions[required.group(1)] = required.group(2)
    return versions


def test_node_module_pins_exactly_what_the_control_plane_pins() -> None:
    control_plane = _module_versions((KUBERNETES_MODULE / "go.mod").read_text())
    node = _module_versions((KUBERNETES_MODULE / "node.mod").read_text())
    assert control_plane["k8s.io/kubernetes"] == node["k8s.io/kubernetes"]
    differing = {
        module: (version, node.get(module))
        for module, version in control_plane.items()
        if node.get(module) != version
    }
    assert differing == {}, "node.mod must pin every module of go.mod at the same version"
    node_tools = (KUBERNETES_MODULE / "node.mod").read_text()
    assert "k8s.io/kubernetes/cmd/kubelet" in node_tools
    assert "k8s.io/kubernetes/cmd/kube-proxy" in node_tools


def test_node_sum_covers_every_control_plane_checksum() -> None:
    control_plane = set((KUBERNETES_MODULE / "go.sum").read_text().splitlines())
    node = set((KUBERNETES_MODULE / "node.sum").read_text().splitlines())
    assert control_plane <= node


def test_node_binaries_come_from_hush_node_bin(tmp_path: Path) -> None:
    for name in binaries.NODE_BINARIES:
        (tmp_path / name).write_text("#!/bin/sh\n")
        (tmp_path / name).chmod(0o755)
    assert binaries.locate_node({"HUSH_NODE_BIN": str(tmp_path)}) == tmp_path.resolve()
    (tmp_path / "kube-proxy").unlink()
    with pytest.raises(Exception, match="kube-proxy"):
        binaries.locate_node({"HUSH_NODE_BIN": str(tmp_path)})


# -- the network guard ---------------------------------------------------------------------


def test_every_range_of_the_cluster_is_guarded_and_none_overlaps_the_uplink() -> None:
    ranges = [ipaddress.ip_network(r) for r in network_guard.GUARDED_RANGES]
    assert ipaddress.ip_network(components.SERVICE_CLUSTER_IP_RANGE) in ranges
    assert ipaddress.ip_network(components.POD_CIDR) in ranges
    node_subnet = ipaddress.ip_network(network_guard.NODE_POD_SUBNET)
    assert any(node_subnet.subnet_of(r) for r in ranges)  # type: ignore[arg-type]
    assert ipaddress.ip_address(network_guard.NODE_ADDRESS) in node_subnet
    assert not ipaddress.ip_address(network_guard.NODE_ADDRESS).is_loopback
    assert ipaddress.ip_address(real_node.CLUSTER_DNS) in ipaddress.ip_network(
        network_guard.SERVICE_RANGE
    )
    for first, second in itertools.pairwise(ranges):
        assert not first.overlaps(second)


@pytest.mark.parametrize("cluster_range", network_guard.GUARDED_RANGES)
def test_probe_address_is_inside_its_range_and_not_ours(cluster_range: str) -> None:
    address = ipaddress.ip_address(network_guard.probe_address(cluster_range))
    assert address in ipaddress.ip_network(cluster_range)
    assert str(address) != network_guard.NODE_ADDRESS


def test_each_range_gets_a_bridge_route_and_a_blackhole_behind_it() -> None:
    commands = network_guard.route_commands()
    for cluster_range in network_guard.GUARDED_RANGES:
        to_bridge = [c for c in commands if cluster_range in c and "dev" in c]
        blackhole = [c for c in commands if cluster_range in c and "blackhole" in c]
        assert len(to_bridge) == 1
        assert to_bridge[0][to_bridge[0].index("dev") + 1] == network_guard.BRIDGE
        assert len(blackhole) == 1
        assert "metric" in blackhole[0]
    assert all(str(network_guard.ROUTE_PROTOCOL) in c for c in commands)


def test_ruleset_drops_both_directions_and_leaks_and_never_masquerades() -> None:
    ruleset = network_guard.nft_ruleset(cluster_name="c1")
    bridge = network_guard.BRIDGE
    assert f'iifname "{bridge}" counter name "egress_dropped" drop' in ruleset
    assert f'oifname "{bridge}" counter name "ingress_dropped" drop' in ruleset
    assert ruleset.count('counter name "leak_dropped" drop') == 2
    assert "masquerade" not in ruleset
    assert "snat" not in ruleset.replace("srcnat", "")
    for cluster_range in network_guard.GUARDED_RANGES:
        assert cluster_range in ruleset


def test_ports_open_to_pods_are_dropped_on_every_other_interface() -> None:
    ruleset = network_guard.nft_ruleset(cluster_name="c1", inbound_ports=(6443, 7000))
    bridge = network_guard.BRIDGE
    expected = (
        f'tcp dport {{ 6443, 7000 }} iifname != {{ "{bridge}", "lo" }} '
        'counter name "inbound_dropped" drop'
    )
    assert expected in ruleset
    assert "dport" not in network_guard.nft_ruleset(cluster_name="c1")


@pytest.mark.skipif(
    shutil.which("nft") is None or not Path("/proc/self").exists(), reason="needs nft"
)
@pytest.mark.parametrize("inbound_ports", [(), (6443,)])
def test_ruleset_is_accepted_by_nft_check_mode(inbound_ports: tuple[int, ...]) -> None:
    result = subprocess.run(
        ["nft", "-c", "-f", "-"],
        input=network_guard.nft_ruleset(cluster_name="c1", inbound_ports=inbound_ports),
        capture_output=True,
        text=True,
        check=False,
    )
    if "Operation not permitted" in result.stderr:
        pytest.skip("nft -c needs CAP_NET_ADMIN")
    assert result.returncode == 0, result.stderr


def _table_items(*, masquerade_elsewhere: bool = False, drops: int = 4) -> dict[str, Any]:
    family, table = network_guard.NFT_FAMILY, network_guard.NFT_TABLE
    items: list[dict[str, Any]] = [
        {"metainfo": {"version": "1.0.6"}},
        {"table": {"family": family, "name": table, "handle": 1}},
    ]
    items += [
        {"counter": {"family": family, "table": table, "name": name, "packets": 3}}
        for name in network_guard.COUNTERS
    ]
    items += [
        {"chain": {"family": family, "table": table, "name": hook, "hook": hook}}
        for hook in ("forward", "output", "postrouting")
    ]
    items += [
        {"rule": {"family": family, "table": table, "chain": "forward", "expr": [{"drop": None}]}}
        for _ in range(drops)
    ]
    if masquerade_elsewhere:
        items.append(
            {
                "rule": {
                    "family": "ip",
                    "table": "nat",
                    "chain": "POSTROUTING",
                    "expr": [{"masquerade": None}],
                }
            }
        )
    return {"nftables": items}


def test_guard_problems_accepts_the_complete_guard() -> None:
    assert network_guard.guard_problems(_table_items()) == []


def test_guard_problems_names_a_missing_table_a_missing_drop_and_a_masquerade() -> None:
    assert any("missing" in p for p in network_guard.guard_problems({"nftables": []}))
    assert any("drop rules" in p for p in network_guard.guard_problems(_table_items(drops=3)))
    problems = network_guard.guard_problems(_table_items(masquerade_elsewhere=True))
    assert any("masquerade" in p and "ip nat" in p for p in problems)


def test_only_kube_proxys_own_table_may_masquerade() -> None:
    document = _table_items()
    document["nftables"].append(
        {
            "rule": {
                "family": "ip",
                "table": network_guard.KUBE_PROXY_TABLE,
                "chain": "masquerading",
                "expr": [{"masquerade": {"flags": "fully-random"}}],
            }
        }
    )
    assert network_guard.guard_problems(document) == []


def test_counters_are_read_from_our_table_only() -> None:
    document = _table_items()
    document["nftables"].append(
        {"counter": {"family": "inet", "table": "other", "name": "egress_dropped", "packets": 99}}
    )
    assert network_guard.parse_counters(document) == dict.fromkeys(network_guard.COUNTERS, 3)


def test_route_check_is_ours_only_on_our_bridge() -> None:
    on_bridge = network_guard.parse_route_get(
        "10.96.0.0/16", "10.96.0.7", [{"dst": "10.96.0.7", "dev": "hush0"}]
    )
    uplink = network_guard.parse_route_get(
        "10.96.0.0/16", "10.96.0.7", [{"dst": "10.96.0.7", "gateway": "192.0.2.1", "dev": "eth0"}]
    )
    blackhole = network_guard.parse_route_get(
        "10.96.0.0/16", "10.96.0.7", [{"type": "blackhole", "dst": "10.96.0.7"}]
    )
    assert on_bridge.ours
    assert not uplink.ours
    assert not blackhole.ours


# -- containerd and CNI --------------------------------------------------------------------


def _paths(tmp_path: Path) -> containerd_config.ContainerdPaths:
    return containerd_config.ContainerdPaths(
        root=tmp_path / "root",
        state=tmp_path / "state",
        socket=tmp_path / "state" / "containerd.sock",
        cni_conf_dir=tmp_path / "net.d",
        cni_bin_dir=Path("/usr/lib/cni"),
        cni_ipam_dir=tmp_path / "ipam",
        opt_dir=tmp_path / "opt",
    )


def test_containerd_config_avoids_the_traps_of_this_machine(tmp_path: Path) -> None:
    text = containerd_config.containerd_config(
        paths=_paths(tmp_path), sandbox_image="hush.local/pause:x", metrics_port=1234
    )
    config = tomllib.loads(text)
    cri = config["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["restrict_oom_score_adj"] is True
    assert cri["sandbox_image"] == "hush.local/pause:x"
    assert cri["netns_mounts_under_state_dir"] is True
    runc = cri["containerd"]["runtimes"]["runc"]
    assert runc["runtime_type"] == "io.containerd.runc.v2"
    assert runc["options"]["SystemdCgroup"] is False
    assert cri["cni"]["conf_dir"] == str(tmp_path / "net.d")
    assert config["grpc"]["address"] == str(tmp_path / "state" / "containerd.sock")
    assert config["metrics"]["address"] == "127.0.0.1:1234"
    assert config["root"] == str(tmp_path / "root")


def test_cni_network_is_our_bridge_without_masquerade(tmp_path: Path) -> None:
    conflist = containerd_config.cni_conflist(ipam_dir=tmp_path)
    (bridge,) = conflist["plugins"]  # type: ignore[misc]
    assert bridge["type"] == "bridge"
    assert bridge["bridge"] == network_guard.BRIDGE
    assert bridge["ipMasq"] is False
    (range_,) = bridge["ipam"]["ranges"][0]
    subnet = ipaddress.ip_network(network_guard.NODE_POD_SUBNET)
    assert range_["gateway"] == network_guard.NODE_ADDRESS
    start, end = (
        ipaddress.ip_address(range_["rangeStart"]),
        ipaddress.ip_address(range_["rangeEnd"]),
    )
    assert start in subnet
    assert end in subnet
    assert ipaddress.ip_address(network_guard.NODE_ADDRESS) < start
    assert bridge["ipam"]["dataDir"] == str(tmp_path)


# -- the kubelet ---------------------------------------------------------------------------


def _node(tmp_path: Path) -> real_node.NodeLayout:
    return real_node.NodeLayout(layout.layout_for("c1", {"HUSH_STATE_DIR": str(tmp_path)}))


def test_kubelet_configuration_for_cgroup_v1_and_no_host_resolver(tmp_path: Path) -> None:
    node = _node(tmp_path)
    ports = real_node.NodePorts(containerd_metrics=1, kubelet=2, kubelet_healthz=3)
    config = real_node.kubelet_configuration(node, ports=ports, ca_certificate=tmp_path / "ca.crt")
    assert config["failCgroupV1"] is False
    assert config["cgroupDriver"] == "cgroupfs"
    assert config["resolvConf"] == str(node.resolv_conf)
    assert config["resolvConf"] != "/etc/resolv.conf"
    assert config["address"] == network_guard.NODE_ADDRESS
    assert config["healthzBindAddress"] == "127.0.0.1"
    assert config["readOnlyPort"] == 0
    assert config["authentication"]["anonymous"]["enabled"] is False
    assert config["containerRuntimeEndpoint"] == f"unix://{node.containerd.socket}"
    assert len(str(node.containerd.socket)) < 108  # a unix socket path's limit


def test_kubelet_command_names_a_non_loopback_node_ip(tmp_path: Path) -> None:
    command = real_node.build_kubelet(_node(tmp_path), kubelet_binary=Path("/bin/kubelet"))
    assert f"--node-ip={network_guard.NODE_ADDRESS}" in command
    assert f"--hostname-override={real_node.NODE_NAME}" in command
    assert "--node-labels=type=real" in command


def test_node_processes_send_web_requests_to_a_closed_loopback_proxy() -> None:
    environment = real_node.proxy_environment()
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        assert environment[key].startswith("http://127.0.0.1:")
    for cluster_range in network_guard.GUARDED_RANGES:
        assert cluster_range in environment["NO_PROXY"]


def _node_object(*, ready: str, taints: list[dict[str, str]] | None = None) -> dict[str, Any]:
    return {
        "spec": {"taints": taints or []},
        "status": {"conditions": [{"type": "Ready", "status": ready, "message": "m"}]},
    }


def test_node_problem() -> None:
    assert real_node.node_problem(None) is not None
    assert "not Ready" in (real_node.node_problem(_node_object(ready="False")) or "")
    tainted = _node_object(ready="True", taints=[{"key": "node.kubernetes.io/not-ready"}])
    assert "taints" in (real_node.node_problem(tainted) or "")
    assert real_node.node_problem(_node_object(ready="True")) is None


# -- components and the cluster record -----------------------------------------------------


def _specs(tmp_path: Path, node_bin_dir: Path | None) -> dict[str, components.ComponentSpec]:
    ports = components.Ports(
        etcd_client=1,
        etcd_peer=2,
        apiserver=3,
        controller_manager=4,
        scheduler=5,
        kwok=6,
        containerd_metrics=7,
        kubelet=8,
        kubelet_healthz=9,
        kube_proxy_healthz=10,
        kube_proxy_metrics=11,
    )
    specs = components.build_components(
        ports=ports,
        layout=layout.layout_for("c1", {"HUSH_STATE_DIR": str(tmp_path)}),
        bins=binaries.Binaries(tmp_path / "bin"),
        node_bin_dir=node_bin_dir,
    )
    return {spec.name: spec for spec in specs}


def test_without_a_real_node_the_components_are_unchanged(tmp_path: Path) -> None:
    specs = _specs(tmp_path, None)
    assert tuple(specs) == layout.COMPONENT_NAMES
    assert "--manage-all-nodes=true" in specs["kwok"].command
    assert not any("kubelet" in flag for flag in specs["kube-apiserver"].command)
    apiserver = list(specs["kube-apiserver"].command)
    # The flags, in the order clusters made before real nodes have them (same digest: reused).
    start = apiserver.index("--bind-address=127.0.0.1")
    assert apiserver[start : start + 4] == [
        "--bind-address=127.0.0.1",
        "--secure-port=3",
        "--advertise-address=127.0.0.1",
        "--endpoint-reconciler-type=none",
    ]
    assert all(spec.environment == () for spec in specs.values())


def test_with_a_real_node_kwok_manages_only_its_own_nodes(tmp_path: Path) -> None:
    specs = _specs(tmp_path, tmp_path / "node-bin")
    assert tuple(specs) == layout.COMPONENT_NAMES + layout.REAL_NODE_COMPONENT_NAMES
    kwok = specs["kwok"].command
    assert "--manage-all-nodes=true" not in kwok
    assert f"--manage-nodes-with-annotation-selector={real_node.KWOK_NODE_SELECTOR}" in kwok
    apiserver = specs["kube-apiserver"].command
    assert "--kubelet-preferred-address-types=InternalIP" in apiserver
    assert f"--advertise-address={network_guard.NODE_ADDRESS}" in apiserver
    assert "--endpoint-reconciler-type=lease" in apiserver
    assert specs["kubelet"].command[0] == str(tmp_path / "node-bin" / "kubelet")
    assert specs["kubelet"].health_url == "http://127.0.0.1:9/healthz"
    assert specs["containerd"].health_url == "http://127.0.0.1:7/v1/metrics"
    assert dict(specs["containerd"].environment)["HTTPS_PROXY"] == real_node.CLOSED_PROXY
    assert specs["kube-proxy"].command[0] == str(tmp_path / "node-bin" / "kube-proxy")
    assert specs["kube-proxy"].health_url == "http://127.0.0.1:10/healthz"


def test_kube_proxy_stays_on_loopback_and_the_bridge(tmp_path: Path) -> None:
    ports = real_node.NodePorts(
        containerd_metrics=1,
        kubelet=2,
        kubelet_healthz=3,
        kube_proxy_healthz=4,
        kube_proxy_metrics=5,
    )
    config = real_node.kube_proxy_configuration(_node(tmp_path), ports=ports)
    assert config["mode"] == "nftables"
    assert config["healthzBindAddress"] == "127.0.0.1:4"
    assert config["metricsBindAddress"] == "127.0.0.1:5"
    assert config["nodePortAddresses"] == [f"{network_guard.NODE_ADDRESS}/32"]
    assert config["clusterCIDR"] == network_guard.REAL_POD_RANGE
    # No conntrack sysctl is changed on the host.
    assert config["conntrack"]["maxPerCore"] == 0
    assert config["conntrack"]["tcpEstablishedTimeout"] == "0s"


def test_cluster_record_keeps_the_node_bin_dir_and_reads_old_records(tmp_path: Path) -> None:
    ports = components.Ports(
        etcd_client=1, etcd_peer=2, apiserver=3, controller_manager=4, scheduler=5, kwok=6
    )
    record = cluster.ClusterRecord(
        name="c1",
        nodes=2,
        bin_dir=tmp_path,
        etcd_data_dir=tmp_path,
        ports=ports,
        commands_digest="d",
        node_bin_dir=tmp_path / "node",
    )
    again = cluster.ClusterRecord.from_json(record.to_json())
    assert again == record
    assert again.real_node
    old = json.loads(record.to_json())
    del old["nodeBinDir"]
    for key in ("containerd_metrics", "kubelet", "kubelet_healthz"):
        del old["ports"][key]
    legacy = cluster.ClusterRecord.from_json(json.dumps(old))
    assert not legacy.real_node
    assert legacy.ports.kubelet == 0


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [([], None), (["--real-node"], True), (["--no-real-node"], False)],
)
def test_cli_real_node_flag(arguments: list[str], expected: bool | None) -> None:
    parser = argparse.ArgumentParser()
    dev_cli.register(parser.add_subparsers())
    parsed = parser.parse_args(["dev", "up", *arguments])
    assert parsed.real_node is expected


# -- images --------------------------------------------------------------------------------


def _members(archive: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as opened:
        return {member.name: member for member in opened.getmembers()}


def test_images_are_reproducible_and_tagged_by_content() -> None:
    first = oci_image.node_images(b"\x7fELF busybox", version="1:1.35.0-4+deb12u1")
    again = oci_image.node_images(b"\x7fELF busybox", version="1:1.35.0-4+deb12u1")
    other = oci_image.node_images(b"\x7fELF other", version="1:1.35.0-4+deb12u1")
    assert first == again
    assert oci_image.archive_bytes(first.busybox) == oci_image.archive_bytes(again.busybox)
    assert first.busybox.manifest_digest != other.busybox.manifest_digest
    assert first.busybox.reference != other.busybox.reference
    assert first.busybox.reference.startswith(f"{oci_image.REGISTRY}/busybox:1_1.35.0-4_deb12u1-")
    assert first.pause.reference.startswith(f"{oci_image.REGISTRY}/pause:")


def test_archive_is_an_oci_layout_that_ctr_names() -> None:
    images = oci_image.node_images(b"binary", version="1.0")
    archive = oci_image.archive_bytes(images.busybox)
    members = _members(archive)
    assert {"oci-layout", "index.json"} <= set(members)
    assert all(member.mtime == 0 and member.uid == 0 for member in members.values())
    with tarfile.open(fileobj=io.BytesIO(archive)) as opened:
        index = json.loads(opened.extractfile("index.json").read())  # type: ignore[union-attr]
        (descriptor,) = index["manifests"]
        assert descriptor["digest"] == images.busybox.manifest_digest
        assert descriptor["annotations"]["io.containerd.image.name"] == images.busybox.reference
        manifest_name = "blobs/sha256/" + descriptor["digest"].removeprefix("sha256:")
        manifest = json.loads(opened.extractfile(manifest_name).read())  # type: ignore[union-attr]
        config_name = "blobs/sha256/" + manifest["config"]["digest"].removeprefix("sha256:")
        config = json.loads(opened.extractfile(config_name).read())  # type: ignore[union-attr]
        (layer,) = manifest["layers"]
        assert config["rootfs"]["diff_ids"] == [layer["digest"]]
        assert config["config"]["Cmd"][:2] == ["/bin/busybox", "httpd"]
        layer_bytes = opened.extractfile(  # type: ignore[union-attr]
            "blobs/sha256/" + layer["digest"].removeprefix("sha256:")
        ).read()
    layer_members = _members(layer_bytes)
    assert layer_members["bin/busybox"].mode == 0o755
    assert layer_members["bin/sh"].linkname == "busybox"
    assert "www/index.html" in layer_members


# -- the host ------------------------------------------------------------------------------


def test_not_root_is_a_one_line_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host_setup.os, "geteuid", lambda: 1000)
    reason = host_setup.unavailable_reason()
    assert reason is not None
    assert "root" in reason or "Linux" in reason
    assert "\n" not in reason


def test_missing_packages_are_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    present = tmp_path / "present"
    present.write_text("")
    present.chmod(0o755)
    monkeypatch.setattr(
        host_setup,
        "PACKAGES",
        {"here": (present,), "gone": (tmp_path / "absent",)},
    )
    assert host_setup.missing_packages() == ["gone"]
    monkeypatch.setattr(host_setup.os, "geteuid", lambda: 1000)
    with pytest.raises(Exception, match="gone"):
        host_setup.ensure_packages()
