"""The accountant Service follows the leader's pod label, on a real apiserver.

Two ``hush operator`` processes run with leader election, each told by ``POD_NAME`` that it
is one of two stand-in Pods (kwok "runs" them, so they get an IP and turn Ready, and the
EndpointSlice controller treats them like the chart's operator pods). A Service selects
them the way the chart's accountant Service does: the operator pods' labels plus
``hush.dev/accountant-leader=true``. The test checks what the Service resolves to: only the
leader's pod, a stale label left on another pod is removed, the label moves when the
leader is SIGKILLed (its process cannot clean up, so the new leader removes it), and a
clean stop removes it before the Lease is released.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from hush.accountant import leadership

import hush_resources
import operator_process
import waiting

LEASE = "hush-operator"
POD_LABELS = {
    "app.kubernetes.io/name": "hush",
    "app.kubernetes.io/instance": "e2e",
    "app.kubernetes.io/component": "operator",
}
PODS = ("hush-operator-a", "hush-operator-b")
SERVICE = "hush-accountant"
TAKEOVER_SECONDS = 30  # lease 8 s plus a 2 s look, on a busy machine


def _create_stand_in_pod(core: client.CoreV1Api, namespace: str, name: str) -> None:
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": name, "labels": POD_LABELS},
            "spec": {
                "containers": [{"name": "operator", "image": "registry.k8s.io/pause:3.10"}],
                "terminationGracePeriodSeconds": 1,
            },
        },
    )


def _ready_ip(core: client.CoreV1Api, namespace: str, name: str) -> str | None:
    pod = core.read_namespaced_pod(name, namespace)
    ready = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
    return str(pod.status.pod_ip) if ready and pod.status.pod_ip else None


def _labelled(core: client.CoreV1Api, namespace: str) -> list[str]:
    pods = core.list_namespaced_pod(namespace, label_selector=leadership.LEADER_LABEL_SELECTOR)
    return sorted(pod.metadata.name for pod in pods.items)


def _endpoints(discovery: client.DiscoveryV1Api, namespace: str) -> list[str]:
    """The ready pods behind the accountant Service, by name."""
    slices = discovery.list_namespaced_endpoint_slice(
        namespace, label_selector=f"kubernetes.io/service-name={SERVICE}"
    )
    return sorted(
        endpoint.target_ref.name
        for endpoint_slice in slices.items
        for endpoint in endpoint_slice.endpoints or []
        if endpoint.conditions.ready and endpoint.target_ref is not None
    )


def _holder(api_client: client.ApiClient, namespace: str) -> str:
    lease = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
        "coordination.k8s.io", "v1", namespace, "leases", LEASE
    )
    return leadership.holder_of(lease)


@pytest.fixture
def stand_in_pods(api_client: client.ApiClient, namespace: str) -> dict[str, str]:
    """Two Ready stand-in operator pods and the accountant Service; name -> pod IP."""
    hush_resources.install_crds(api_client)
    core = client.CoreV1Api(api_client)
    for name in PODS:
        _create_stand_in_pod(core, namespace, name)
    core.create_namespaced_service(
        namespace,
        {
            "metadata": {"name": SERVICE},
            "spec": {
                "selector": {**POD_LABELS, leadership.LEADER_LABEL: "true"},
                "ports": [{"name": "https", "port": 8443, "targetPort": 8443}],
            },
        },
    )
    return {
        name: waiting.wait_for(
            lambda name=name: _ready_ip(core, namespace, name),
            timeout=60,
            description=f"stand-in pod {name} to run (kwok) and be Ready",
        )
        for name in PODS
    }


class Operators:
    def __init__(self, kubeconfig: Path, namespace: str, directory: Path) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.directory = directory
        self.cert, self.key = operator_process.write_serving_certificate(directory)
        self.started = 0

    def run(self, pod: str) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
        self.started += 1
        return operator_process.running_operator(
            self.kubeconfig,
            self.directory / f"operator-{self.started}-{pod}.log",
            f"--accountant-port={operator_process.free_port()}",
            "--accountant-host=127.0.0.1",
            f"--accountant-tls-cert={self.cert}",
            f"--accountant-tls-key={self.key}",
            "--leader-election",
            f"--leader-election-name={LEASE}",
            # As in the chart: the Lease's namespace and the pod come from the downward API.
            environment={"POD_NAMESPACE": self.namespace, "POD_NAME": pod},
        )


@pytest.fixture
def operators(kubeconfig: Path, namespace: str, tmp_path: Path) -> Operators:
    return Operators(kubeconfig, namespace, tmp_path)


def _wait_for_leader(
    api_client: client.ApiClient, namespace: str, pod: str, *, timeout: float
) -> None:
    core = client.CoreV1Api(api_client)
    discovery = client.DiscoveryV1Api(api_client)

    def observed() -> dict[str, Any]:
        return {
            "labelled": _labelled(core, namespace),
            "endpoints": _endpoints(discovery, namespace),
        }

    waiting.wait_for(
        lambda: observed() == {"labelled": [pod], "endpoints": [pod]},
        timeout=timeout,
        interval=0.5,
        description=f"the accountant Service to route to {pod} alone",
        observe=observed,
    )


def test_the_accountant_service_follows_the_leader(
    api_client: client.ApiClient,
    namespace: str,
    stand_in_pods: dict[str, str],
    operators: Operators,
) -> None:
    core = client.CoreV1Api(api_client)
    first, second = PODS
    # A label left behind by an earlier leader of this pod that was killed.
    core.patch_namespaced_pod(
        second, namespace, {"metadata": {"labels": {leadership.LEADER_LABEL: "true"}}}
    )

    with contextlib.ExitStack() as stack:
        leader = stack.enter_context(operators.run(first))
        _wait_for_leader(api_client, namespace, first, timeout=30)
        standby = stack.enter_context(operators.run(second))
        # The standby runs its first label round at once and leaves the label off.
        waiting.wait_for(
            lambda: "Stood by" in (operators.directory / f"operator-2-{second}.log").read_text(),
            timeout=30,
            description="the second operator to stand by",
        )
        _wait_for_leader(api_client, namespace, first, timeout=5)

        # SIGKILL: no clean-up, so the dead leader's pod keeps its label until the new
        # leader removes it.
        leader.kill()
        killed_at = time.monotonic()
        leader.wait(timeout=10)
        assert _labelled(core, namespace) == [first]
        _wait_for_leader(api_client, namespace, second, timeout=TAKEOVER_SECONDS)
        timings = {"killed_leader_to_new_endpoint_seconds": time.monotonic() - killed_at}
        assert _holder(api_client, namespace).endswith(f"_{standby.pid}")

        # A clean stop: the label goes before the Lease is released, then the other
        # replica (restarted in pod `first`) takes over at its next look.
        restarted = stack.enter_context(operators.run(first))
        waiting.wait_for(
            lambda: "Stood by" in (operators.directory / f"operator-3-{first}.log").read_text(),
            timeout=30,
            description="the restarted operator to stand by",
        )
        stopped_at = time.monotonic()
        operator_process.stop(standby)
        assert _labelled(core, namespace) in ([], [first])
        log = (operators.directory / f"operator-2-{second}.log").read_text()
        removed = f"Removed label {leadership.LEADER_LABEL} from Pod {namespace}/{second}"
        assert log.rindex(removed) < log.index("Released Lease")
        _wait_for_leader(api_client, namespace, first, timeout=15)
        timings["clean_stop_to_new_endpoint_seconds"] = time.monotonic() - stopped_at
        assert _holder(api_client, namespace).endswith(f"_{restarted.pid}")
        print(json.dumps({key: round(value, 1) for key, value in timings.items()}))
