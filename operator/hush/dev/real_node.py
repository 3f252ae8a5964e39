"""One real node beside the kwok nodes: containerd + runc + CNI bridge + a kubelet.

``hush dev up --real-node`` adds it (docs/design/0020-real-nodes.md). This module owns its
files, its two processes' command lines and its clean-up; ``cluster`` starts and stops the
processes like every other component, and ``network_guard`` owns the bridge, routes and
nftables table, which must be in place (and checked) before containerd starts.

Files (under the cluster's state directory, and a short run directory for the socket)::

    <state dir>/node/
        pki/kubelet-client.{crt,key}    system:node:<node>, group system:nodes
        pki/kubelet-serving.{crt,key}   IP SANs: the node address and 127.0.0.1
        kubelet.kubeconfig, kubelet-config.yaml, resolv.conf
        containerd.toml, cni/net.d/10-hush.conflist, cni/ipam/ (host-local's leases)
        containerd/ (containerd's root: images, snapshots), kubelet/ (the kubelet's root)
        images/*.oci.tar                the node's images, built here (oci_image)
    /run/hush/<cluster>/containerd/     containerd's state, socket and pod network namespaces

Nothing of the node may reach the network: the pods' resolv.conf names only an address in
the Service range (which dies on our bridge), containerd and the kubelet get an HTTP(S)
proxy on a closed loopback port so that a registry pull fails locally instead of resolving
and dialling a registry, and pods use images imported here (``imagePullPolicy: Never``).

``down`` first deletes the node's pods through the API (the kubelet then stops their
sandboxes: CNI DEL removes veths and addresses, containerd removes the network
namespaces), then the processes stop, then :func:`sweep` kills what is left in the pods'
cgroups and our containerd shims, unmounts everything under our directories and removes the
pod cgroups.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hush.dev import (
    bootstrap,
    containerd_config,
    errors,
    host_setup,
    kubeconfigs,
    network_guard,
    oci_image,
    pki,
)
from hush.dev import layout as layout_module

logger = logging.getLogger(__name__)

NODE_NAME: Final = "real-node-0"
NODE_LABELS: Final = {"type": "real"}
KWOK_TAINT: Final = "hush.dev/kwok=true:NoSchedule"
"""On every kwok node of a cluster with a real node: only scale tests tolerate it."""
KWOK_NODE_SELECTOR: Final = "kwok.x-k8s.io/node=fake"
"""kwok manages only nodes with this annotation (bootstrap sets it), never the real one."""
CLUSTER_DNS: Final = "10.96.0.10"
CLUSTER_DOMAIN: Final = "cluster.local"
CLOSED_PROXY: Final = "http://127.0.0.1:9"
"""A proxy on the discard port, which nothing serves: a registry pull fails on loopback."""
CONTAINERD_BINARY: Final = Path("/usr/bin/containerd")
CTR_BINARY: Final = Path("/usr/bin/ctr")
CGROUP_ROOT: Final = Path("/sys/fs/cgroup")
POD_CGROUP: Final = "kubepods"
READY_TIMEOUT_SECONDS: Final = 120.0
DRAIN_TIMEOUT_SECONDS: Final = 60.0
_RUN_ROOT: Final = Path("/run/hush")
KUBELET_SYSCTLS: Final = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
"""Kernel settings the kubelet changes at start (``protectKernelDefaults: false``; with
``true`` it refuses to start on a machine that differs): saved before, restored by down."""
KUBE_NFT_TABLES: Final = tuple(
    (family, table)
    for family in ("ip", "ip6")
    for table in ("filter", "nat", "mangle", "kube-proxy")
)
"""Where the kubelet (through iptables-nft) creates its KUBE-* canary and firewall chains,
and kube-proxy (nftables mode) its Service rules; kube-proxy does not remove them on exit."""
KUBE_PROXY_TABLE: Final = "kube-proxy"
_CTR_TIMEOUT_SECONDS: Final = 120.0


@dataclasses.dataclass(frozen=True)
class NodeLayout:
    """The files of a cluster's real node."""

    cluster: layout_module.ClusterLayout

    @property
    def directory(self) -> Path:
        return self.cluster.state_dir / "node"

    @property
    def run_dir(self) -> Path:
        # Short and outside the state dir: a unix socket path has at most 107 bytes.
        return _RUN_ROOT / self.cluster.name

    @property
    def pki_dir(self) -> Path:
        return self.directory / "pki"

    @property
    def kubelet_client(self) -> pki.KeyPair:
        return pki.KeyPair(self.pki_dir / "kubelet-client.crt", self.pki_dir / "kubelet-client.key")

    @property
    def kubelet_serving(self) -> pki.KeyPair:
        return pki.KeyPair(
            self.pki_dir / "kubelet-serving.crt", self.pki_dir / "kubelet-serving.key"
        )

    @property
    def kubelet_kubeconfig(self) -> Path:
        return self.directory / "kubelet.kubeconfig"

    @property
    def kubelet_config(self) -> Path:
        return self.directory / "kubelet-config.yaml"

    @property
    def kube_proxy_client(self) -> pki.KeyPair:
        return pki.KeyPair(
            self.pki_dir / "kube-proxy-client.crt", self.pki_dir / "kube-proxy-client.key"
        )

    @property
    def kube_proxy_kubeconfig(self) -> Path:
        return self.directory / "kube-proxy.kubeconfig"

    @property
    def kube_proxy_config(self) -> Path:
        return self.directory / "kube-proxy-config.yaml"

    @property
    def kubelet_root(self) -> Path:
        return self.directory / "kubelet"

    @property
    def resolv_conf(self) -> Path:
        return self.directory / "resolv.conf"

    @property
    def containerd_config_file(self) -> Path:
        return self.directory / "containerd.toml"

    @property
    def host_snapshot(self) -> Path:
        return self.directory / "host-before.json"

    @property
    def images_dir(self) -> Path:
        return self.directory / "images"

    @property
    def containerd(self) -> containerd_config.ContainerdPaths:
        state = self.run_dir / "containerd"
        return containerd_config.ContainerdPaths(
            root=self.directory / "containerd",
            state=state,
            socket=state / "containerd.sock",
            cni_conf_dir=self.directory / "cni" / "net.d",
            cni_bin_dir=host_setup.CNI_BIN_DIR,
            cni_ipam_dir=self.directory / "cni" / "ipam",
            opt_dir=self.directory / "containerd-opt",
            # hush.dev.registry writes the local registry's hosts.toml here.
            registry_hosts_dir=self.directory / "certs.d",
        )

    @property
    def owned_trees(self) -> tuple[Path, ...]:
        """Directories whose mounts and contents are all ours."""
        return (self.directory, self.run_dir)


@dataclasses.dataclass(frozen=True, kw_only=True)
class NodePorts:
    containerd_metrics: int
    kubelet: int
    kubelet_healthz: int
    kube_proxy_healthz: int = 0
    kube_proxy_metrics: int = 0


def proxy_environment() -> dict[str, str]:
    """Environment of containerd and the kubelet: any registry or web request goes to a
    closed loopback port, except for our own ranges and loopback."""
    no_proxy = ",".join(("127.0.0.1", "localhost", *network_guard.GUARDED_RANGES))
    return {
        "HTTP_PROXY": CLOSED_PROXY,
        "HTTPS_PROXY": CLOSED_PROXY,
        "http_proxy": CLOSED_PROXY,
        "https_proxy": CLOSED_PROXY,
        "NO_PROXY": no_proxy,
        "no_proxy": no_proxy,
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    }


def kubelet_configuration(
    node: NodeLayout, *, ports: NodePorts, ca_certificate: Path
) -> dict[str, Any]:
    """The KubeletConfiguration (kubelet.config.k8s.io/v1beta1) of the real node."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # The VM mounts cgroup v1 controllers; kubelet >= 1.35 refuses v1 unless told.
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": "/",
        "containerRuntimeEndpoint": f"unix://{node.containerd.socket}",
        # Serves exec/logs/port-forward on the bridge address only, authenticated and
        # authorised by the apiserver; the read-only port is off.
        "address": network_guard.NODE_ADDRESS,
        "port": ports.kubelet,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": ports.kubelet_healthz,
        "tlsCertFile": str(node.kubelet_serving.certificate),
        "tlsPrivateKeyFile": str(node.kubelet_serving.key),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca_certificate)},
        },
        "authorization": {"mode": "Webhook"},
        "clusterDomain": CLUSTER_DOMAIN,
        "clusterDNS": [CLUSTER_DNS],
        # Never the host's resolv.conf: its nameserver is outside our ranges.
        "resolvConf": str(node.resolv_conf),
        "podCIDR": network_guard.NODE_POD_SUBNET,
        "failSwapOn": False,
        "registerNode": True,
        "serializeImagePulls": False,
        "shutdownGracePeriod": "0s",
        # A dev machine's disk is shared with caches: evict only when it is really full.
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "2%",
            "imagefs.available": "2%",
            "nodefs.inodesFree": "2%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
    }


def kube_proxy_configuration(node: NodeLayout, *, ports: NodePorts) -> dict[str, Any]:
    """The KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1) of the real node."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        # nftables: this kernel has nf_tables; iptables-legacy is not the future.
        "mode": "nftables",
        "clientConnection": {"kubeconfig": str(node.kube_proxy_kubeconfig)},
        "hostnameOverride": NODE_NAME,
        "bindAddress": network_guard.NODE_ADDRESS,
        "healthzBindAddress": f"127.0.0.1:{ports.kube_proxy_healthz}",
        "metricsBindAddress": f"127.0.0.1:{ports.kube_proxy_metrics}",
        # Traffic from these addresses is "local": only traffic from elsewhere (the host's
        # own address is inside) is masqueraded, and that stays on the bridge anyway.
        "clusterCIDR": network_guard.REAL_POD_RANGE,
        "detectLocalMode": "ClusterCIDR",
        # NodePorts only on our bridge address, never on the uplink's.
        "nodePortAddresses": [f"{network_guard.NODE_ADDRESS}/32"],
        # 0 everywhere: kube-proxy leaves the host's conntrack sysctls alone.
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
            "udpTimeout": "0s",
            "udpStreamTimeout": "0s",
        },
    }


def build_kube_proxy(node: NodeLayout, *, kube_proxy_binary: Path) -> tuple[str, ...]:
    return (str(kube_proxy_binary), f"--config={node.kube_proxy_config}", "--v=1")


def build_containerd(node: NodeLayout) -> tuple[str, ...]:
    return (str(CONTAINERD_BINARY), f"--config={node.containerd_config_file}")


def build_kubelet(node: NodeLayout, *, kubelet_binary: Path) -> tuple[str, ...]:
    labels = ",".join(f"{key}={value}" for key, value in NODE_LABELS.items())
    return (
        str(kubelet_binary),
        f"--config={node.kubelet_config}",
        f"--kubeconfig={node.kubelet_kubeconfig}",
        f"--root-dir={node.kubelet_root}",
        f"--cert-dir={node.pki_dir}",
        f"--hostname-override={NODE_NAME}",
        # Not loopback: the kubelet refuses a loopback node IP ("nodeIP can't be loopback").
        f"--node-ip={network_guard.NODE_ADDRESS}",
        f"--node-labels={labels}",
        "--v=1",
    )


# -- preparing the files -------------------------------------------------------------------


def _load_authority(files: pki.PkiFiles) -> pki.CertificateAuthority:
    certificate = x509.load_pem_x509_certificate(files.ca.certificate.read_bytes())
    key = serialization.load_pem_private_key(files.ca.key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise errors.DevClusterError(f"{files.ca.key} is not the ECDSA key hush dev writes")
    return pki.CertificateAuthority(certificate=certificate, key=key)


def _write_secret(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(content)


def _write_pair(pair: pki.KeyPair, certificate: x509.Certificate, key: pki.PrivateKey) -> None:
    pair.certificate.parent.mkdir(parents=True, exist_ok=True)
    pair.certificate.write_bytes(pki.certificate_pem(certificate))
    _write_secret(pair.key, pki.private_key_pem(key))


def write_files(
    node: NodeLayout,
    *,
    cluster_pki: pki.PkiFiles,
    apiserver_url: str,
    ports: NodePorts,
    sandbox_image: str,
    now: datetime.datetime,
) -> None:
    """Certificates, kubeconfig, kubelet and containerd configs, CNI network, resolv.conf."""
    authority = _load_authority(cluster_pki)
    client, client_key = pki.issue_certificate(
        authority,
        common_name=f"system:node:{NODE_NAME}",
        organizations=("system:nodes",),
        usage="client",
        now=now,
    )
    _write_pair(node.kubelet_client, client, client_key)
    serving, serving_key = pki.issue_certificate(
        authority,
        common_name=NODE_NAME,
        usage="server",
        now=now,
        dns_names=(NODE_NAME, "localhost"),
        ip_addresses=(network_guard.NODE_ADDRESS, "127.0.0.1"),
    )
    _write_pair(node.kubelet_serving, serving, serving_key)
    kubeconfigs.write_kubeconfig(
        node.kubelet_kubeconfig,
        kubeconfigs.build_kubeconfig(
            cluster_name=node.cluster.name,
            server=apiserver_url,
            user=f"system:node:{NODE_NAME}",
            ca_certificate=cluster_pki.ca.certificate.read_bytes(),
            client_certificate=node.kubelet_client.certificate.read_bytes(),
            client_key=node.kubelet_client.key.read_bytes(),
        ),
    )
    proxy_client, proxy_key = pki.issue_certificate(
        authority,
        # Bound to ClusterRole system:node-proxier by the apiserver's bootstrap policy.
        common_name="system:kube-proxy",
        usage="client",
        now=now,
    )
    _write_pair(node.kube_proxy_client, proxy_client, proxy_key)
    kubeconfigs.write_kubeconfig(
        node.kube_proxy_kubeconfig,
        kubeconfigs.build_kubeconfig(
            cluster_name=node.cluster.name,
            server=apiserver_url,
            user="system:kube-proxy",
            ca_certificate=cluster_pki.ca.certificate.read_bytes(),
            client_certificate=node.kube_proxy_client.certificate.read_bytes(),
            client_key=node.kube_proxy_client.key.read_bytes(),
        ),
    )
    node.kube_proxy_config.write_text(yaml.safe_dump(kube_proxy_configuration(node, ports=ports)))
    node.kubelet_config.write_text(
        yaml.safe_dump(
            kubelet_configuration(node, ports=ports, ca_certificate=cluster_pki.ca.certificate)
        )
    )
    # Only an address in the Service range: a query that no DNS answers dies on our bridge.
    node.resolv_conf.write_text(
        f"nameserver {CLUSTER_DNS}\nsearch {CLUSTER_DOMAIN}\noptions ndots:1\n"
    )
    paths = node.containerd
    for directory in (paths.root, paths.state, paths.cni_conf_dir, paths.cni_ipam_dir):
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    paths.opt_dir.mkdir(parents=True, exist_ok=True)
    node.kubelet_root.mkdir(parents=True, exist_ok=True)
    node.containerd_config_file.write_text(
        containerd_config.containerd_config(
            paths=paths, sandbox_image=sandbox_image, metrics_port=ports.containerd_metrics
        )
    )
    (paths.cni_conf_dir / "10-hush.conflist").write_text(
        json.dumps(containerd_config.cni_conflist(ipam_dir=paths.cni_ipam_dir), indent=2)
    )


def build_images(cache_dir: Path) -> oci_image.NodeImages:
    """The node's images from the cached ``busybox-static`` package (downloaded once)."""
    deb = host_setup.busybox_deb(cache_dir / "debs")
    return oci_image.node_images(
        oci_image.busybox_from_deb(deb), version=host_setup.deb_version(deb)
    )


def _ctr(node: NodeLayout, arguments: Sequence[str]) -> str:
    command = [
        str(CTR_BINARY),
        f"--address={node.containerd.socket}",
        "--namespace=k8s.io",
        *arguments,
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=_CTR_TIMEOUT_SECONDS
    )
    if result.returncode != 0:
        raise errors.DevClusterError(
            f"`{' '.join(command)}` failed (exit {result.returncode}): {result.stderr.strip()}"
        )
    return result.stdout


def import_images(node: NodeLayout, images: Sequence[oci_image.Image]) -> None:
    """Import each image into the node's containerd unless it is there with that digest."""
    listed = _ctr(node, ["images", "list"])
    for image in images:
        present = any(
            line.split()[:1] == [image.reference] and image.manifest_digest in line
            for line in listed.splitlines()
        )
        if present:
            continue
        archive = node.images_dir / f"{image.reference.rsplit('/', 1)[-1].replace(':', '_')}.tar"
        oci_image.write_archive(image, archive)
        started = time.monotonic()
        _ctr(node, ["images", "import", "--no-unpack=false", str(archive)])
        # Pinned: the kubelet's image garbage collection must never remove them.
        _ctr(node, ["images", "label", image.reference, "io.cri-containerd.pinned=pinned"])
        logger.info(
            "Imported image %s (%s) in %.1fs",
            image.reference,
            image.manifest_digest,
            time.monotonic() - started,
        )


# -- waiting for the node ------------------------------------------------------------------


def node_problem(node: Mapping[str, Any] | None) -> str | None:
    """Why the real node is not usable yet (None when Ready and untainted)."""
    if node is None:
        return f"node {NODE_NAME} has not registered"
    conditions = node.get("status", {}).get("conditions", [])
    ready = next((c for c in conditions if c.get("type") == "Ready"), None)
    if ready is None or ready.get("status") != "True":
        reason = (ready or {}).get("message", "no Ready condition yet")
        return f"node {NODE_NAME} is not Ready: {reason}"
    taints = node.get("spec", {}).get("taints") or []
    if taints:
        return f"node {NODE_NAME} still has taints {[t.get('key') for t in taints]}"
    return None


def wait_ready(
    kubectl: bootstrap.Kubectl,
    *,
    timeout_seconds: float = READY_TIMEOUT_SECONDS,
    check_components: Callable[[], None],
) -> None:
    """Wait until the kubelet has registered the node and it is Ready and untainted."""
    began = time.monotonic()
    last = "not checked yet"
    while time.monotonic() - began < timeout_seconds:
        check_components()
        listed = kubectl.get_json(["get", "nodes", f"--field-selector=metadata.name={NODE_NAME}"])
        items = listed.get("items", [])
        problem = node_problem(items[0] if items else None)
        if problem is None:
            logger.info("Waited %.1fs for node %s to be Ready", time.monotonic() - began, NODE_NAME)
            return
        last = problem
        time.sleep(1.0)
    raise errors.DevClusterError(f"Timed out after {timeout_seconds:.0f}s: {last}")


def taint_kwok_nodes(kubectl: bootstrap.Kubectl) -> None:
    """Keep ordinary pods off the kwok nodes: only what tolerates the taint lands there."""
    kubectl.run(["taint", "nodes", "--selector=type=kwok", KWOK_TAINT, "--overwrite"])
    logger.info("Tainted the kwok nodes %s", KWOK_TAINT)


# -- what the kubelet changes on the host -----------------------------------------------------


def _nft_json(arguments: Sequence[str]) -> dict[str, Any]:
    result = subprocess.run(
        ["nft", "-j", *arguments], capture_output=True, text=True, check=False, timeout=30
    )
    if result.returncode != 0 or not result.stdout.strip():
        return {}
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def _nft_tables() -> list[list[str]]:
    listed = _nft_json(["list", "tables"]).get("nftables", [])
    return [[t["table"]["family"], t["table"]["name"]] for t in listed if "table" in t]


def snapshot_host(node: NodeLayout) -> None:
    """Record the kubelet's sysctls and the nftables tables before the kubelet first starts
    (kept if it exists: a second ``up`` must not record the kubelet's values as ours)."""
    if node.host_snapshot.exists():
        return
    sysctls = {key: (Path("/proc/sys") / key).read_text().strip() for key in KUBELET_SYSCTLS}
    node.host_snapshot.parent.mkdir(parents=True, exist_ok=True)
    node.host_snapshot.write_text(json.dumps({"sysctls": sysctls, "nftTables": _nft_tables()}))


def _nft(arguments: Sequence[str]) -> str | None:
    """Run ``nft``; the error message, or None when it worked."""
    result = subprocess.run(["nft", *arguments], capture_output=True, text=True, check=False)
    return result.stderr.strip() if result.returncode != 0 else None


def _remove_kube_chains(family: str, table: str) -> list[str]:
    """Delete KUBE-* chains and the rules jumping to them from one table kept by others."""
    items = _nft_json(["list", "table", family, table]).get("nftables", [])
    problems: list[str] = []
    for item in items:
        rule = item.get("rule")
        if rule is None or rule["chain"].startswith("KUBE-"):
            continue
        targets = [
            verdict.get("target", "")
            for expression in rule.get("expr", [])
            for key, verdict in expression.items()
            if key in ("jump", "goto") and isinstance(verdict, dict)
        ]
        if any(target.startswith("KUBE-") for target in targets):
            address = [family, table, rule["chain"], "handle", str(rule["handle"])]
            problems += filter(None, [_nft(["delete", "rule", *address])])
    kube_chains = [
        item["chain"]["name"]
        for item in items
        if "chain" in item and item["chain"]["name"].startswith("KUBE-")
    ]
    for chain in kube_chains:  # flush all first: KUBE-* chains jump to each other
        problems += filter(None, [_nft(["flush", "chain", family, table, chain])])
    for chain in kube_chains:
        problems += filter(None, [_nft(["delete", "chain", family, table, chain])])
    return problems


def restore_host(node: NodeLayout) -> list[str]:
    """Undo what the kubelet did to the host: its sysctls and its iptables chains and tables.

    Tables of :data:`KUBE_NFT_TABLES` that did not exist before are deleted; in those that
    did, only KUBE-* chains and jumps to them go. Returns what could not be undone.
    """
    try:
        before: dict[str, Any] = json.loads(node.host_snapshot.read_text())
    except (FileNotFoundError, ValueError):
        before = {}
    problems: list[str] = []
    for key, value in dict(before.get("sysctls", {})).items():
        if key in KUBELET_SYSCTLS:
            try:
                (Path("/proc/sys") / key).write_text(str(value))
            except OSError as error:
                problems.append(f"sysctl {key}: {error.strerror}")
    existed = {tuple(pair) for pair in before.get("nftTables", [])}
    present = {tuple(pair) for pair in _nft_tables()}
    for family, table in KUBE_NFT_TABLES:
        if (family, table) not in present:
            continue
        if table == KUBE_PROXY_TABLE or (before and (family, table) not in existed):
            problems += filter(None, [_nft(["delete", "table", family, table])])
        else:
            problems += _remove_kube_chains(family, table)
    return problems


# -- clean-up ------------------------------------------------------------------------------


def drain(kubectl: bootstrap.Kubectl) -> None:
    """Delete the node's pods through the API and wait: the kubelet stops their sandboxes,
    so CNI releases the addresses and veths and containerd removes the network namespaces."""
    started = time.monotonic()
    with contextlib.suppress(errors.DevClusterError):
        kubectl.run(
            [
                "delete",
                "pods",
                "--all-namespaces",
                f"--field-selector=spec.nodeName={NODE_NAME}",
                "--grace-period=1",
                f"--timeout={DRAIN_TIMEOUT_SECONDS:.0f}s",
                "--wait=true",
            ]
        )
        logger.info("Deleted the pods of %s in %.1fs", NODE_NAME, time.monotonic() - started)


def _cgroup_dirs() -> list[Path]:
    """Our pod cgroups in every v1 hierarchy (or the one v2 tree), deepest first."""
    found: list[Path] = []
    for hierarchy in [CGROUP_ROOT, *sorted(p for p in CGROUP_ROOT.iterdir() if p.is_dir())]:
        top = hierarchy / POD_CGROUP
        if top.is_dir():
            found += [Path(root) for root, _, _ in os.walk(top)]
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def _pids_in(directory: Path) -> set[int]:
    try:
        return {int(line) for line in (directory / "cgroup.procs").read_text().split()}
    except (OSError, ValueError):
        return set()


def _our_shims(socket: Path) -> set[int]:
    """containerd shims started by our containerd (their command line names its socket)."""
    pids: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if arguments and b"containerd-shim" in arguments[0] and str(socket).encode() in arguments:
            pids.add(int(entry.name))
    return pids


def _mounts_under(trees: Sequence[Path]) -> list[Path]:
    """Mount points at or below ``trees``, deepest first (from /proc/self/mountinfo)."""
    points: list[Path] = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        # Field 5 is the mount point, with spaces etc. octal-escaped.
        point = Path(line.split()[4].encode().decode("unicode_escape"))
        if any(point == tree or tree in point.parents for tree in trees):
            points.append(point)
    return sorted(points, key=lambda p: len(p.parts), reverse=True)


def sweep(node: NodeLayout, *, machine_wide: bool = True) -> list[str]:
    """Kill, unmount and remove whatever of the node outlived its processes; returns what
    could not be removed (empty when clean).

    ``machine_wide`` False (another cluster owns the machine's real node) limits it to what
    carries this cluster's paths: its shims and mounts; the pod cgroups, sysctls and
    iptables chains are the owner's.
    """
    leftovers: list[str] = []
    cgroups = _cgroup_dirs() if machine_wide else []
    victims = set().union(*(_pids_in(d) for d in cgroups)) | _our_shims(node.containerd.socket)
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if victims:
        logger.info("Killed %d leftover container and shim processes", len(victims))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in victims):
            time.sleep(0.1)
    for point in _mounts_under(node.owned_trees):
        result = subprocess.run(["umount", str(point)], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            # A busy mount is detached now and freed when its last user goes.
            lazy = subprocess.run(
                ["umount", "--lazy", str(point)], capture_output=True, text=True, check=False
            )
            if lazy.returncode != 0:
                leftovers.append(f"mount {point}: {lazy.stderr.strip()}")
    for directory in cgroups:
        try:
            directory.rmdir()
        except FileNotFoundError:
            pass
        except OSError as error:
            leftovers.append(f"cgroup {directory}: {error.strerror}")
    return leftovers + (restore_host(node) if machine_wide else [])


def remaining_resources(node: NodeLayout) -> list[str]:
    """What of the node still exists (for ``down``'s final check and the e2e test)."""
    found = [f"mount {point}" for point in _mounts_under(node.owned_trees)]
    found += [f"cgroup {directory}" for directory in _cgroup_dirs()]
    found += [f"shim pid {pid}" for pid in sorted(_our_shims(node.containerd.socket))]
    tables = {tuple(pair) for pair in _nft_tables()}
    found += [
        f"nftables table {f} {t}"
        for f, t in KUBE_NFT_TABLES
        if t == KUBE_PROXY_TABLE and (f, t) in tables
    ]
    for family, table in KUBE_NFT_TABLES:
        items = _nft_json(["list", "table", family, table]).get("nftables", [])
        found += [
            f"nftables chain {family} {table} {item['chain']['name']}"
            for item in items
            if "chain" in item and item["chain"]["name"].startswith("KUBE-")
        ]
    return found
