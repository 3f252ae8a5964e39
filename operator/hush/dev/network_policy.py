"""NetworkPolicies enforced on a real node: kube-router's firewall as a host process.

``hush dev up --real-node`` starts it once the node is Ready (docs/design/0020-real-nodes.md,
"Cluster DNS and NetworkPolicies"). This module owns its command line, its credentials (a
client certificate of its own, bound to a read-only ClusterRole), waiting until its chains
are in place, and removing what it leaves on the host: iptables chains and ipsets.

Why kube-router: this kernel has no ``NFT_QUEUE``, so enforcers that hand packets to user
space (kube-network-policies) cannot work; kube-router's firewall compiles policies into
iptables rules and ipsets, which this kernel has (``IP_SET``, ``NETFILTER_XT_SET``,
``NFT_COMPAT``; ``iptables`` is the nftables-backed one). Only the firewall runs:
``--run-router=false`` (no BGP, no routes) and ``--run-service-proxy=false`` (kube-proxy serves
Services). Pod-to-pod packets on the bridge reach iptables because
``net.bridge.bridge-nf-call-iptables`` is 1.

kube-router sends nothing beyond the apiserver on loopback; its health and metrics servers are
off (they would listen on every address). It does not remove its rules when it stops, so
:func:`cleanup` deletes its chains (``KUBE-ROUTER-*``, ``KUBE-NWPLCY-*``, ``KUBE-POD-FW-*``) and
the jumps to them, then its ipsets (which a rule may still reference until then). Builders are
pure (unit-tested); the rest runs ``iptables``, ``ipset`` and kube-router and needs root.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hush.dev import bootstrap, errors, kubeconfigs, network_guard, pki, processes, real_node
from hush.dev import layout as layout_module

logger = logging.getLogger(__name__)

COMPONENT: Final = "kube-router"
"""Its name for pid and log files; ``down`` stops it with the other clients of the apiserver."""
BINARY: Final = "kube-router"
USER: Final = "system:hush-kube-router"
"""The common name of its client certificate, bound to :data:`CLUSTER_ROLE`."""
CLUSTER_ROLE: Final = "system:hush-kube-router"
CHAIN_PREFIXES: Final = ("KUBE-ROUTER-", "KUBE-NWPLCY-", "KUBE-POD-FW-")
TOP_CHAINS: Final = ("KUBE-ROUTER-INPUT", "KUBE-ROUTER-FORWARD", "KUBE-ROUTER-OUTPUT")
"""The chains kube-router jumps to from INPUT, FORWARD and OUTPUT: present means enforcing."""
IPSET_PREFIXES: Final = ("KUBE-SRC-", "KUBE-DST-", "TMP-", "inet6:KUBE-")
SYNC_PERIOD: Final = "1m"
"""The full resync (policies are applied on every change anyway)."""
READY_TIMEOUT_SECONDS: Final = 60.0
_COMMAND_TIMEOUT_SECONDS: Final = 30.0


def kubeconfig_path(node: real_node.NodeLayout) -> Path:
    return node.directory / "kube-router.kubeconfig"


def client_pair(node: real_node.NodeLayout) -> pki.KeyPair:
    return pki.KeyPair(
        node.pki_dir / "kube-router-client.crt", node.pki_dir / "kube-router-client.key"
    )


def command(bin_dir: Path, *, kubeconfig: Path) -> list[str]:
    """kube-router with only its NetworkPolicy firewall, IPv4, nothing listening."""
    return [
        str(bin_dir / BINARY),
        f"--kubeconfig={kubeconfig}",
        f"--hostname-override={real_node.NODE_NAME}",
        "--run-firewall=true",
        "--run-router=false",
        "--run-service-proxy=false",
        "--run-loadbalancer=false",
        "--enable-ipv4=true",
        "--enable-ipv6=false",
        # Traffic to Service addresses is kube-proxy's; kube-router must know the range.
        f"--service-cluster-ip-range={network_guard.SERVICE_RANGE}",
        f"--iptables-sync-period={SYNC_PERIOD}",
        # Both would listen on every address: off (readiness is read from iptables).
        "--health-port=0",
        "--metrics-port=0",
        "--v=1",
    ]


def rbac_manifests() -> list[dict[str, Any]]:
    """The read-only ClusterRole kube-router's firewall needs, bound to :data:`USER`."""
    read = ["get", "list", "watch"]
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": CLUSTER_ROLE},
            # Its informers watch these even with only the firewall on.
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["namespaces", "pods", "services", "nodes", "endpoints"],
                    "verbs": read,
                },
                {
                    "apiGroups": ["networking.k8s.io"],
                    "resources": ["networkpolicies"],
                    "verbs": read,
                },
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": read},
                {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": CLUSTER_ROLE},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": CLUSTER_ROLE,
            },
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER}],
        },
    ]


def _load_authority(files: pki.PkiFiles) -> pki.CertificateAuthority:
    certificate = x509.load_pem_x509_certificate(files.ca.certificate.read_bytes())
    key = serialization.load_pem_private_key(files.ca.key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise errors.DevClusterError(f"{files.ca.key} is not the ECDSA key hush dev writes")
    return pki.CertificateAuthority(certificate=certificate, key=key)


def write_credentials(
    node: real_node.NodeLayout,
    *,
    cluster_pki: pki.PkiFiles,
    apiserver_url: str,
    now: datetime.datetime,
) -> Path:
    """Its client certificate and kubeconfig (the loopback apiserver URL); returns the path."""
    certificate, key = pki.issue_certificate(
        _load_authority(cluster_pki), common_name=USER, usage="client", now=now
    )
    pair = client_pair(node)
    pair.certificate.parent.mkdir(parents=True, exist_ok=True)
    pair.certificate.write_bytes(pki.certificate_pem(certificate))
    # Created 0600 before any byte of the key is written.
    descriptor = os.open(pair.key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(pki.private_key_pem(key))
    path = kubeconfig_path(node)
    kubeconfigs.write_kubeconfig(
        path,
        kubeconfigs.build_kubeconfig(
            cluster_name=node.cluster.name,
            server=apiserver_url,
            user=USER,
            ca_certificate=cluster_pki.ca.certificate.read_bytes(),
            client_certificate=pair.certificate.read_bytes(),
            client_key=pair.key.read_bytes(),
        ),
    )
    return path


# -- iptables and ipsets ----------------------------------------------------------------------


def _run(arguments: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(arguments),
        capture_output=True,
        text=True,
        check=False,
        timeout=_COMMAND_TIMEOUT_SECONDS,
    )


def is_ours(name: str) -> bool:
    """A chain kube-router's firewall made."""
    return name.startswith(CHAIN_PREFIXES)


def parse_chains(saved: str) -> list[str]:
    """Chain names declared in ``iptables-save`` output of one table (``:NAME POLICY ...``)."""
    return [line[1:].split()[0] for line in saved.splitlines() if line.startswith(":")]


def jumps_to_ours(saved: str) -> list[list[str]]:
    """``iptables -D`` arguments for each rule of a built-in or foreign chain that jumps to
    one of ours (in ``iptables-save`` output)."""
    deletions: list[list[str]] = []
    for line in saved.splitlines():
        if not line.startswith("-A "):
            continue
        words = line.split()
        chain = words[1]
        target = next((words[i + 1] for i, w in enumerate(words[:-1]) if w in ("-j", "-g")), "")
        if is_ours(target) and not is_ours(chain):
            deletions.append(["-D", chain, *_unquote(words[2:])])
    return deletions


def _unquote(words: Sequence[str]) -> list[str]:
    """Re-join ``iptables-save``'s quoted comment into one argument."""
    joined: list[str] = []
    quoted: list[str] | None = None
    for word in words:
        if quoted is not None:
            quoted.append(word)
            if word.endswith('"'):
                joined.append(" ".join(quoted)[1:-1])
                quoted = None
        elif word.startswith('"') and not (word.endswith('"') and len(word) > 1):
            quoted = [word]
        else:
            joined.append(word[1:-1] if word.startswith('"') and word.endswith('"') else word)
    return joined


def parse_ipsets(listed: str) -> list[str]:
    """Set names from ``ipset list -name``, only kube-router's."""
    return [name for name in listed.split() if name.startswith(IPSET_PREFIXES)]


def _saved_filter() -> str:
    result = _run(["iptables-save", "-t", "filter"])
    return result.stdout if result.returncode == 0 else ""


def remaining() -> list[str]:
    """What of kube-router is still on the host (for ``down``'s check and the tests)."""
    found = [f"iptables chain filter {c}" for c in parse_chains(_saved_filter()) if is_ours(c)]
    listed = _run(["ipset", "list", "-name"])
    if listed.returncode == 0:
        found += [f"ipset {name}" for name in parse_ipsets(listed.stdout)]
    return found


def cleanup() -> list[str]:
    """Delete kube-router's chains (jumps first, then flush, then delete) and ipsets; returns
    what could not be removed."""
    problems: list[str] = []
    saved = _saved_filter()
    for deletion in jumps_to_ours(saved):
        result = _run(["iptables", "-w", "-t", "filter", *deletion])
        if result.returncode != 0:
            problems.append(f"iptables {' '.join(deletion)}: {result.stderr.strip()}")
    chains = [chain for chain in parse_chains(saved) if is_ours(chain)]
    for verb in ("-F", "-X"):  # flush all first: they jump to each other
        for chain in chains:
            result = _run(["iptables", "-w", "-t", "filter", verb, chain])
            if result.returncode != 0 and verb == "-X":
                problems.append(f"iptables -X {chain}: {result.stderr.strip()}")
    listed = _run(["ipset", "list", "-name"])
    if listed.returncode == 0:
        for name in parse_ipsets(listed.stdout):
            result = _run(["ipset", "destroy", name])
            if result.returncode != 0:
                problems.append(f"ipset destroy {name}: {result.stderr.strip()}")
    if chains:
        logger.info("Removed kube-router's %d chains", len(chains))
    return problems


# -- starting ---------------------------------------------------------------------------------


def problem(cluster: layout_module.ClusterLayout) -> str | None:
    """Why the firewall of a running real-node cluster is not enforcing (None when it is):
    ``up`` then recreates the cluster rather than reuse one without NetworkPolicies."""
    record = processes.read_pid_file(cluster.pid_file(COMPONENT))
    if record is None or not processes.is_alive(record):
        tail = processes.log_tail(cluster.log_file(COMPONENT), lines=10)
        return f"{COMPONENT} is not running (its log ends:\n{tail})"
    if not enforcing():
        return f"{COMPONENT} runs but its chains are missing from the filter table"
    return None


def enforcing() -> bool:
    """kube-router's top chains exist and FORWARD jumps to its forward chain."""
    saved = _saved_filter()
    chains = set(parse_chains(saved))
    return set(TOP_CHAINS) <= chains and any(
        line.startswith("-A FORWARD ") and "KUBE-ROUTER-FORWARD" in line
        for line in saved.splitlines()
    )


def start(
    cluster: layout_module.ClusterLayout,
    kubectl: bootstrap.Kubectl,
    *,
    services_bin: Path,
    apiserver_url: str,
    now: datetime.datetime,
    check_components: Callable[[], None],
) -> processes.StartedProcess:
    """Credentials and RBAC, then kube-router, then wait until its chains are in place."""
    node = real_node.NodeLayout(cluster)
    kubectl.run(
        ["apply", "--filename=-"],
        stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": rbac_manifests()}),
    )
    kubeconfig = write_credentials(
        node,
        cluster_pki=pki.PkiFiles(cluster.pki_dir),
        apiserver_url=apiserver_url,
        now=now,
    )
    started = processes.start(
        command(services_bin, kubeconfig=kubeconfig),
        log_file=cluster.log_file(COMPONENT),
        pid_file=cluster.pid_file(COMPONENT),
        env=real_node.proxy_environment(),
    )
    logger.info(
        "Started %s (pid %d, log %s)",
        COMPONENT,
        started.record.pid,
        cluster.log_file(COMPONENT),
    )
    began = time.monotonic()
    while time.monotonic() - began < READY_TIMEOUT_SECONDS:
        check_components()
        code = started.exit_code()
        if code is not None:
            tail = processes.log_tail(cluster.log_file(COMPONENT), lines=20)
            raise errors.DevClusterError(f"{COMPONENT} exited with code {code}:\n{tail}")
        if enforcing():
            logger.info("Waited %.1fs for kube-router's firewall", time.monotonic() - began)
            return started
        time.sleep(0.5)
    tail = processes.log_tail(cluster.log_file(COMPONENT), lines=20)
    raise errors.DevClusterError(
        f"{COMPONENT} had not installed its chains after {READY_TIMEOUT_SECONDS:.0f}s:\n{tail}"
    )
