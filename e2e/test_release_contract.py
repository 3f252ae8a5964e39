"""The release contract through a real sidecar: the findings of issue 14 that a client sees.

Same set-up as ``test_sidecar.py`` (whose fixtures and helpers this module uses): the real
apiserver, the operator's accountant and webhooks, a Pod that the mutating webhook really
injected, and its ``hush-sidecar`` container started as a host process in front of a sample
application in this process. The application here is scripted per path, so that each test
can make it answer what the finding needs and count how often it was called.

One test per finding observable through the sidecar (issue 14):
1. an undeclared field is withheld;
2. an empty selection is charged and released in the declared shape;
3. an exhausted budget answers 429 without calling the application; an application error or
   an answer that is not JSON is one generic, charged 502;
6. the shape is the policy's (extra keys dropped, missing ones imputed);
8. two clients never share a cached answer; undeclared query parameters are refused before
   anything is charged;
9. pass-through is for health checks only; the accountant prices the route itself and
   refuses a charge that carries a cost.
(Findings 4 and 5 are the budget's, tested at the apiserver and in the accounting unit
tests; finding 7, timing under concurrency, is tested in process, where the sampler can be
made slow: ``tests/unit/test_sidecar_proxy.py``.)
"""

from __future__ import annotations

import collections
import contextlib
import json
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from http import server
from pathlib import Path
from typing import Any, ClassVar

import pytest
from kubernetes import client

from hush.api import dppolicy
from hush.privacy import route_cost
from test_sidecar import (  # the module's fixture and helpers: one set-up for both files
    _host_container,
    _running_sidecar,
    _sample_app,
    accountant,
)

import hush_resources
import operator_process
import spending

__all__ = ["accountant"]  # a fixture: imported to be used, not re-exported

SECRET_NUMBERS = ("987654", "31337", "424242")


class _ScriptedApp(server.BaseHTTPRequestHandler):
    """Answers each path with what the test scripted, and counts the calls."""

    answers: ClassVar[dict[str, tuple[int, bytes]]] = {}
    calls: ClassVar[collections.Counter[str]] = collections.Counter()
    authorizations: ClassVar[list[str]] = []
    lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def script(cls, answers: dict[str, tuple[int, Any]]) -> None:
        with cls.lock:
            cls.answers = {
                path: (status, body if isinstance(body, bytes) else json.dumps(body).encode())
                for path, (status, body) in answers.items()
            }
            cls.calls.clear()
            cls.authorizations.clear()

    def _answer(self, send_body: bool) -> None:
        path = self.path.split("?")[0]
        with self.lock:
            type(self).calls[path] += 1
            type(self).authorizations.append(self.headers.get("Authorization", ""))
            status, body = self.answers.get(path, (404, b'{"error": "no such path 31337"}'))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Secret", "31337")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def do_POST(self) -> None:
        self._answer(send_body=True)

    def log_message(self, format: str, *args: Any) -> None:
        pass


ROUTES: list[dict[str, Any]] = [
    {
        "path": "/count",
        "mechanism": "laplace",
        "epsilon": 0.1,
        "fields": [{"path": "$.count", "kind": "count"}],
        "queryParameters": [{"name": "fresh"}],
    },
    {
        "path": "/groups",
        "mechanism": "laplace",
        "epsilon": 0.1,
        "fields": [{"path": "$.groups[*].count", "kind": "count"}],
        "domains": [{"path": "$.groups[*]", "keyField": "name", "keys": ["a", "b", "c"]}],
        "constants": [{"path": "$.unit", "value": "people"}],
        "queryParameters": [{"name": "fresh"}],
    },
    {
        "path": "/fragile",
        "mechanism": "laplace",
        "epsilon": 0.1,
        "fields": [{"path": "$.count", "kind": "count"}],
        "queryParameters": [{"name": "case"}],
    },
]


def _policy(upstream_port: int) -> dict[str, Any]:
    return {
        "apiVersion": "hush.dev/v1alpha1",
        "kind": "DPPolicy",
        "metadata": {"name": "survey"},
        "spec": {
            "budgetRef": {"name": "survey", "team": spending.TEAM},
            "upstream": {"port": upstream_port},
            "passThrough": ["/healthz"],
            "routes": ROUTES,
        },
    }


class Sidecar:
    """A running host sidecar: where to call it, and what it charged."""

    def __init__(
        self, api_client: client.ApiClient, namespace: str, ports: dict[str, int], token: Path
    ) -> None:
        self.api_client = api_client
        self.namespace = namespace
        self.base = f"http://127.0.0.1:{ports['listen']}"
        self.token = token

    def request(
        self,
        path: str,
        *,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(  # noqa: S310 - http to loopback
            self.base + path, method=method, headers=headers or {}, data=data
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:  # noqa: S310
                return reply.status, dict(reply.headers), reply.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    def charges(self) -> list[Any]:
        budget = hush_resources.get(self.api_client, self.namespace, "PrivacyBudget", "survey")
        if not (budget.get("status") or {}).get("ledger"):
            return []
        ledger = spending.ledger(self.api_client, self.namespace, "survey")
        return [entry for entry in ledger.entries if entry.action == "charge"]


@contextlib.contextmanager
def _sidecar(
    api_client: client.ApiClient,
    namespace: str,
    accountant_endpoint: dict[str, Any],
    tmp_path: Path,
    *,
    team_epsilon: float = 5.0,
    total_epsilon: float = 10.0,
) -> Iterator[Sidecar]:
    with _sample_app(_ScriptedApp) as app_port:
        budget = spending.budget_manifest("survey", team_epsilon=team_epsilon, total=total_epsilon)
        hush_resources.create(api_client, namespace, budget)
        hush_resources.create(api_client, namespace, _policy(app_port))
        policy = hush_resources.wait_for_condition(
            api_client, namespace, "DPPolicy", "survey", status="True", reason="Accepted"
        )
        container = _host_container(
            api_client,
            namespace,
            policy,
            app_port=app_port,
            accountant_endpoint=accountant_endpoint,
            token_path=tmp_path / "token",
            policy_check_interval="10m",
        )
        with _running_sidecar(container, tmp_path / "sidecar.log") as ports:
            yield Sidecar(api_client, namespace, ports, tmp_path / "token")


def _assert_no_secret(*parts: Any) -> None:
    text = " ".join(str(part) for part in parts)
    for secret in SECRET_NUMBERS:
        assert secret not in text, text


def test_1_an_undeclared_field_is_withheld(
    api_client: client.ApiClient, namespace: str, accountant: dict[str, Any], tmp_path: Path
) -> None:
    _ScriptedApp.script({"/count": (200, {"count": 1000, "secret_total": 987654, "rows": [31337]})})
    with _sidecar(api_client, namespace, accountant, tmp_path) as sidecar:
        status, headers, body = sidecar.request("/count")
        assert status == 200, body
        answer = json.loads(body)
        assert list(answer) == ["count"]
        assert isinstance(answer["count"], float)
        _assert_no_secret(body, headers)
        assert len(sidecar.charges()) == 1


def test_2_an_empty_selection_is_charged_and_released_in_the_declared_shape(
    api_client: client.ApiClient, namespace: str, accountant: dict[str, Any], tmp_path: Path
) -> None:
    _ScriptedApp.script({"/groups": (200, {"groups": [], "total_rows": 424242})})
    with _sidecar(api_client, namespace, accountant, tmp_path) as sidecar:
        status, headers, body = sidecar.request("/groups")
        assert status == 200, body
        answer = json.loads(body)
        assert set(answer) == {"groups", "unit"}
        assert answer["unit"] == "people"
        assert [group["name"] for group in answer["groups"]] == ["a", "b", "c"]
        assert all(isinstance(group["count"], float | None) for group in answer["groups"])
        _assert_no_secret(body, headers)
        [charge] = sidecar.charges()
        assert charge.request_id == headers["X-Request-Id"]


def test_3_an_exhausted_budget_never_calls_the_application(
    api_client: client.ApiClient, namespace: str, accountant: dict[str, Any], tmp_path: Path
) -> None:
    _ScriptedApp.script({"/count": (200, {"count": 1000})})
    with _sidecar(api_client, namespace, accountant, tmp_path, team_epsilon=0.1) as sidecar:
        assert sidecar.request("/count")[0] == 200  # spends the whole quota
        assert _ScriptedApp.calls["/count"] == 1
        for index in range(20):
            status, _, body = sidecar.request(f"/count?fresh={index}")
            assert status == 429, body
            assert json.loads(body)["error"] == "budget-exhausted"
        assert _ScriptedApp.calls["/count"] == 1  # 20 refusals, zero calls
        assert len(sidecar.charges()) == 1


def test_3_application_failures_are_one_generic_charged_502(
    api_client: client.ApiClient, namespace: str, accountant: dict[str, Any], tmp_path: Path
) -> None:
    _ScriptedApp.script({})
    with _sidecar(api_client, namespace, accountant, tmp_path) as sidecar:
        answers = []
        cases = [
            (500, b'{"error": "group 31337 is empty", "count": 987654}'),
            (404, b"no such thing 424242"),
            (200, b"<html>987654</html>"),
            (200, b'{"count": 9876'),
            (204, b""),
        ]
        for index, (app_status, app_body) in enumerate(cases):
            _ScriptedApp.answers = {"/fragile": (app_status, app_body)}
            status, headers, body = sidecar.request(f"/fragile?case={index}")
            _assert_no_secret(body, headers)
            assert status == 502, body
            assert json.loads(body)["error"] == "release-failed"
            volatile = {"X-Request-Id", "X-DP-Budget-Remaining", "Date"}
            answers.append((status, body, {k: v for k, v in headers.items() if k not in volatile}))
        assert all(answer == answers[0] for answer in answers)  # the same for every cause
        assert len(sidecar.charges()) == len(cases)  # each one charged: the ledger moved
        # A repeat is the cached failure: the same answer, not charged again.
        status, headers, body = sidecar.request("/fragile?case=0")
        assert (status, body, headers.get("X-DP-Cache")) == (502, answers[0][1], "hit")
        assert len(sidecar.charges()) == len(cases)


def test_6_the_shape_is_the_policys(
    api_client: client.ApiClient, namespace: str, accountant: dict[str, Any], tmp_path: Path
) -> None:
    _ScriptedApp.script(
        {
            "/groups": (
                200,
                {
                    "groups": [
                        {"name": "a", "count": 40, "median_age": 31337},
                        {"name": "zz-987654", "count": 7},
                        {"name": "c", "count": "not a number"},
                    ],
                    "unit": "424242",
                    "page": {"next": 2},
                },
            )
        }
    )
    with _sidecar(api_client, namespace, accountant, tmp_path) as sidecar:
        status, headers, body = sidecar.request("/groups")
        assert status == 200, body
        answer = json.loads(body)
        assert set(answer) == {"groups", "unit"}  # extra keys dropped
        assert answer["unit"] == "people"  # the constant, not the application's string
        assert [group["name"] for group in answer["groups"]] == ["a", "b", "c"]  # b imputed
        assert all(set(group) == {"name", "count"} for group in answer["groups"])
        _assert_no_secret(body, headers)
        assert len(sidecar.charges()) == 1


def test_8_two_clients_never_share_a_cached_answer_and_junk_parameters_are_refused(
    api_client: client.ApiClient, namespace: str, accountant: dict[str, Any], tmp_path: Path
) -> None:
    _ScriptedApp.script({"/count": (200, {"count": 1000})})
    with _sidecar(api_client, namespace, accountant, tmp_path) as sidecar:
        alice = sidecar.request("/count", headers={"Authorization": "Bearer alice"})
        bob = sidecar.request("/count", headers={"Authorization": "Bearer bob"})
        assert (alice[0], bob[0]) == (200, 200)
        assert "X-DP-Cache" not in bob[1]
        assert alice[2] != bob[2]  # each client its own noise
        again = sidecar.request("/count", headers={"Authorization": "Bearer alice"})
        assert (again[1].get("X-DP-Cache"), again[2]) == ("hit", alice[2])
        assert _ScriptedApp.authorizations == ["Bearer alice", "Bearer bob"]
        assert len(sidecar.charges()) == 2

        # Query parameters: undeclared or repeated ones are refused before any charge.
        for query in ("junk=1", "fresh=1&fresh=2", "fresh=1&", "FRESH=1"):
            status, _, body = sidecar.request(f"/count?{query}")
            assert status == 400, (query, body)
            assert json.loads(body)["error"] == "query-parameter-refused"
            assert "allowed: fresh" in json.loads(body)["message"]
        assert _ScriptedApp.calls["/count"] == 2
        # ``?fresh`` and ``?fresh=`` are two requests to the application: never merged.
        flag, empty = sidecar.request("/count?fresh"), sidecar.request("/count?fresh=")
        assert (flag[0], empty[0]) == (200, 200)
        assert "X-DP-Cache" not in empty[1]
        assert len(sidecar.charges()) == 4


def test_9_pass_through_is_for_health_checks_only(
    api_client: client.ApiClient, namespace: str, accountant: dict[str, Any], tmp_path: Path
) -> None:
    _ScriptedApp.script({"/healthz": (200, b"ok"), "/healthz/": (200, b"ok")})
    with _sidecar(api_client, namespace, accountant, tmp_path) as sidecar:
        status, headers, body = sidecar.request("/healthz")
        assert (status, body) == (200, b"ok")
        assert "X-Secret" not in headers  # only status, body and Content-Type
        assert headers["Content-Type"] == "application/json"
        assert sidecar.request("/healthz", method="HEAD")[0] == 200
        refused = {
            ("POST", "/healthz", b""): 405,
            ("GET", "/healthz?verbose=1", None): 400,
            ("GET", "/healthz/", None): 404,
        }
        for (method, path, data), expected in refused.items():
            assert sidecar.request(path, method=method, data=data)[0] == expected, path
        _ScriptedApp.answers = {"/healthz": (200, b"x" * 5000)}
        assert sidecar.request("/healthz")[0] == 502  # more than 4 KiB
        assert _ScriptedApp.calls["/healthz"] == 3  # GET, HEAD, the large one
        assert _ScriptedApp.calls["/healthz/"] == 0
        assert sidecar.charges() == []


def test_9_the_accountant_prices_the_route_itself(
    api_client: client.ApiClient, namespace: str, accountant: dict[str, Any], tmp_path: Path
) -> None:
    _ScriptedApp.script({"/count": (200, {"count": 1000}), "/groups": (200, {"groups": []})})
    with _sidecar(api_client, namespace, accountant, tmp_path) as sidecar:
        routes = {}  # the charge's request id -> the route's declaration
        for route in ROUTES[:2]:
            status, headers, _ = sidecar.request(route["path"])
            assert status == 200
            routes[headers["X-Request-Id"]] = route
        entries = sidecar.charges()
        assert {entry.request_id for entry in entries} == set(routes)
        for entry in entries:
            price = route_cost.route_charge(dppolicy.Route.model_validate(routes[entry.request_id]))
            assert entry.mechanism == price.mechanism
            assert Decimal(entry.epsilon) == price.epsilon
            assert Decimal(entry.delta) == price.delta
            assert Decimal(entry.sensitivity) == price.sensitivity
            assert Decimal(entry.noise_scale) == price.scale
        # A charge that names a cost of its own is not a charge (the sidecar sends none).
        policy_hash = spending.policy_hash(api_client, namespace, "survey")
        body = spending.charge_body("cheap-1", "survey", policy_hash)
        body.update(epsilon="0.000001", sensitivity="0.000001", scale="1000000")
        request = urllib.request.Request(  # noqa: S310 - https to loopback
            f"{accountant['url']}/v1/charge",
            data=json.dumps(body).encode(),
            method="POST",
            headers={
                "Authorization": f"Bearer {sidecar.token.read_text().strip()}",
                "Content-Type": "application/json",
            },
        )
        context: ssl.SSLContext = operator_process.client_ssl_context(accountant["cert"])
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30, context=context)  # noqa: S310
        assert refused.value.code == 400
        assert len(sidecar.charges()) == 2


pytestmark = pytest.mark.timeout(240)
