"""The command line and health endpoint of each control plane component (pure builders).

``build_components`` turns a cluster's ports, files and binaries into five
:class:`ComponentSpec`s, in start order. Nothing here starts anything, so the flags can be
read (and unit-tested) in one place. Flags that are not obvious say why they are there;
docs/local-control-plane.md has the longer story.

Everything binds 127.0.0.1. The service range (10.96.0.0/16) and kwok's pod range
(10.244.0.0/16) must not overlap: the apiserver's implicit default service range collides
with kwok's default pod CIDR.

With a real node (``hush dev up --real-node``) three more components follow, containerd,
the kubelet and kube-proxy (their command lines come from ``real_node``), kwok manages only
the nodes annotated as its own, and the apiserver presents the admin client certificate to
kubelets (``kubectl logs/exec`` against the real node). Without one, every command line is exactly
what it was before real nodes existed, so existing clusters are reused.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Final

from hush.dev import binaries as binaries_module
from hush.dev import layout as layout_module
from hush.dev import network_guard, pki, real_node

SERVICE_CLUSTER_IP_RANGE: Final = "10.96.0.0/16"
POD_CIDR: Final = "10.244.0.0/16"
SERVICE_ACCOUNT_ISSUER: Final = "https://kubernetes.default.svc.cluster.local"
API_AUDIENCES: Final = (SERVICE_ACCOUNT_ISSUER, "https://kubernetes.default.svc")
NODE_LEASE_DURATION_SECONDS: Final = 40


@dataclasses.dataclass(frozen=True, kw_only=True)
class Ports:
    """The loopback ports of one cluster."""

    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int
    # Only a cluster with a real node uses these (0 in records written before they existed).
    containerd_metrics: int = 0
    kubelet: int = 0
    kubelet_healthz: int = 0
    kube_proxy_healthz: int = 0
    kube_proxy_metrics: int = 0

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(field.name for field in dataclasses.fields(cls))


@dataclasses.dataclass(frozen=True, kw_only=True)
class ComponentSpec:
    """How to run one component and how to tell that it is ready."""

    name: str
    command: tuple[str, ...]
    port: int
    health_url: str
    startup_timeout_seconds: float
    environment: tuple[tuple[str, str], ...] = ()
    """Variables added to the inherited environment (the real node's closed proxy)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ComponentKubeconfigs:
    """The kubeconfig file each client component uses."""

    controller_manager: Path
    scheduler: Path
    kwok: Path


def kubeconfig_files(layout: layout_module.ClusterLayout) -> ComponentKubeconfigs:
    return ComponentKubeconfigs(
        controller_manager=layout.pki_dir / "kube-controller-manager.kubeconfig",
        scheduler=layout.pki_dir / "kube-scheduler.kubeconfig",
        kwok=layout.pki_dir / "kwok.kubeconfig",
    )


def apiserver_url(ports: Ports) -> str:
    return f"https://127.0.0.1:{ports.apiserver}"


def build_etcd(
    *, ports: Ports, layout: layout_module.ClusterLayout, bins: binaries_module.Binaries
) -> ComponentSpec:
    client = f"http://127.0.0.1:{ports.etcd_client}"
    peer = f"http://127.0.0.1:{ports.etcd_peer}"
    return ComponentSpec(
        name="etcd",
        command=(
            str(bins.path("etcd")),
            f"--name={layout.name}",
            f"--data-dir={layout.etcd_data_dir}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster={layout.name}={peer}",
            "--initial-cluster-state=new",
            # Test data is disposable: skipping fsync makes every apiserver write cheaper.
            "--unsafe-no-fsync",
            "--log-level=warn",
        ),
        port=ports.etcd_client,
        health_url=f"{client}/health",
        startup_timeout_seconds=30,
    )


def build_apiserver(
    *, ports: Ports, files: pki.PkiFiles, bins: binaries_module.Binaries, real: bool = False
) -> ComponentSpec:
    # With no default route the apiserver cannot pick an address to advertise and refuses
    # to start; and loopback endpoints for the `kubernetes` Service are invalid, so the
    # endpoint reconciler must be off.
    listen: tuple[str, ...] = (
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        "--endpoint-reconciler-type=none",
    )
    kubelet_flags: tuple[str, ...] = ()
    if real:
        # Pods reach the apiserver through the `kubernetes` Service, whose endpoint is the
        # bridge address. The apiserver binds one address or all: all, with the network
        # guard dropping its port on every interface but loopback and the bridge.
        listen = (
            "--bind-address=0.0.0.0",
            f"--advertise-address={network_guard.NODE_ADDRESS}",
            "--endpoint-reconciler-type=lease",
        )
        # The kubelet authenticates the apiserver's exec/logs/port-forward calls by client
        # certificate and authorises them by SubjectAccessReview; the admin identity
        # (system:masters) passes both. Only the real node's InternalIP is dialled.
        kubelet_flags = (
            f"--kubelet-client-certificate={files.admin.certificate}",
            f"--kubelet-client-key={files.admin.key}",
            f"--kubelet-certificate-authority={files.ca.certificate}",
            "--kubelet-preferred-address-types=InternalIP",
        )
    return ComponentSpec(
        name="kube-apiserver",
        command=(
            str(bins.path("kube-apiserver")),
            f"--etcd-servers=http://127.0.0.1:{ports.etcd_client}",
            # This order is that of clusters created before real nodes existed: a kwok-only
            # cluster's commands digest must not change, or every running one is recreated.
            listen[0],
            f"--secure-port={ports.apiserver}",
            *listen[1:],
            f"--tls-cert-file={files.apiserver.certificate}",
            f"--tls-private-key-file={files.apiserver.key}",
            f"--client-ca-file={files.ca.certificate}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--api-audiences={','.join(API_AUDIENCES)}",
            f"--service-account-key-file={files.service_account_public_key}",
            f"--service-account-signing-key-file={files.service_account_key}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--authorization-mode=Node,RBAC",
            # The aggregation layer's front proxy, as kubeadm configures it; see pki.py.
            f"--requestheader-client-ca-file={files.front_proxy_ca.certificate}",
            f"--requestheader-allowed-names={pki.FRONT_PROXY_CLIENT}",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={files.front_proxy_client.certificate}",
            f"--proxy-client-key-file={files.front_proxy_client.key}",
            "--allow-privileged=true",
            "--profiling=false",
            *kubelet_flags,
        ),
        port=ports.apiserver,
        health_url=f"{apiserver_url(ports)}/readyz",
        startup_timeout_seconds=120,
    )


def build_controller_manager(
    *,
    ports: Ports,
    files: pki.PkiFiles,
    kubeconfigs: ComponentKubeconfigs,
    bins: binaries_module.Binaries,
) -> ComponentSpec:
    kubeconfig = kubeconfigs.controller_manager
    return ComponentSpec(
        name="kube-controller-manager",
        command=(
            str(bins.path("kube-controller-manager")),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--leader-elect=false",
            "--controllers=*",
            # Each controller acts as its own ServiceAccount, so RBAC is what a real cluster
            # enforces (the ClusterRoles system:controller:* are bootstrapped by the apiserver).
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={files.service_account_key}",
            f"--root-ca-file={files.ca.certificate}",
            f"--cluster-signing-cert-file={files.ca.certificate}",
            f"--cluster-signing-key-file={files.ca.key}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            f"--cluster-cidr={POD_CIDR}",
            # kwok assigns pod IPs from its own --cidr; node IPAM would only fight over it.
            "--allocate-node-cidrs=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports.controller_manager}",
            f"--tls-cert-file={files.loopback_serving.certificate}",
            f"--tls-private-key-file={files.loopback_serving.key}",
            "--profiling=false",
        ),
        port=ports.controller_manager,
        health_url=f"https://127.0.0.1:{ports.controller_manager}/healthz",
        startup_timeout_seconds=60,
    )


def build_scheduler(
    *,
    ports: Ports,
    files: pki.PkiFiles,
    kubeconfigs: ComponentKubeconfigs,
    bins: binaries_module.Binaries,
) -> ComponentSpec:
    kubeconfig = kubeconfigs.scheduler
    return ComponentSpec(
        name="kube-scheduler",
        command=(
            str(bins.path("kube-scheduler")),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports.scheduler}",
            f"--tls-cert-file={files.loopback_serving.certificate}",
            f"--tls-private-key-file={files.loopback_serving.key}",
            "--profiling=false",
        ),
        port=ports.scheduler,
        health_url=f"https://127.0.0.1:{ports.scheduler}/healthz",
        startup_timeout_seconds=60,
    )


def build_kwok(
    *,
    ports: Ports,
    files: pki.PkiFiles,
    kubeconfigs: ComponentKubeconfigs,
    bins: binaries_module.Binaries,
    real: bool = False,
) -> ComponentSpec:
    # Beside a real node kwok must not manage every node: it would fake the real node's
    # pods (Running with an IP not on the bridge, though no container started).
    selection = (
        f"--manage-nodes-with-annotation-selector={real_node.KWOK_NODE_SELECTOR}"
        if real
        else "--manage-all-nodes=true"
    )
    return ComponentSpec(
        name="kwok",
        command=(
            str(bins.path("kwok")),
            f"--kubeconfig={kubeconfigs.kwok}",
            # kwok >= 0.8 has no built-in stages: without these it exits "no stages found".
            f"--config={bins.kwok_stages}",
            selection,
            f"--node-lease-duration-seconds={NODE_LEASE_DURATION_SECONDS}",
            f"--cidr={POD_CIDR}",
            # Without --server-address kwok serves on 0.0.0.0:<node-port>. Nodes advertise
            # 127.0.0.1:<port> as their kubelet, so `kubectl logs/exec` fail fast against kwok
            # instead of hanging on an unroutable address.
            f"--server-address=127.0.0.1:{ports.kwok}",
            "--node-ip=127.0.0.1",
            f"--node-port={ports.kwok}",
            f"--tls-cert-file={files.loopback_serving.certificate}",
            f"--tls-private-key-file={files.loopback_serving.key}",
        ),
        port=ports.kwok,
        health_url=f"https://127.0.0.1:{ports.kwok}/healthz",
        startup_timeout_seconds=60,
    )


def build_containerd(*, ports: Ports, layout: layout_module.ClusterLayout) -> ComponentSpec:
    node = real_node.NodeLayout(layout)
    return ComponentSpec(
        name="containerd",
        command=real_node.build_containerd(node),
        port=ports.containerd_metrics,
        health_url=f"http://127.0.0.1:{ports.containerd_metrics}/v1/metrics",
        startup_timeout_seconds=60,
        environment=tuple(sorted(real_node.proxy_environment().items())),
    )


def build_kubelet(
    *, ports: Ports, layout: layout_module.ClusterLayout, node_bin_dir: Path
) -> ComponentSpec:
    node = real_node.NodeLayout(layout)
    return ComponentSpec(
        name="kubelet",
        command=real_node.build_kubelet(node, kubelet_binary=node_bin_dir / "kubelet"),
        port=ports.kubelet,
        health_url=f"http://127.0.0.1:{ports.kubelet_healthz}/healthz",
        startup_timeout_seconds=90,
        environment=tuple(sorted(real_node.proxy_environment().items())),
    )


def build_kube_proxy(
    *, ports: Ports, layout: layout_module.ClusterLayout, node_bin_dir: Path
) -> ComponentSpec:
    node = real_node.NodeLayout(layout)
    return ComponentSpec(
        name="kube-proxy",
        command=real_node.build_kube_proxy(node, kube_proxy_binary=node_bin_dir / "kube-proxy"),
        port=ports.kube_proxy_healthz,
        # 200 once the first full sync of the Service rules is done.
        health_url=f"http://127.0.0.1:{ports.kube_proxy_healthz}/healthz",
        startup_timeout_seconds=60,
        environment=tuple(sorted(real_node.proxy_environment().items())),
    )


def real_node_ports(ports: Ports) -> real_node.NodePorts:
    return real_node.NodePorts(
        containerd_metrics=ports.containerd_metrics,
        kubelet=ports.kubelet,
        kubelet_healthz=ports.kubelet_healthz,
        kube_proxy_healthz=ports.kube_proxy_healthz,
        kube_proxy_metrics=ports.kube_proxy_metrics,
    )


def build_components(
    *,
    ports: Ports,
    layout: layout_module.ClusterLayout,
    bins: binaries_module.Binaries,
    node_bin_dir: Path | None = None,
) -> tuple[ComponentSpec, ...]:
    """Every component of the cluster, in the order they must start.

    ``node_bin_dir`` (kubelet, kube-proxy) adds a real node: containerd and the kubelet.
    """
    files = pki.PkiFiles(layout.pki_dir)
    kubeconfigs = kubeconfig_files(layout)
    real = node_bin_dir is not None
    control_plane = (
        build_etcd(ports=ports, layout=layout, bins=bins),
        build_apiserver(ports=ports, files=files, bins=bins, real=real),
        build_controller_manager(ports=ports, files=files, kubeconfigs=kubeconfigs, bins=bins),
        build_scheduler(ports=ports, files=files, kubeconfigs=kubeconfigs, bins=bins),
        build_kwok(ports=ports, files=files, kubeconfigs=kubeconfigs, bins=bins, real=real),
    )
    if node_bin_dir is None:
        return control_plane
    return (
        *control_plane,
        build_containerd(ports=ports, layout=layout),
        build_kubelet(ports=ports, layout=layout, node_bin_dir=node_bin_dir),
        build_kube_proxy(ports=ports, layout=layout, node_bin_dir=node_bin_dir),
    )
