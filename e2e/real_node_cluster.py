"""The real-node cluster every real-node e2e module starts: up, kubectl, where an address goes.

Each real-node module (``test_real_node*.py``, ``test_real_pods.py``) brings up its own
``hush dev up --real-node --no-hush`` cluster in a module fixture (``up``), talks to it through
:class:`Cluster` and tears it down in its last test. They run only with ``HUSH_REAL_NODE=1``
(``make e2e-real-node``), which says this machine must be able to: a missing capability fails
the test instead of skipping it. ``route_device`` asks the kernel where a packet would go before
any test sends one (the network rule).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from hush.dev import binaries, cluster, network_guard

import devcluster


def name(purpose: str) -> str:
    """The cluster name of one module: the suite's cluster name and ``purpose``."""
    return f"{devcluster.DEFAULT_CLUSTER}-{purpose}"[:40]


def up(cluster_name: str, *, timeout: float) -> Path:
    """``hush dev up --real-node --no-hush``; the kubeconfig, or the test fails saying why."""
    from hush.dev import host_setup

    reason = host_setup.unavailable_reason()
    if reason is not None:
        # HUSH_REAL_NODE=1 says this machine must run it: a missing capability is a failure.
        pytest.fail(f"HUSH_REAL_NODE=1 but {reason}")
    result = devcluster.run_hush(
        "dev", "up", "--name", cluster_name, "--real-node", "--no-hush", timeout=timeout
    )
    if result.returncode != 0:
        pytest.fail(f"hush dev up --real-node failed (exit {result.returncode}):\n{result.stderr}")
    return Path(devcluster.last_line(result.stdout))


def down(cluster_name: str) -> subprocess.CompletedProcess[str]:
    return devcluster.run_hush("dev", "down", "--name", cluster_name, timeout=300)


def route_device(address: str, *selectors: str) -> str:
    """The interface the kernel would send a packet for ``address`` out of."""
    answer = network_guard.route_get(address, *selectors)
    return str(answer[0].get("dev", "")) if answer else ""


class Cluster:
    """One real-node cluster and its kubectl."""

    def __init__(self, cluster_name: str, kubeconfig: Path) -> None:
        self.name = cluster_name
        self.kubeconfig = kubeconfig
        bin_dir = cluster.bin_dir(name=cluster_name, environ=os.environ)
        assert bin_dir is not None
        self.kubectl_path = binaries.Binaries(bin_dir).kubectl

    def run_kubectl(
        self, *arguments: str, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.kubectl_path), f"--kubeconfig={self.kubeconfig}", *arguments],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def kubectl(self, *arguments: str, stdin: str | None = None, check: bool = True) -> str:
        """kubectl's output (stdout, then stderr); with ``check``, a failure fails the test."""
        result = self.run_kubectl(*arguments, stdin=stdin)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(arguments)}: {result.stderr}")
        return result.stdout + result.stderr

    def get(self, *arguments: str) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.kubectl("get", *arguments, "--output=json"))
        return document
