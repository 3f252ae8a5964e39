"""The sidecar's request path, in process: a fake application and a fake accountant (both
aiohttp test servers) around the real proxy and the real release core. No cluster.

What is checked is the order of docs/design/0018 "Request path": refusals that depend only
on the request come before any charge and never call the application; the charge comes
before the application is called and an exhausted or unreachable accountant means it is
never called; once charged every outcome is a release (the document built from the policy,
or one generic 502, cached like an answer); the cache key covers who asks; pass-through is
for health checks; the release step runs off the event loop."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from aiohttp import test_utils, web
from hypothesis import strategies

from hush.api import dppolicy
from hush.privacy import mechanisms, route_cost
from hush.reconcile import dppolicy as policy_reconcile
from hush.sidecar import accountant_client, config, proxy, release

POLICY_SPEC: dict[str, Any] = {
    "budgetRef": {"name": "survey", "team": "analytics"},
    "upstream": {"port": 8080},
    "passThrough": ["/healthz"],
    "routes": [
        {
            "path": "/stats/{region}",
            "mechanism": "laplace",
            "epsilon": 0.5,
            "minCohort": 5,
            "cacheTTL": "1m",
            "fields": [
                {"path": "$.total", "kind": "count"},
                {"path": "$.groups[*].count", "kind": "count"},
                {"path": "$.histogram.*", "kind": "histogram"},
            ],
            "domains": [
                {"path": "$.groups[*]", "keyField": "name", "keys": ["a", "b"]},
                {"path": "$.histogram.*", "keys": ["0-9", "10-19"]},
            ],
            "constants": [{"path": "$.unit", "value": "people"}],
            "queryParameters": [{"name": "year"}, {"name": "g", "repeated": True}],
            "varyHeaders": ["X-Tenant"],
        },
        {
            "path": "/count",
            "methods": ["GET", "POST"],
            "mechanism": "laplace",
            "epsilon": 0.25,
            "fields": [{"path": "$.count", "kind": "count"}],
            "queryParameters": [{"name": "fresh"}],
        },
    ],
}

CHARGE_KEYS = {"requestId", "policy", "route", "policyHash"}


@dataclasses.dataclass
class FakeApp:
    status: int = 200
    body: bytes = b'{"count": 1234}'
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    delay: float = 0.0
    calls: int = 0
    seen: list[dict[str, list[str]]] = dataclasses.field(default_factory=list)
    paths: list[str] = dataclasses.field(default_factory=list)
    events: list[str] = dataclasses.field(default_factory=list)  # shared with the accountant

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        self.events.append("upstream")
        received: dict[str, list[str]] = {}
        for name, value in request.headers.items():
            received.setdefault(name.lower(), []).append(value)
        self.seen.append(received)
        self.paths.append(request.raw_path)
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.Response(status=self.status, body=self.body, headers=self.headers)


@dataclasses.dataclass
class FakeAccountant:
    """Answers ``/v1/charge`` like the accountant; checks that the sidecar reports no cost."""

    mode: str = "grant"  # grant | exhausted | stale | error
    charged: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    tokens: list[str] = dataclasses.field(default_factory=list)
    policy_hash: str | None = None  # the DPPolicy's current hash; None: what the pod baked
    policy_mode: str = "answer"  # answer | deleted | error
    policy_checks: list[dict[str, str]] = dataclasses.field(default_factory=list)
    events: list[str] = dataclasses.field(default_factory=list)  # shared with the app

    async def policy_status(self, request: web.Request) -> web.Response:
        self.tokens.append(request.headers.get("Authorization", ""))
        query = dict(request.query)
        self.policy_checks.append(query)
        if self.policy_mode == "deleted":
            return web.json_response(
                {"outcome": "denied", "message": "DPPolicy stats/survey does not exist"},
                status=404,
            )
        if self.policy_mode == "error":
            return web.Response(status=503, body=b"standby")
        current = self.policy_hash or query["policyHash"]
        stale = current != query["policyHash"]
        return web.json_response(
            {
                "policy": query["policy"],
                "policyHash": current,
                "stale": stale,
                "message": "Stale policy: replace the pod" if stale else "current",
            }
        )

    async def charge(self, request: web.Request) -> web.Response:
        self.tokens.append(request.headers.get("Authorization", ""))
        self.events.append("charge")
        body = await request.json()
        assert set(body) == CHARGE_KEYS, body  # no mechanism, epsilon, sensitivity, scale
        if self.mode == "exhausted":
            return web.json_response({"outcome": "exhausted", "message": "No budget"}, status=429)
        if self.mode == "stale":
            return web.json_response(
                {"outcome": "denied", "message": "Stale policy: this pod runs policy hash x"},
                status=409,
            )
        if self.mode == "error":
            return web.Response(status=500, body=b"boom")
        self.charged.append(body)
        return web.json_response(
            {"outcome": "granted", "message": "ok", "epsilonRemaining": "9.5"}, status=200
        )


@dataclasses.dataclass
class Harness:
    app: FakeApp
    accountant: FakeAccountant
    sidecar: proxy.Sidecar
    client: test_utils.TestClient[web.Request, web.Application]
    admin: test_utils.TestClient[web.Request, web.Application]
    servers: list[test_utils.TestServer]

    def sidecar_hash(self) -> str:
        spec = dppolicy.DPPolicySpec.model_validate(POLICY_SPEC)
        return policy_reconcile.policy_hash(spec)

    async def stop(self) -> None:
        await self.client.close()
        await self.admin.close()
        for server in self.servers:
            await server.close()


def _closed_port() -> int:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def start_harness(
    tmp_path: Path,
    *,
    accountant_port: int | None = None,
    upstream_port: int | None = None,
    policy: dict[str, Any] | None = None,
    **sidecar_options: Any,
) -> Harness:
    app = FakeApp()
    upstream = web.Application()
    upstream.router.add_route("*", "/{tail:.*}", app.handle)
    upstream_server = test_utils.TestServer(upstream, host="127.0.0.1")
    await upstream_server.start_server()
    fake_accountant = FakeAccountant(events=app.events)
    accountant_app = web.Application()
    accountant_app.router.add_post("/v1/charge", fake_accountant.charge)
    accountant_app.router.add_get("/v1/policy-status", fake_accountant.policy_status)
    accountant_server = test_utils.TestServer(accountant_app, host="127.0.0.1")
    await accountant_server.start_server()
    token = tmp_path / "token"
    token.write_text("pod-token\n")
    spec = dppolicy.DPPolicySpec.model_validate(policy or POLICY_SPEC)
    settings = config.SidecarConfig(
        policy_name="survey",
        policy_hash=policy_reconcile.policy_hash(spec),
        policy=spec,
        listen_port=1,
        admin_port=2,
        upstream_port=upstream_port or upstream_server.port or 0,
        accountant_url=f"http://127.0.0.1:{accountant_port or accountant_server.port}",
        ca_path=None,
        token_path=str(token),
        upstream_timeout_seconds=sidecar_options.pop("upstream_timeout_seconds", 10.0),
        max_body_bytes=sidecar_options.pop("max_body_bytes", 8 * 1024 * 1024),
    )
    sidecar = proxy.Sidecar(
        settings,
        accountant=accountant_client.AccountantClient(
            url=settings.accountant_url,
            token_path=settings.token_path,
            ca_path=None,
            timeout_seconds=2,
        ),
        **sidecar_options,
    )
    client = test_utils.TestClient(test_utils.TestServer(sidecar.application()))
    await client.start_server()
    admin = test_utils.TestClient(test_utils.TestServer(sidecar.admin_application()))
    await admin.start_server()
    return Harness(
        app, fake_accountant, sidecar, client, admin, [upstream_server, accountant_server]
    )


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    started = await start_harness(tmp_path)
    yield started
    await started.stop()


def _labels(headers: Any) -> dict[str, str]:
    """The answer's headers that the sidecar writes, without the per-request ones."""
    skip = {"x-request-id", "date", "server", "content-length", "x-dp-cache"}
    return {name: value for name, value in headers.items() if name.lower() not in skip}


# -- a release ---------------------------------------------------------------------------


async def test_a_covered_answer_is_built_from_the_policy_charged_once_and_labelled(
    harness: Harness,
) -> None:
    harness.app.body = b'{"count": 1234, "secret_total": 987654, "rows": [31337]}'
    reply = await harness.client.get("/count")
    assert reply.status == 200
    answer = await reply.json()
    assert set(answer) == {"count"}  # undeclared fields never leave
    assert isinstance(answer["count"], float)
    text = await reply.text()
    assert "987654" not in text
    assert "31337" not in text
    assert reply.headers["X-DP-Epsilon"] == "0.25"
    assert reply.headers["X-DP-Delta"] == "0"
    assert reply.headers["X-DP-Mechanism"] == "laplace"
    assert reply.headers["X-DP-Budget-Remaining"] == "9.5"
    assert reply.headers["X-DP-Suppressed"] == "0"
    assert reply.headers["X-DP-Policy-Hash"] == harness.sidecar_hash()
    [charge] = harness.accountant.charged
    assert charge == {
        "requestId": reply.headers["X-Request-Id"],
        "policy": "survey",
        "route": "/count",
        "policyHash": harness.sidecar_hash(),
    }
    assert harness.accountant.tokens == ["Bearer pod-token"]


async def test_the_shape_is_the_declared_one_and_constants_are_added(harness: Harness) -> None:
    harness.app.body = json.dumps(
        {
            "total": 100,
            "unit": "dollars",  # the application's own string: replaced by the constant
            "groups": [{"name": "b", "count": 98, "secret": 1}, {"name": "zz", "count": 40}],
            "histogram": {"10-19": 99, "70-79": 3},
        }
    ).encode()
    reply = await harness.client.get("/stats/north")
    assert reply.status == 200
    answer = await reply.json()
    assert set(answer) == {"total", "groups", "histogram", "unit"}
    assert answer["unit"] == "people"
    assert [group["name"] for group in answer["groups"]] == ["a", "b"]  # declared keys only
    assert all(set(group) == {"name", "count"} for group in answer["groups"])
    assert set(answer["histogram"]) == {"0-9", "10-19"}
    assert "X-DP-Suppressed" in reply.headers
    assert "_dp" not in answer
    [charge] = harness.accountant.charged
    assert charge["route"] == "/stats/{region}"  # the declared pattern, not the path


async def test_an_empty_selection_is_charged_and_released_in_the_declared_shape(
    harness: Harness,
) -> None:
    harness.app.body = b'{"groups": [], "total_rows": 424242}'
    reply = await harness.client.get("/stats/north")
    assert reply.status == 200
    answer = await reply.json()
    assert [group["name"] for group in answer["groups"]] == ["a", "b"]
    assert "424242" not in await reply.text()
    assert len(harness.accountant.charged) == 1


@pytest.mark.parametrize(
    "body",
    [b'{"count": "1234"}', b'{"count": NaN}', b'{"count": null}', b"{}", b'{"count": 1e999}'],
)
async def test_per_field_problems_are_imputed_and_released(harness: Harness, body: bytes) -> None:
    harness.app.body = body
    reply = await harness.client.get("/count")
    assert reply.status == 200
    assert set(await reply.json()) == {"count"}
    assert len(harness.accountant.charged) == 1


# -- the order: refusals before the charge -------------------------------------------------


@pytest.mark.parametrize(
    ("path", "method", "status", "reason"),
    [
        ("/secret", "GET", 404, "route-not-covered"),
        ("/stats/north/extra", "GET", 404, "route-not-covered"),
        ("/stats/north", "POST", 405, "method-not-allowed"),
        ("/stats/north?junk=1", "POST", 405, "method-not-allowed"),  # the method first
        ("/stats/north?junk=1", "GET", 400, "query-parameter-refused"),
        ("/stats/north?year=1&year=2", "GET", 400, "query-parameter-refused"),
        ("/stats/north?year=1&", "GET", 400, "query-parameter-refused"),
        ("/count?fresh", "PUT", 405, "method-not-allowed"),
    ],
)
async def test_refusals_before_the_charge_never_call_the_application(
    harness: Harness, path: str, method: str, status: int, reason: str
) -> None:
    reply = await harness.client.request(method, path)
    assert reply.status == status
    assert (await reply.json())["error"] == reason
    assert harness.app.calls == 0
    assert harness.accountant.charged == []


async def test_an_undeclared_parameter_is_refused_naming_the_allowed_ones(
    harness: Harness,
) -> None:
    reply = await harness.client.get("/stats/north?region=x")
    message = (await reply.json())["message"]
    assert (reply.status, "g, year" in message, "'region'" in message) == (400, True, True)
    repeated = await harness.client.get("/stats/north?year=1&year=2")
    assert "may appear only once" in (await repeated.json())["message"]
    none_declared = await harness.client.get("/count?fresh=1&x=1")
    assert "allowed: fresh" in (await none_declared.json())["message"]


async def test_declared_parameters_pass_and_are_forwarded_raw(harness: Harness) -> None:
    harness.app.body = b'{"total": 1}'
    for query in ("g=b&g=a&year=2020", "g=a&g=b&year=2020", "year=1&g=a", "year", "year="):
        reply = await harness.client.get(f"/stats/north?{query}")
        assert reply.status == 200, await reply.text()
        assert reply.headers.get("X-DP-Cache") is None  # none of these is another's repeat
    assert harness.app.paths[-2:] == ["/stats/north?year", "/stats/north?year="]
    assert len(harness.accountant.charged) == 5


# -- the cache -----------------------------------------------------------------------------


async def test_identical_requests_get_the_identical_answer_uncharged(harness: Harness) -> None:
    harness.app.body = b'{"total": 70}'
    first = await harness.client.get("/stats/north?year=1&g=a")
    body = await first.read()
    assert first.status == 200
    harness.app.body = b'{"total": 71}'  # the app changed
    again = await harness.client.get("/stats/north?g=a&year=1")
    assert await again.read() == body
    assert again.headers["X-DP-Cache"] == "hit"
    assert len(harness.accountant.charged) == 1
    assert harness.app.calls == 1
    other = await harness.client.get("/stats/south?year=1&g=a")
    assert other.status == 200
    assert len(harness.accountant.charged) == 2


async def test_two_clients_never_share_a_cached_answer(harness: Harness) -> None:
    harness.app.body = b'{"total": 70}'
    alice = await harness.client.get("/stats/north", headers={"Authorization": "Bearer alice"})
    bob = await harness.client.get("/stats/north", headers={"Authorization": "Bearer bob"})
    assert (alice.status, bob.status) == (200, 200)
    assert bob.headers.get("X-DP-Cache") is None
    assert await alice.read() != await bob.read()  # fresh noise for each client
    assert len(harness.accountant.charged) == 2
    again = await harness.client.get("/stats/north", headers={"Authorization": "Bearer alice"})
    assert (again.headers["X-DP-Cache"], await again.read()) == ("hit", await alice.read())
    cookie = await harness.client.get("/stats/north", headers={"Cookie": "session=alice"})
    tenant = await harness.client.get("/stats/north", headers={"X-Tenant": "blue"})
    assert cookie.headers.get("X-DP-Cache") is None
    assert tenant.headers.get("X-DP-Cache") is None
    assert len(harness.accountant.charged) == 4


async def test_only_identity_vary_and_content_headers_reach_the_application(
    harness: Harness,
) -> None:
    harness.app.body = b'{"total": 70}'
    await harness.client.get(
        "/stats/north",
        headers={
            "Authorization": "Bearer alice",
            "Cookie": "session=1",
            "X-Tenant": "blue",
            "Accept": "application/json",
            "X-Forwarded-For": "10.0.0.1",
            "X-Debug": "1",
            "Referer": "https://example.invalid/",
        },
    )
    [seen] = harness.app.seen
    assert seen["authorization"] == ["Bearer alice"]
    assert seen["cookie"] == ["session=1"]
    assert seen["x-tenant"] == ["blue"]
    assert seen["accept"] == ["application/json"]
    assert not {"x-forwarded-for", "x-debug", "referer"} & set(seen)


async def test_post_bodies_are_part_of_the_cache_key(harness: Harness) -> None:
    await harness.client.post("/count", data=b"q=1")
    await harness.client.post("/count", data=b"q=2")
    await harness.client.post("/count", data=b"q=1")
    assert len(harness.accountant.charged) == 2


# -- the charge comes first ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "status", "reason"),
    [("exhausted", 429, "budget-exhausted"), ("error", 503, "accountant-refused")],
)
async def test_a_refused_charge_never_calls_the_application(
    harness: Harness, mode: str, status: int, reason: str
) -> None:
    harness.accountant.mode = mode
    for _ in range(3):
        reply = await harness.client.get("/count")
        assert reply.status == status
        assert (await reply.json())["error"] == reason
    assert harness.app.calls == 0
    assert (await harness.admin.get("/readyz")).status == 200


async def test_an_unreachable_accountant_fails_closed_without_calling_the_application(
    tmp_path: Path,
) -> None:
    started = await start_harness(tmp_path, accountant_port=_closed_port())
    try:
        reply = await started.client.get("/count")
        assert reply.status == 503
        assert (await reply.json())["error"] == "accountant-unreachable"
        assert started.app.calls == 0
    finally:
        await started.stop()


async def test_a_stale_policy_stops_releasing_and_turns_not_ready(harness: Harness) -> None:
    assert (await harness.admin.get("/readyz")).status == 200
    harness.accountant.mode = "stale"
    reply = await harness.client.get("/count")
    assert reply.status == 503
    assert (await reply.json())["error"] == "stale-policy"
    assert harness.app.calls == 0
    readiness = await harness.admin.get("/readyz")
    assert readiness.status == 503
    assert (await readiness.json())["status"] == "stale-policy"
    harness.accountant.mode = "grant"
    assert (await harness.client.get("/count?fresh=1")).status == 503
    assert harness.app.calls == 0  # not even asked


# -- whole-answer failures: one generic, charged, cached 502 -------------------------------


async def _failure(tmp_path: Path, cause: str) -> tuple[int, dict[str, str], bytes, Harness]:
    options: dict[str, Any] = {}
    if cause == "unreachable":
        options["upstream_port"] = _closed_port()
    if cause == "timeout":
        options["upstream_timeout_seconds"] = 0.2
    if cause == "too-large":
        options["max_body_bytes"] = 1024
    started = await start_harness(tmp_path, **options)
    app = started.app
    app.headers = {"X-Count": "1234", "Content-Type": "text/plain"}
    if cause == "timeout":
        app.delay = 1.0
    elif cause == "too-large":
        app.body = b'{"count": 1234, "pad": "' + b"x" * 2048 + b'"}'
    elif cause.startswith("status-"):
        app.status = int(cause.removeprefix("status-"))
    elif cause != "unreachable":
        app.body = {
            "not-json": b"<html>1234</html>",
            "truncated": b'{"count": 12',
            "empty": b"",
            "deep": b"[" * 100_000 + b"]" * 100_000,
        }[cause]
    reply = await started.client.get("/count")
    return reply.status, _labels(reply.headers), await reply.read(), started


FAILURES = [
    "unreachable",
    "timeout",
    "too-large",
    "status-500",
    "status-404",
    "status-204",
    "status-301",
    "not-json",
    "truncated",
    "empty",
    "deep",
]


async def test_every_whole_answer_failure_is_the_same_charged_502(tmp_path: Path) -> None:
    answers = []
    for index, cause in enumerate(FAILURES):
        directory = tmp_path / str(index)
        directory.mkdir()
        status, headers, body, started = await _failure(directory, cause)
        try:
            assert status == 502, cause
            assert body == release.failure_body(), cause
            assert b"1234" not in body
            assert "1234" not in str(headers)
            assert len(started.accountant.charged) == 1, cause  # charged: no refund
            answers.append((status, headers, body))
        finally:
            await started.stop()
    assert all(answer == answers[0] for answer in answers)  # identical for every cause
    status, headers, _ = answers[0]
    assert headers["X-DP-Budget-Remaining"] == "9.5"
    assert headers["X-DP-Epsilon"] == "0.25"


async def test_a_failure_is_cached_like_an_answer(harness: Harness) -> None:
    harness.app.status = 500
    first = await harness.client.get("/count")
    harness.app.status = 200  # the application recovered
    again = await harness.client.get("/count")
    assert (first.status, again.status) == (502, 502)
    assert again.headers["X-DP-Cache"] == "hit"
    assert await again.read() == await first.read()
    assert len(harness.accountant.charged) == 1
    assert harness.app.calls == 1


class RecordingLogger:
    """Stands in for the proxy's structlog logger: every event and its fields, as text."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def _record(self, event: str, **fields: Any) -> None:
        self.lines.append(f"{event} {fields!r}")

    info = warning = error = _record

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def sidecar_log(monkeypatch: pytest.MonkeyPatch) -> RecordingLogger:
    """What the sidecar logs, whatever logging configuration earlier tests left behind."""
    recorder = RecordingLogger()
    monkeypatch.setattr(proxy, "logger", recorder)
    return recorder


async def test_the_log_never_carries_what_the_application_answered(
    harness: Harness, sidecar_log: RecordingLogger
) -> None:
    harness.app.status = 418
    harness.app.body = b'{"count": 987654}'
    harness.app.headers = {"X-Secret": "31337"}
    assert (await harness.client.get("/count")).status == 502
    assert "Answered request" in sidecar_log.text
    assert "release-failed" in sidecar_log.text
    for leaked in ("418", "987654", "31337"):
        assert leaked not in sidecar_log.text


# -- pass-through ----------------------------------------------------------------------------


async def test_pass_through_returns_only_status_body_and_content_type(harness: Harness) -> None:
    harness.app.status = 503
    harness.app.body = b"starting"
    harness.app.headers = {"Content-Type": "text/plain", "X-Secret": "1", "Set-Cookie": "a=b"}
    reply = await harness.client.get("/healthz", headers={"Authorization": "Bearer alice"})
    assert (reply.status, await reply.read()) == (503, b"starting")
    assert reply.headers["Content-Type"].startswith("text/plain")
    assert "X-Secret" not in reply.headers
    assert "Set-Cookie" not in reply.headers
    assert "authorization" not in harness.app.seen[0]  # nothing of the client's forwarded
    assert harness.accountant.charged == []


@pytest.mark.parametrize(
    ("method", "path", "data", "status", "reason"),
    [
        ("POST", "/healthz", None, 405, "method-not-allowed"),
        ("DELETE", "/healthz", None, 405, "method-not-allowed"),
        ("GET", "/healthz?verbose=1", None, 400, "query-refused"),
        ("GET", "/healthz", b"x", 400, "body-refused"),
        ("GET", "/healthz/", None, 404, "route-not-covered"),
        ("GET", "/healthz/deep", None, 404, "route-not-covered"),
        ("GET", "/HEALTHZ", None, 404, "route-not-covered"),
    ],
)
async def test_pass_through_is_exact_get_or_head_without_query_or_body(
    harness: Harness, method: str, path: str, data: bytes | None, status: int, reason: str
) -> None:
    reply = await harness.client.request(method, path, data=data)
    assert reply.status == status
    assert (await reply.json())["error"] == reason
    assert harness.app.calls == 0


async def test_a_large_pass_through_answer_is_refused(harness: Harness) -> None:
    harness.app.body = b"x" * (proxy.PASS_THROUGH_LIMIT + 1)
    reply = await harness.client.get("/healthz")
    assert reply.status == 502
    assert (await reply.json())["error"] == "pass-through-too-large"
    harness.app.body = b"x" * proxy.PASS_THROUGH_LIMIT
    reply = await harness.client.head("/healthz")
    assert reply.status == 200


# -- a route the policy cannot release -------------------------------------------------------


QUANTILE_SPEC: dict[str, Any] = {
    **POLICY_SPEC,
    "routes": [
        *POLICY_SPEC["routes"],
        {
            "path": "/median",
            "mechanism": "laplace",
            "epsilon": 0.5,
            "fields": [
                {
                    "path": "$.median",
                    "kind": "quantile",
                    "quantile": 0.5,
                    "bounds": {"lower": 0, "upper": 100},
                }
            ],
        },
    ],
}


async def test_a_route_that_cannot_be_released_is_refused_before_anything(
    tmp_path: Path,
) -> None:
    harness = await start_harness(tmp_path, policy=QUANTILE_SPEC)
    try:
        reply = await harness.client.get("/median")
        assert reply.status == 501
        assert (await reply.json())["error"] == "route-unsupported"
        assert harness.app.calls == 0
        assert harness.accountant.charged == []
        assert (await harness.client.get("/count")).status == 200  # other routes still work
    finally:
        await harness.stop()


# -- the release step: off the event loop, padded ------------------------------------------


@dataclasses.dataclass
class GatedSampler:
    """The real sampler, but each draw first waits for ``gate`` (a slow noise draw)."""

    inner: Any
    gate: threading.Event
    entered: threading.Event

    def release(self, values: Sequence[float | int]) -> list[float | int]:
        self.entered.set()
        assert self.gate.wait(10), "the test never opened the gate"
        released: list[float | int] = self.inner.release(values)
        return released

    def __getattr__(self, name: str) -> Any:  # scale, mechanism, integer: the real ones
        return getattr(self.inner, name)


def blocking_planner(gate: threading.Event, entered: threading.Event) -> proxy.RoutePlanner:
    """The real plan, with every sampler waiting for ``gate``."""

    def noise(mechanism: str, **arguments: Any) -> mechanisms.Plan:
        real = mechanisms.plan(mechanism, **arguments)
        return dataclasses.replace(real, sampler=GatedSampler(real.sampler, gate, entered))

    def planner(route: dppolicy.Route) -> route_cost.RoutePlan:
        return route_cost.route_plan(route, planner=noise)

    return planner


async def test_a_slow_release_does_not_delay_a_concurrent_request(tmp_path: Path) -> None:
    gate, entered = threading.Event(), threading.Event()
    harness = await start_harness(tmp_path, route_planner=blocking_planner(gate, entered))
    try:
        pending = asyncio.ensure_future(harness.client.get("/count"))
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, entered.wait, 5), "the sampler never ran"
        # The sampler is blocked in the worker thread; the loop still answers.
        health = await asyncio.wait_for(harness.admin.get("/healthz"), timeout=2)
        assert health.status == 200
        refused = await asyncio.wait_for(harness.client.get("/secret"), timeout=2)
        assert refused.status == 404
        assert not pending.done()
        gate.set()
        reply = await asyncio.wait_for(pending, timeout=5)
        assert reply.status == 200
        assert set(await reply.json()) == {"count"}
    finally:
        gate.set()
        await harness.stop()


class SteppingClock:
    """A fake monotonic clock for the release deadline: each read advances it by ``tick``."""

    def __init__(self, tick: float) -> None:
        self.now = 0.0
        self.tick = tick
        self.sleeps: list[float] = []
        self.lock = threading.Lock()

    def __call__(self) -> float:
        with self.lock:
            self.now += self.tick
            return self.now

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.sleeps.append(seconds)
            self.now += seconds


def _overruns(text: str, route: str) -> float:
    prefix = f'hush_sidecar_release_deadline_overruns_total{{route="{route}"}} '
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    return float(lines[0].removeprefix(prefix)) if lines else 0.0


async def test_the_release_step_is_padded_to_the_routes_deadline(tmp_path: Path) -> None:
    clock = SteppingClock(tick=0.001)  # the step "takes" 1 ms of the 5 ms deadline
    harness = await start_harness(tmp_path, deadline_clock=clock, deadline_sleep=clock.sleep)
    try:
        before = _overruns(await (await harness.admin.get("/metrics")).text(), "/count")
        assert (await harness.client.get("/count")).status == 200
        assert clock.sleeps == [pytest.approx(0.003)]  # 5 ms - 1 ms of work - 1 ms tick
        after = _overruns(await (await harness.admin.get("/metrics")).text(), "/count")
        assert after == before
    finally:
        await harness.stop()


async def test_a_failure_is_padded_like_a_release(tmp_path: Path) -> None:
    clock = SteppingClock(tick=0.001)
    harness = await start_harness(tmp_path, deadline_clock=clock, deadline_sleep=clock.sleep)
    try:
        harness.app.status = 500
        assert (await harness.client.get("/count")).status == 502
        assert clock.sleeps == [pytest.approx(0.003)]
    finally:
        await harness.stop()


async def test_an_overrun_is_released_counted_and_logged_without_values(
    tmp_path: Path, sidecar_log: RecordingLogger
) -> None:
    clock = SteppingClock(tick=0.012)  # the step "takes" 12 ms: three 5 ms periods
    harness = await start_harness(tmp_path, deadline_clock=clock, deadline_sleep=clock.sleep)
    try:
        before = _overruns(await (await harness.admin.get("/metrics")).text(), "/count")
        reply = await harness.client.get("/count")
        assert reply.status == 200
        after = _overruns(await (await harness.admin.get("/metrics")).text(), "/count")
        assert after == before + 1
        text = sidecar_log.text
        assert "Overran the release deadline" in text
        assert "periods" in text
        assert "1234" not in text
    finally:
        await harness.stop()


# -- policy status -----------------------------------------------------------------------


async def _wait_until_not_ready(harness: Harness) -> float:
    """Seconds until /readyz turns 503 (bounded: fails after 5 s)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while (await harness.admin.get("/readyz")).status == 200:
        assert loop.time() - started < 5, "the sidecar never noticed its stale policy"
        await asyncio.sleep(0.01)
    return loop.time() - started


async def test_a_polled_stale_policy_turns_not_ready_without_any_charge(tmp_path: Path) -> None:
    harness = await start_harness(tmp_path, policy_check_interval=0.05)
    try:
        assert (await harness.admin.get("/readyz")).status == 200
        baked = harness.sidecar_hash()
        assert harness.accountant.policy_checks[0] == {"policy": "survey", "policyHash": baked}
        assert harness.accountant.tokens[0] == "Bearer pod-token"
        harness.accountant.policy_hash = "sha256:" + "f" * 64  # the DPPolicy changed
        assert await _wait_until_not_ready(harness) < 1.0
        readiness = await (await harness.admin.get("/readyz")).json()
        assert readiness == {"status": "stale-policy", "message": "Stale policy: replace the pod"}
        reply = await harness.client.get("/count")
        assert reply.status == 503
        assert (await reply.json())["error"] == "stale-policy"
        assert harness.accountant.charged == []
        assert harness.app.calls == 0
        checks = len(harness.accountant.policy_checks)
        await asyncio.sleep(0.2)
        assert len(harness.accountant.policy_checks) == checks  # stale for good: no more polls
    finally:
        await harness.stop()


async def test_a_deleted_policy_counts_as_stale(tmp_path: Path) -> None:
    harness = await start_harness(tmp_path)
    try:
        harness.accountant.policy_mode = "deleted"
        await harness.sidecar.check_policy()
        assert (await harness.admin.get("/readyz")).status == 503
    finally:
        await harness.stop()


async def test_a_failed_policy_check_changes_nothing(tmp_path: Path) -> None:
    harness = await start_harness(tmp_path)
    try:
        harness.accountant.policy_mode = "error"
        await harness.sidecar.check_policy()
        assert (await harness.admin.get("/readyz")).status == 200
        assert (await harness.client.get("/count")).status == 200
        text = await (await harness.admin.get("/metrics")).text()
        assert 'hush_sidecar_policy_checks_total{outcome="failed"}' in text
    finally:
        await harness.stop()


async def test_metrics_and_health(harness: Harness) -> None:
    await harness.client.get("/count")
    await harness.client.get("/count")
    assert (await harness.admin.get("/healthz")).status == 200
    text = await (await harness.admin.get("/metrics")).text()
    assert 'hush_sidecar_requests_total{outcome="cache-hit",route="/count"}' in text
    assert "hush_sidecar_request_seconds_bucket" in text


# -- property: whatever the application answers, only the policy's document leaves ----------

FINGERPRINT = 731_904_000  # raw numbers are FINGERPRINT + i; nothing else looks like them
SECRET_WORD = "qzxv"  # raw strings and keys contain it; the policy never does


@dataclasses.dataclass
class ShiftedSampler:
    """The real sampler's parameters, but a deterministic draw: every value moves by -2e9,
    so that a released value can never contain a raw one as a substring."""

    inner: Any

    def release(self, values: Sequence[float | int]) -> list[float | int]:
        return [value - 2_000_000_000 for value in values]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def shifting_planner(route: dppolicy.Route) -> route_cost.RoutePlan:
    def noise(mechanism: str, **arguments: Any) -> mechanisms.Plan:
        real = mechanisms.plan(mechanism, **arguments)
        return dataclasses.replace(real, sampler=ShiftedSampler(real.sampler))

    return route_cost.route_plan(route, planner=noise)


_json_leaves = strategies.one_of(
    strategies.integers(-999, 999),
    strategies.floats(allow_nan=True, allow_infinity=True),
    strategies.text(alphabet="abc" + SECRET_WORD, max_size=8),
    strategies.booleans(),
    strategies.none(),
)


@strategies.composite
def upstream_answers(draw: strategies.DrawFn) -> tuple[int, bytes, list[str]]:
    """(status, body, raw tokens that must never leave) of an arbitrary application answer."""
    raws: list[str] = []

    def raw() -> int:
        value = FINGERPRINT + len(raws)
        raws.append(str(value))
        return value

    def word() -> str:
        text = f"{SECRET_WORD}{len(raws)}"
        raws.append(text)
        return text

    groups = [
        {"name": draw(strategies.sampled_from(["a", "b", word()])), "count": raw(), word(): raw()}
        for _ in range(draw(strategies.integers(0, 4)))
    ]
    histogram = {
        draw(strategies.sampled_from(["0-9", "10-19", word()])): raw()
        for _ in range(draw(strategies.integers(0, 4)))
    }
    document: Any = {
        "total": raw(),
        "groups": groups,
        "histogram": histogram,
        "unit": word(),
        word(): draw(
            strategies.recursive(
                _json_leaves,
                lambda children: (
                    strategies.lists(children, max_size=3)
                    | strategies.dictionaries(strategies.text(max_size=3), children, max_size=3)
                ),
                max_leaves=8,
            )
        ),
    }
    mutation = draw(strategies.sampled_from(["none", "drop", "string", "nest", "list", "nan"]))
    if mutation == "drop":
        del document[draw(strategies.sampled_from(["total", "groups", "histogram"]))]
    elif mutation == "string":
        document["total"] = str(document["total"])
    elif mutation == "nest":
        document["histogram"] = [document["histogram"]]
    elif mutation == "list":
        document = [document]
    elif mutation == "nan":
        document["total"] = float("nan")
    body = json.dumps(document).encode()
    if draw(strategies.booleans()):
        body = body[: draw(strategies.integers(0, len(body)))]
    status = draw(strategies.sampled_from([200, 200, 200, 201, 204, 301, 404, 500, 503]))
    return status, body, raws


def test_only_the_policys_document_leaves_and_the_charge_comes_first(tmp_path: Path) -> None:
    loop = asyncio.new_event_loop()
    harness = loop.run_until_complete(start_harness(tmp_path, route_planner=shifting_planner))
    counter = iter(range(10**9))
    events = harness.app.events

    async def check(status: int, body: bytes, raws: list[str]) -> None:
        harness.app.status, harness.app.body = status, body
        harness.app.headers = {"X-Raw": ",".join(raws)}
        events.clear()
        reply = await harness.client.get(f"/stats/r{next(counter)}")
        text = (await reply.read()).decode("utf-8", "replace") + str(dict(reply.headers))
        for value in raws:
            assert value not in text, (reply.status, text)
        assert events == ["charge", "upstream"]  # charged first, on every path
        assert reply.status in (200, 502)
        if reply.status == 502:
            assert await reply.read() == release.failure_body()
        else:
            assert set(await reply.json()) == {"total", "groups", "histogram", "unit"}

    @hypothesis.settings(max_examples=150, deadline=None)
    @hypothesis.given(answer=upstream_answers())
    def run(answer: tuple[int, bytes, list[str]]) -> None:
        loop.run_until_complete(check(*answer))

    try:
        run()
    finally:
        loop.run_until_complete(harness.stop())
        loop.close()
