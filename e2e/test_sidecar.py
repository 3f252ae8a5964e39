"""The noise sidecar against the real apiserver and the real accountant.

A sample application (an HTTP server in this process, over a fixed synthetic dataset) sits
behind ``hush sidecar`` started as a host process with the command, args and env of the
container that ``build_sidecar_container`` produces (pods do not run under kwok; once the
admission webhook lands, take them from the Pod it really mutated). Only two things are
swapped for the host: the projected token path (a file holding a real pod-bound token) and
the accountant URL and CA (the host-process operator's).
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
from test_accountant import accountant  # noqa: F401 - the module-scoped operator fixture

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
def _sample_app() -> Iterator[int]:
    httpd = server.ThreadingHTTPServer(("127.0.0.1", 0), _SampleApp)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


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
                },
                {
                    "path": "/income",
                    "mechanism": "laplace",
                    "epsilon": 0.25,
                    "fields": [
                        {"path": "$.sum", "kind": "sum", "bounds": {"lower": 0, "upper": 100000}}
                    ],
                },
                {
                    "path": "/ages",
                    "mechanism": "discreteLaplace",
                    "epsilon": 0.25,
                    "minCohort": 5,
                    "fields": [{"path": "$.histogram.*", "kind": "histogram"}],
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


def _host_container(
    api_client: client.ApiClient,
    namespace: str,
    policy: dict[str, Any],
    *,
    app_port: int,
    accountant_endpoint: dict[str, Any],
    token_path: Path,
    **injection_options: Any,
) -> dict[str, Any]:
    """The container the injector builds for ``policy``, with the only host substitutions:
    the token file (a real pod-bound token), the accountant's URL and CA, the listen host."""
    token_path.write_text(spending.pod_bound_token(api_client, namespace, "survey"))
    container = injection.build_sidecar_container(
        policy_name="survey",
        policy_spec=policy["spec"],
        policy_hash=policy["status"]["policyHash"],
        image="registry.invalid/hush:dev",
        accountant_url="https://hush-accountant.invalid:8443",
        upstream_port=app_port,
        listen_port=operator_process.free_port(),
        admin_port=operator_process.free_port(),
        **injection_options,
    )
    env = container["env"][0]
    baked = json.loads(env["value"])
    baked.update(
        tokenPath=str(token_path),
        accountantUrl=accountant_endpoint["url"],
        caPath=str(accountant_endpoint["cert"]),
        listenHost="127.0.0.1",
    )
    env["value"] = json.dumps(baked)
    return container


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
    accountant: dict[str, Any],  # noqa: F811
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
            reserved = [entry for entry in ledger.entries if entry.action == "reserve"]
            committed = {entry.request_id for entry in ledger.entries if entry.action == "commit"}
            assert len(reserved) == 4
            assert committed == {entry.request_id for entry in reserved}
            assert {entry.consumer.policy for entry in reserved} == {"survey"}
            assert sorted(entry.mechanism for entry in reserved) == [
                "discreteLaplace",
                "discreteLaplace",
                "discreteLaplace",
                "laplace",
            ]
            assert {Decimal(entry.epsilon) for entry in reserved} == {Decimal("0.25")}

            # A policy change makes this pod stale: the next charge is refused, so it stops
            # releasing and turns not-ready.
            _change_policy(api_client, namespace, policy)
            status, _, body = _get(f"{base}/ages?fresh=3")
            assert status == 503, body
            assert json.loads(body)["error"] == "stale-policy"
            assert _get(f"http://127.0.0.1:{ports['admin']}/readyz")[0] == 503
            assert _get(f"{base}/count")[0] == 503  # even cached answers stop


def test_a_changed_policy_turns_the_sidecar_not_ready_within_its_poll_interval(
    api_client: client.ApiClient,
    namespace: str,
    accountant: dict[str, Any],  # noqa: F811
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
