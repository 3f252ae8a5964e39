"""The objects every dev cluster needs before it is useful: fake Nodes and the Hush CRDs.

kwok does not create Nodes, it only plays their lifecycle (Ready conditions, leases) and the
lifecycle of Pods bound to them. So ``hush dev up`` creates ``kwok-node-0..N-1`` itself:
untainted, with generous allocatable resources, marked the way kwok's docs mark fake nodes.
The node lifecycle controller (kube-controller-manager) then removes the ``not-ready`` taint
once kwok reports them Ready; only then will the scheduler place pods.

All API calls go through the cluster's own ``kubectl``: it is a component of the cluster
anyway, needs no Python client here, and its errors are the ones developers know. The
manifest builders are pure; the waits are bounded and call ``check_components`` on every
iteration, so a component that dies meanwhile is reported by name instead of as a timeout.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import yaml

from hush.dev import errors

logger = logging.getLogger(__name__)

Manifest = dict[str, Any]

NODE_NAME_PREFIX: Final = "kwok-node-"
FIELD_MANAGER: Final = "hush-dev"
_KUBECTL_TIMEOUT_SECONDS: Final = 60.0
_POLL_SECONDS: Final = 0.5


def node_names(count: int) -> list[str]:
    return [f"{NODE_NAME_PREFIX}{index}" for index in range(count)]


def build_node(name: str) -> Manifest:
    """A fake Node for kwok to manage, with room for any test workload."""
    resources = {"cpu": "32", "memory": "256Gi", "pods": "110"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {
                "kwok.x-k8s.io/node": "fake",
                "node.alpha.kubernetes.io/ttl": "0",
            },
            "labels": {
                "type": "kwok",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/role": "agent",
                "node-role.kubernetes.io/agent": "",
            },
        },
        "spec": {},
        "status": {
            "allocatable": resources,
            "capacity": resources,
            # kwok's node-initialize stage fills in the rest of nodeInfo when this exists.
            "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux"},
        },
    }


class Kubectl:
    """``kubectl`` bound to one kubeconfig, raising :class:`DevClusterError` on failure."""

    def __init__(self, executable: Path, kubeconfig: Path) -> None:
        self.executable = executable
        self.kubeconfig = kubeconfig

    def run(self, arguments: Sequence[str], *, stdin: str | None = None) -> str:
        command = [str(self.executable), f"--kubeconfig={self.kubeconfig}", *arguments]
        try:
            result = subprocess.run(
                command,
                input=stdin,
                capture_output=True,
                text=True,
                timeout=_KUBECTL_TIMEOUT_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise errors.DevClusterError(
                f"kubectl {' '.join(arguments)} did not finish in {_KUBECTL_TIMEOUT_SECONDS:.0f}s"
            ) from error
        if result.returncode != 0:
            raise errors.DevClusterError(
                f"kubectl {' '.join(arguments)} failed (exit {result.returncode}): "
                f"{result.stderr.strip()}"
            )
        return result.stdout

    def get_json(self, arguments: Sequence[str]) -> Manifest:
        document: Manifest = json.loads(self.run([*arguments, "--output=json"]))
        return document


def _wait(
    description: str,
    ready: Callable[[], str | None],
    *,
    timeout_seconds: float,
    check_components: Callable[[], None],
) -> None:
    """Poll ``ready`` (None means done, a string says what is missing) until the deadline."""
    started = time.monotonic()
    missing = "nothing checked yet"
    while time.monotonic() - started < timeout_seconds:
        check_components()
        outcome = ready()
        if outcome is None:
            logger.info("Waited %.1fs for %s", time.monotonic() - started, description)
            return
        missing = outcome
        time.sleep(_POLL_SECONDS)
    raise errors.DevClusterError(
        f"Timed out after {timeout_seconds:.0f}s waiting for {description}: {missing}"
    )


def _node_problem(node: Manifest | None, name: str) -> str | None:
    if node is None:
        return f"node {name} does not exist"
    conditions = node.get("status", {}).get("conditions", [])
    ready = next((c for c in conditions if c.get("type") == "Ready"), None)
    if ready is None or ready.get("status") != "True":
        return f"node {name} is not Ready (kwok has not initialised it)"
    taints = node.get("spec", {}).get("taints") or []
    if taints:
        keys = ", ".join(str(taint.get("key")) for taint in taints)
        return f"node {name} still has taints {keys} (kube-controller-manager removes them)"
    return None


def create_nodes(
    kubectl: Kubectl,
    count: int,
    *,
    timeout_seconds: float,
    check_components: Callable[[], None],
) -> None:
    """Create ``count`` fake Nodes and wait until they are Ready and untainted."""
    names = node_names(count)
    manifests = [build_node(name) for name in names]
    # `create` with the status included, as a kubelet registers itself: on later writes to
    # the main resource the apiserver ignores status (a subresource), so this is the one
    # chance to set allocatable without a second call.
    kubectl.run(["create", "--filename=-"], stdin=yaml.safe_dump_all(manifests))
    logger.info("Created nodes %s", ", ".join(names))

    def problem() -> str | None:
        listed = kubectl.get_json(["get", "nodes", "--selector=type=kwok"])
        by_name = {item["metadata"]["name"]: item for item in listed.get("items", [])}
        for name in names:
            issue = _node_problem(by_name.get(name), name)
            if issue:
                return issue
        return None

    _wait(
        f"{count} Ready nodes",
        problem,
        timeout_seconds=timeout_seconds,
        check_components=check_components,
    )


def wait_for_default_service_account(
    kubectl: Kubectl, *, timeout_seconds: float, check_components: Callable[[], None]
) -> None:
    """Wait until kube-controller-manager has created ``default/default``."""

    def problem() -> str | None:
        found = kubectl.run(
            ["get", "serviceaccounts", "--namespace=default", "--output=name"]
        ).split()
        return None if "serviceaccount/default" in found else "it does not exist yet"

    _wait(
        "the default ServiceAccount",
        problem,
        timeout_seconds=timeout_seconds,
        check_components=check_components,
    )


def install_crds(
    kubectl: Kubectl,
    manifests: Sequence[Manifest],
    *,
    timeout_seconds: float,
) -> None:
    """Server-side apply the CRDs (new or changed) and wait until each is Established."""
    if not manifests:
        return
    kubectl.run(
        [
            "apply",
            "--server-side",
            "--force-conflicts",
            f"--field-manager={FIELD_MANAGER}",
            "--filename=-",
        ],
        stdin=yaml.safe_dump_all(list(manifests)),
    )
    names = [f"customresourcedefinition/{manifest['metadata']['name']}" for manifest in manifests]
    kubectl.run(
        ["wait", "--for=condition=Established", f"--timeout={timeout_seconds:.0f}s", *names]
    )
    logger.info("Installed CRDs %s", ", ".join(m["metadata"]["name"] for m in manifests))
