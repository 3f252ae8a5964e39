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
    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path == "/healthz":
            body, status = b"ok", 200
        else:
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
        token = spending.pod_bound_token(api_client, namespace, "survey")
        token_path = tmp_path / "token"
        token_path.write_text(token)

        container = injection.build_sidecar_container(
            policy_name="survey",
            policy_spec=policy["spec"],
            policy_hash=policy_hash,
            image="registry.invalid/hush:dev",
            accountant_url="https://hush-accountant.invalid:8443",
            upstream_port=app_port,
            listen_port=operator_process.free_port(),
            admin_port=operator_process.free_port(),
        )
        # The only host substitutions: token file, accountant URL and CA.
        env = container["env"][0]
        baked = json.loads(env["value"])
        baked.update(
            tokenPath=str(token_path),
            accountantUrl=accountant["url"],
            caPath=str(accountant["cert"]),
            listenHost="127.0.0.1",
        )
        env["value"] = json.dumps(baked)

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

            # A policy change makes this pod stale: it stops releasing and turns not-ready.
            spec = dict(policy["spec"])
            spec["routes"] = [dict(route) for route in spec["routes"]]
            spec["routes"][0]["epsilon"] = 0.2
            hush_resources.patch_spec(api_client, namespace, "DPPolicy", "survey", spec)
            waiting.wait_for(
                lambda: (
                    hush_resources.get(api_client, namespace, "DPPolicy", "survey")
                    .get("status", {})
                    .get("policyHash")
                    not in (None, policy_hash)
                ),
                timeout=60,
                description="the new policy hash",
            )
            status, _, body = _get(f"{base}/ages?fresh=3")
            assert status == 503, body
            assert json.loads(body)["error"] == "stale-policy"
            assert _get(f"http://127.0.0.1:{ports['admin']}/readyz")[0] == 503
            assert _get(f"{base}/count")[0] == 503  # even cached answers stop


pytestmark = pytest.mark.timeout(180)
