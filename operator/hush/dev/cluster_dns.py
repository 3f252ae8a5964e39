"""The cluster's DNS on a real node: CoreDNS as a pod, answering only for the cluster.

``hush dev up --real-node`` deploys it once the node is Ready (docs/design/0020-real-nodes.md,
"Cluster DNS and NetworkPolicies"). This module owns CoreDNS's image, its Corefile and the
objects in ``kube-system`` (ServiceAccount, ClusterRole and binding, ConfigMap, Deployment and
the ``kube-dns`` Service at the kubelet's ``clusterDNS`` address), and finding the binaries of
the node's services (CoreDNS and kube-router, built together by
``hack/controlplane/build-node-services.sh``).

The network rule decides the Corefile: CoreDNS has **no upstream**. Its only server block is
for the cluster's zones, so a name of any other zone gets REFUSED from CoreDNS itself and no
query leaves the pod network; and the binary is built without the ``forward`` plugin
(``hack/controlplane/coredns/main.go``), so no Corefile could add one.

The image holds one file, the static ``coredns`` binary, made by :mod:`hush.dev.oci_image` and
imported with ``ctr`` (``imagePullPolicy: Never``). CoreDNS listens on an unprivileged port
(:data:`DNS_PORT`) as a non-root user without capabilities; the Service maps port 53 to it.
Builders are pure (unit-tested); :func:`deploy` and :func:`locate_services` run things.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from hush.dev import binaries, bootstrap, errors, oci_image, real_node

logger = logging.getLogger(__name__)

NAMESPACE: Final = "kube-system"
NAME: Final = "coredns"
SERVICE_NAME: Final = "kube-dns"
APP_LABEL: Final = {"k8s-app": "kube-dns"}
SERVICE_IP: Final = real_node.CLUSTER_DNS
"""The kubelet's ``clusterDNS``: every pod's resolv.conf names this address."""
DNS_PORT: Final = 1053
"""CoreDNS's port in its pod: above 1024, so it needs neither root nor NET_BIND_SERVICE."""
HEALTH_PORT: Final = 8080
READY_PORT: Final = 8181
RUN_AS_USER: Final = 65532
ZONES: Final = (real_node.CLUSTER_DOMAIN, "in-addr.arpa", "ip6.arpa")
"""What CoreDNS is authoritative for: the cluster domain and reverse lookups of its
addresses. Nothing else is served: any other name is REFUSED."""
BINARY: Final = "coredns"
ROLLOUT_TIMEOUT_SECONDS: Final = 120.0
SERVICES_SCRIPT: Final = "build-node-services.sh"
SERVICES_BINARIES: Final = ("coredns", "kube-router")
_BUILD_TIMEOUT_SECONDS: Final = 3600.0


# -- the binaries -----------------------------------------------------------------------------


def _services_script() -> Path:
    return binaries.repository_root() / "hack" / "controlplane" / SERVICES_SCRIPT


def locate_services(environ: Mapping[str, str]) -> Path:
    """The directory holding ``coredns`` and ``kube-router``, built first if needed
    (``HUSH_NODE_SERVICES_BIN`` names a prepared directory instead)."""
    configured = environ.get("HUSH_NODE_SERVICES_BIN")
    script = _services_script()
    if configured:
        bin_dir = Path(configured).expanduser()
    else:
        logger.info("Started %s (a cold build takes about 10 minutes)", script)
        # stderr (inherited) carries the build's progress to the user; the last line of
        # stdout is the bin directory.
        result = subprocess.run(
            ["bash", str(script)],
            stdout=subprocess.PIPE,
            stderr=None,
            text=True,
            check=False,
            timeout=_BUILD_TIMEOUT_SECONDS,
        )
        lines = result.stdout.strip().splitlines()
        if result.returncode != 0 or not lines:
            raise errors.DevClusterError(
                f"Building CoreDNS and kube-router failed (exit {result.returncode}); its "
                f"output is above. Re-run `bash {script}` to retry"
            )
        bin_dir = Path(lines[-1])
    missing = [name for name in SERVICES_BINARIES if not os.access(bin_dir / name, os.X_OK)]
    if missing:
        source = "HUSH_NODE_SERVICES_BIN" if configured else str(script)
        raise errors.DevClusterError(
            f"Missing from {bin_dir}: {', '.join(missing)} (the directory came from {source})"
        )
    return bin_dir.resolve()


def services_version(bin_dir: Path, tool: str) -> str:
    """The module version the build script recorded for ``tool`` (``versions.txt``)."""
    try:
        lines = (bin_dir / "versions.txt").read_text().splitlines()
    except FileNotFoundError:
        return "unknown"
    for line in lines:
        name, _, version = line.partition(" ")
        if name == tool and version:
            return version
    return "unknown"


# -- the image --------------------------------------------------------------------------------


def coredns_layer(binary: bytes) -> bytes:
    """A root file system of one file: the static ``/coredns``."""
    return oci_image.layer_tar([oci_image.LayerEntry(BINARY, binary, mode=0o755)])


def coredns_image(binary: bytes, *, version: str) -> oci_image.Image:
    """CoreDNS's image; the tag carries the module version and the layer's digest, so a
    rebuilt binary is a new image and an unchanged one is not imported again."""
    layer = coredns_layer(binary)
    short = hashlib.sha256(layer).hexdigest()[:12]
    return oci_image.build_image(
        repository=NAME,
        tag=f"{version.lstrip('v').replace('+', '_')}-{short}",
        layer=layer,
        command=("/coredns",),
        user=str(RUN_AS_USER),
    )


# -- the objects ------------------------------------------------------------------------------


def corefile() -> str:
    """The Corefile: the cluster's zones only, and no ``forward`` (no upstream, ever)."""
    zones = " ".join(f"{zone}:{DNS_PORT}" for zone in ZONES)
    return (
        f"{zones} {{\n"
        "    errors\n"
        "    log\n"
        f"    health :{HEALTH_PORT}\n"
        f"    ready :{READY_PORT}\n"
        f"    kubernetes {' '.join(ZONES)} {{\n"
        "        pods insecure\n"
        "        ttl 30\n"
        "    }\n"
        "    cache 30\n"
        "    loop\n"
        "    reload\n"
        "}\n"
    )


def _metadata(name: str, *, namespaced: bool = True) -> dict[str, Any]:
    labels = {**APP_LABEL, "app.kubernetes.io/managed-by": "hush-dev"}
    metadata: dict[str, Any] = {"name": name, "labels": labels}
    if namespaced:
        metadata["namespace"] = NAMESPACE
    return metadata


def manifests(image: str) -> list[dict[str, Any]]:
    """Every object of the cluster DNS, in the order they are applied."""
    role_name = "system:hush-coredns"
    probe = {"periodSeconds": 2, "timeoutSeconds": 2, "failureThreshold": 5}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _metadata(NAME)},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": _metadata(role_name, namespaced=False),
            # What CoreDNS's kubernetes plugin watches, read-only.
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["endpoints", "services", "pods", "namespaces"],
                    "verbs": ["list", "watch"],
                },
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["list", "watch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": _metadata(role_name, namespaced=False),
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": role_name,
            },
            "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}],
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _metadata(NAME),
            "data": {"Corefile": corefile()},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": _metadata(NAME),
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": APP_LABEL},
                "template": {
                    "metadata": {"labels": APP_LABEL},
                    "spec": {
                        "serviceAccountName": NAME,
                        "priorityClassName": "system-cluster-critical",
                        "nodeSelector": real_node.NODE_LABELS,
                        # The node's resolv.conf (only our Service address); CoreDNS reads
                        # it for nothing, since it has no forwarder.
                        "dnsPolicy": "Default",
                        "terminationGracePeriodSeconds": 1,
                        "securityContext": {
                            "runAsNonRoot": True,
                            "runAsUser": RUN_AS_USER,
                            "runAsGroup": RUN_AS_USER,
                        },
                        "containers": [
                            {
                                "name": NAME,
                                "image": image,
                                "imagePullPolicy": "Never",
                                # The image's Cmd is only the binary; args would replace it.
                                "command": ["/coredns", "-conf", "/etc/coredns/Corefile"],
                                "ports": [
                                    {"name": "dns", "containerPort": DNS_PORT, "protocol": "UDP"},
                                    {
                                        "name": "dns-tcp",
                                        "containerPort": DNS_PORT,
                                        "protocol": "TCP",
                                    },
                                ],
                                "securityContext": {
                                    "allowPrivilegeEscalation": False,
                                    "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]},
                                },
                                "resources": {
                                    "requests": {"cpu": "10m", "memory": "32Mi"},
                                    "limits": {"memory": "170Mi"},
                                },
                                "livenessProbe": {
                                    "httpGet": {"path": "/health", "port": HEALTH_PORT},
                                    **probe,
                                },
                                "readinessProbe": {
                                    "httpGet": {"path": "/ready", "port": READY_PORT},
                                    **probe,
                                },
                                "volumeMounts": [
                                    {
                                        "name": "config",
                                        "mountPath": "/etc/coredns",
                                        "readOnly": True,
                                    }
                                ],
                            }
                        ],
                        "volumes": [{"name": "config", "configMap": {"name": NAME}}],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _metadata(SERVICE_NAME),
            "spec": {
                "clusterIP": SERVICE_IP,
                "selector": APP_LABEL,
                "ports": [
                    {"name": "dns", "port": 53, "targetPort": DNS_PORT, "protocol": "UDP"},
                    {"name": "dns-tcp", "port": 53, "targetPort": DNS_PORT, "protocol": "TCP"},
                ],
            },
        },
    ]


def _ready_endpoints(kubectl: bootstrap.Kubectl) -> int:
    slices = kubectl.get_json(
        [
            "get",
            "endpointslices",
            f"--namespace={NAMESPACE}",
            f"--selector=kubernetes.io/service-name={SERVICE_NAME}",
        ]
    )
    return sum(
        1
        for item in slices.get("items", [])
        for endpoint in item.get("endpoints") or []
        if (endpoint.get("conditions") or {}).get("ready")
    )


def deploy(
    node: real_node.NodeLayout,
    kubectl: bootstrap.Kubectl,
    *,
    services_bin: Path,
    check_components: Callable[[], None],
    timeout_seconds: float = ROLLOUT_TIMEOUT_SECONDS,
) -> oci_image.Image:
    """Import CoreDNS's image, apply its objects and wait until ``kube-dns`` has a ready
    endpoint; returns the image."""
    binary = (services_bin / BINARY).read_bytes()
    image = coredns_image(binary, version=services_version(services_bin, BINARY))
    real_node.import_images(node, (image,))
    documents = {"apiVersion": "v1", "kind": "List", "items": manifests(image.reference)}
    kubectl.run(["apply", "--filename=-"], stdin=json.dumps(documents))
    began = time.monotonic()
    while time.monotonic() - began < timeout_seconds:
        check_components()
        if _ready_endpoints(kubectl) > 0:
            logger.info(
                "Waited %.1fs for CoreDNS (%s) behind %s",
                time.monotonic() - began,
                image.reference,
                SERVICE_IP,
            )
            return image
        time.sleep(1.0)
    selector = f"--selector=k8s-app={APP_LABEL['k8s-app']}"
    pods = kubectl.run(["get", "pods", f"--namespace={NAMESPACE}", selector])
    try:  # why it is not ready: its own log (of the last crash if it restarts)
        log = kubectl.run(["logs", f"--namespace={NAMESPACE}", selector, "--tail=20"])
    except errors.DevClusterError as error:
        log = str(error)
    raise errors.DevClusterError(
        f"CoreDNS had no ready endpoint after {timeout_seconds:.0f}s:\n{pods}\n{log}"
    )
