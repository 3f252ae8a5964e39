"""The noise sidecar against the real apiserver and the real accountant.

A sample application (an HTTP server in this process, over a fixed synthetic dataset) sits
behind ``hush sidecar`` started as a host process with the command, args and env of the
sidecar container of a Pod that the operator's mutating webhook really produced (pods do not
run under kwok). Only what the host forces is swapped: the projected token path (a file
holding a real token bound to that pod), the CA path (the pod mounts it from a ConfigMap),
the listen host and ports. The accountant URL is the one the webhook baked in.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from http import server
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from hush.injection import sidecar as injection

import hush_resources
import operator_process
import spending
import waiting
import webhook_setup

# A fixed synthetic dataset: (age, income) of 500 people.
_GENERATOR = random.Random(20261122)  # noqa: S311 - synthetic data, not noise
PEOPLE = [(_GENERATOR.randint(0, 90), _GENERATOR.randint(0, 150_000)) for _ in range(500)]
AGE_BINS = {"0-17": (0, 17), "18-39": (18, 39), "40-64": (40, 64), "65+": (65, 200)}


def _answer(path: str) -> dict[str, Any] | None:
    if path == "/count":
        return {"count": len(PEOPLE)}
    if path == "/income":
        return {"sum": sum(min(income, 100_000) for _, income in PEOPLE), "unit": "EUR"}
    if path == "/ages":
        return {
            "histogram": {
                name: sum(1 for age, _ in PEOPLE if low <= age <= high)
                for name, (low, high) in AGE_BINS.items()
            }
        }
    return None


class _SampleApp(server.BaseHTTPRequestHandler):
    data_requests = 0  # requests for anything but /healthz, across the whole module

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path == "/healthz":
            body, status = b"ok", 200
        else:
            type(self).data_requests += 1
            answer = _answer(path)
            body = json.dumps(answer).encode() if answer else b"{}"
            status = 200 if answer else 404
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def _sample_app(
    handler: type[server.BaseHTTPRequestHandler] = _SampleApp,
) -> Iterator[int]:
    """Serve ``handler`` on a free loopback port (the pod's application container)."""
    httpd = server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def accountant(
    api_client: client.ApiClient, kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """The operator (accountant + webhooks) with its webhook configurations registered."""
    hush_resources.install_crds(api_client)
    directory = tmp_path_factory.mktemp("sidecar-operator")
    with webhook_setup.operator_with_webhooks(api_client, kubeconfig, directory) as running:
        yield {"url": running["accountant_url"], "cert": running["cert"]}


def _policy(name: str, budget: str, upstream_port: int) -> dict[str, Any]:
    return {
        "apiVersion": "hush.dev/v1alpha1",
        "kind": "DPPolicy",
        "metadata": {"name": name},
        "spec": {
            "budgetRef": {"name": budget, "team": "analytics"},
            "upstream": {"port": upstream_port},
            "passThrough": ["/healthz"],
            "routes": [
                {
                    "path": "/count",
                    "mechanism": "discreteLaplace",
                    "epsilon": 0.25,
                    "fields": [{"path": "$.count", "kind": "count"}],
                    "queryParameters": [{"name": "fresh"}],
                },
                {
                    "path": "/income",
                    "mechanism": "laplace",
                    "epsilon": 0.25,
                    "fields": [
                        {"path": "$.sum", "kind": "sum", "bounds": {"lower": 0, "upper": 100000}}
                    ],
                    "constants": [{"path": "$.unit", "value": "EUR"}],
                    "queryParameters": [{"name": "fresh"}],
                },
                {
                    "path": "/ages",
                    "mechanism": "discreteLaplace",
                    "epsilon": 0.25,
                    "minCohort": 5,
                    "fields": [{"path": "$.histogram.*", "kind": "histogram"}],
                    "domains": [{"path": "$.histogram.*", "keys": sorted(AGE_BINS)}],
                    "queryParameters": [{"name": "fresh"}],
                },
            ],
        },
    }


@contextlib.contextmanager
def _running_sidecar(container: dict[str, Any], log_path: Path) -> Iterator[dict[str, int]]:
    baked = json.loads(
        next(e["value"] for e in container["env"] if e["name"] == "HUSH_SIDECAR_CONFIG")
    )
    environment = {**os.environ}
    for variable in container["env"]:
        environment[variable["name"]] = variable["value"]
    command = [sys.executable, "-m", "hush", *container["command"][1:], *container["args"]]
    ports = {"listen": baked["listenPort"], "admin": baked["adminPort"]}
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment)

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"Sidecar exited:\n{log_path.read_text()[-4000:]}")
        return _get(f"http://127.0.0.1:{ports['admin']}/readyz")[0] == 200

    try:
        waiting.wait_for(ready, timeout=30, interval=0.2, description="the sidecar's /readyz")
        yield ports
    finally:
        operator_process.stop(process)
        print(f"Sidecar log ({log_path}):\n{log_path.read_text()[-6000:]}")


def _pod_bound_token(api_client: client.ApiClient, namespace: str, pod: dict[str, Any]) -> str:
    """A projected-style token for the pod's ServiceAccount, bound to the pod, for the
    accountant's audience: what the kubelet would mount into the sidecar."""
    request = client.CoreV1Api(api_client).create_namespaced_service_account_token(
        pod["spec"].get("serviceAccountName") or "default",
        namespace,
        client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(
                audiences=[injection.TOKEN_AUDIENCE],
                expiration_seconds=3600,
                bound_object_ref=client.V1BoundObjectReference(
                    kind="Pod",
                    api_version="v1",
                    name=pod["metadata"]["name"],
                    uid=pod["metadata"]["uid"],
                ),
            )
        ),
    )
    if request.status is None:
        raise AssertionError("the TokenRequest returned no token")
    return str(request.status.token)


def _host_container(
    api_client: client.ApiClient,
    namespace: str,
    policy: dict[str, Any],
    *,
    app_port: int,
    accountant_endpoint: dict[str, Any],
    token_path: Path,
    policy_check_interval: str | None = None,
) -> dict[str, Any]:
    """The sidecar container of a Pod that the mutating webhook really produced, with the
    only host substitutions: the token file (a real token bound to that pod), the CA file
    (the pod mounts it from a ConfigMap), the listen host and free ports (on this host the
    "pod network" is the host's)."""
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "app", "annotations": {"hush.dev/policy": "survey"}},
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": "registry.invalid/app@sha256:" + "a" * 64,
                    "ports": [{"name": "http", "containerPort": app_port}],
                }
            ]
        },
    }
    created = client.CoreV1Api(api_client).create_namespaced_pod(namespace, body)
    pod: dict[str, Any] = api_client.sanitize_for_serialization(created)
    (container,) = [
        c for c in pod["spec"].get("initContainers") or [] if c["name"] == injection.CONTAINER_NAME
    ]
    assert pod["metadata"]["annotations"]["hush.dev/policy-hash"] == policy["status"]["policyHash"]
    token_path.write_text(_pod_bound_token(api_client, namespace, pod))
    env = next(e for e in container["env"] if e["name"] == "HUSH_SIDECAR_CONFIG")
    baked = json.loads(env["value"])
    assert baked["accountantUrl"] == accountant_endpoint["url"]  # baked by the webhook
    baked.update(
        tokenPath=str(token_path),
        caPath=str(accountant_endpoint["cert"]),
        listenHost="127.0.0.1",
        listenPort=operator_process.free_port(),
        adminPort=operator_process.free_port(),
    )
    env["value"] = json.dumps(baked)
    if policy_check_interval is not None:  # only to keep the test short
        container["args"] = [
            *(a for a in container["args"] if not a.startswith("--policy-check-interval=")),
            f"--policy-check-interval={policy_check_interval}",
        ]
    return dict(container)


def _change_policy(api_client: client.ApiClient, namespace: str, policy: dict[str, Any]) -> None:
    """Lower the first route's epsilon and wait until the operator has hashed the change."""
    spec = dict(policy["spec"])
    spec["routes"] = [dict(route) for route in spec["routes"]]
    spec["routes"][0]["epsilon"] = 0.2
    hush_resources.patch_spec(api_client, namespace, "DPPolicy", "survey", spec)
    waiting.wait_for(
        lambda: (
            hush_resources.get(api_client, namespace, "DPPolicy", "survey")
            .get("status", {})
            .get("policyHash")
            not in (None, policy["status"]["policyHash"])
        ),
        timeout=60,
        interval=0.1,
        description="the new policy hash",
    )


def _get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as reply:  # noqa: S310 - http only
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()
    except OSError:
        return 0, {}, b""


def test_answers_are_noised_charged_labelled_cached_and_stop_when_stale(
    api_client: client.ApiClient,
    namespace: str,
    accountant: dict[str, Any],
    tmp_path: Path,
) -> None:
    with _sample_app() as app_port:
        hush_resources.create(
            api_client, namespace, spending.budget_manifest("survey", team_epsilon=1.0)
        )
        hush_resources.create(api_client, namespace, _policy("survey", "survey", app_port))
        policy = hush_resources.wait_for_condition(
            api_client, namespace, "DPPolicy", "survey", status="True", reason="Accepted"
        )
        policy_hash = policy["status"]["policyHash"]
        container = _host_container(
            api_client,
            namespace,
            policy,
            app_port=app_port,
            accountant_endpoint=accountant,
            token_path=tmp_path / "token",
            # Long enough that the charge below, not the poll, finds the policy stale.
            policy_check_interval="10m",
        )

        with _running_sidecar(container, tmp_path / "sidecar.log") as ports:
            base = f"http://127.0.0.1:{ports['listen']}"

            status, headers, body = _get(f"{base}/count")
            assert status == 200, body
            noisy = json.loads(body)["count"]
            assert isinstance(noisy, int)
            assert abs(noisy - len(PEOPLE)) < 200  # discrete Laplace, scale 4
            assert headers["X-DP-Epsilon"] == "0.25"
            assert headers["X-DP-Delta"] == "0"
            assert headers["X-DP-Mechanism"] == "discreteLaplace"
            assert headers["X-DP-Policy-Hash"] == policy_hash
            assert Decimal(headers["X-DP-Budget-Remaining"]) == Decimal("0.75")

            # Identical queries are free and identical (no averaging).
            for _ in range(3):
                again = _get(f"{base}/count")
                assert again[0] == 200
                assert again[2] == body
                assert again[1]["X-DP-Cache"] == "hit"

            status, headers, body = _get(f"{base}/income")
            assert status == 200, body
            assert json.loads(body)["unit"] == "EUR"
            assert isinstance(json.loads(body)["sum"], float)
            status, headers, body = _get(f"{base}/ages")
            assert status == 200, body
            assert set(json.loads(body)["histogram"]) == set(AGE_BINS)
            status, headers, body = _get(f"{base}/count?fresh=1")
            assert status == 200, body
            assert Decimal(headers["X-DP-Budget-Remaining"]) == 0

            # The budget is drained: the next new release is refused, without the answer.
            status, headers, body = _get(f"{base}/count?fresh=2")
            assert status == 429
            assert json.loads(body)["error"] == "budget-exhausted"
            assert _get(f"{base}/secret")[0] == 404
            assert _get(f"{base}/healthz")[:3:2] == (200, b"ok")

            ledger = spending.ledger(api_client, namespace, "survey")
            charged = [entry for entry in ledger.entries if entry.action == "charge"]
            assert len(charged) == 4  # one final charge per release, no reserve or commit
            assert {entry.consumer.policy for entry in charged} == {"survey"}
            assert sorted(entry.mechanism for entry in charged) == [
                "discreteLaplace",
                "discreteLaplace",
                "discreteLaplace",
                "laplace",
            ]
            assert {Decimal(entry.epsilon) for entry in charged} == {Decimal("0.25")}

            # A policy change makes this pod stale: the next charge is refused, so it stops
            # releasing and turns not-ready.
            _change_policy(api_client, namespace, policy)
            # The changed route itself: the accountant says "stale", not "wrong cost".
            status, _, body = _get(f"{base}/count?fresh=9")
            assert status == 503, body
            assert json.loads(body)["error"] == "stale-policy"
            status, _, body = _get(f"{base}/ages?fresh=3")
            assert status == 503, body
            assert json.loads(body)["error"] == "stale-policy"
            assert _get(f"http://127.0.0.1:{ports['admin']}/readyz")[0] == 503
            assert _get(f"{base}/count")[0] == 503  # even cached answers stop


def test_a_changed_policy_turns_the_sidecar_not_ready_within_its_poll_interval(
    api_client: client.ApiClient,
    namespace: str,
    accountant: dict[str, Any],
    tmp_path: Path,
) -> None:
    interval = 2.0
    with _sample_app() as app_port:
        hush_resources.create(
            api_client, namespace, spending.budget_manifest("survey", team_epsilon=1.0)
        )
        hush_resources.create(api_client, namespace, _policy("survey", "survey", app_port))
        policy = hush_resources.wait_for_condition(
            api_client, namespace, "DPPolicy", "survey", status="True", reason="Accepted"
        )
        container = _host_container(
            api_client,
            namespace,
            policy,
            app_port=app_port,
            accountant_endpoint=accountant,
            token_path=tmp_path / "token",
            policy_check_interval=f"{interval:g}s",
        )
        assert container["args"][-1] == "--policy-check-interval=2s"
        data_requests = _SampleApp.data_requests
        with _running_sidecar(container, tmp_path / "sidecar.log") as ports:
            readyz = f"http://127.0.0.1:{ports['admin']}/readyz"
            assert _get(readyz)[0] == 200
            _change_policy(api_client, namespace, policy)
            changed = time.monotonic()
            waiting.wait_for(
                lambda: _get(readyz)[0] == 503,
                timeout=interval + 5,  # one interval, plus the operator's watch event
                interval=0.1,
                description="the sidecar's /readyz to turn 503 after the policy changed",
            )
            noticed = time.monotonic() - changed
            print(f"The sidecar turned not-ready {noticed:.2f} s after the new policy hash")
            assert noticed <= interval + 2
            readiness = json.loads(_get(readyz)[2])
            assert readiness["status"] == "stale-policy"
            assert readiness["message"].startswith("Stale policy")
            # No request reached the sidecar, so nothing was charged or even asked for.
            assert _SampleApp.data_requests == data_requests
            budget = hush_resources.get(api_client, namespace, "PrivacyBudget", "survey")
            assert not ((budget.get("status") or {}).get("ledger") or {}).get("entries")
            status, _, body = _get(f"http://127.0.0.1:{ports['listen']}/count")
            assert status == 503, body
            assert json.loads(body)["error"] == "stale-policy"
            assert _SampleApp.data_requests == data_requests  # refused before the app


pytestmark = pytest.mark.timeout(180)
