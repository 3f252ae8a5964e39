"""The sidecar's HTTP behaviour, in process: a fake application and a fake accountant (both
aiohttp test servers) around the real proxy. No cluster, no real noise where it would make
assertions random (a shifting sampler stands in; the statistics test covers the real one)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from aiohttp import test_utils, web
from hypothesis import strategies

from hush.accountant import protocol
from hush.api import dppolicy
from hush.privacy import accounting
from hush.reconcile import dppolicy as policy_reconcile
from hush.sidecar import accountant_client, config, proxy
from tests.unit import test_sidecar_release as pure

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
        },
        {
            "path": "/count",
            "methods": ["GET", "POST"],
            "mechanism": "laplace",
            "epsilon": 0.25,
            "fields": [{"path": "$.count", "kind": "count"}],
        },
    ],
}


@dataclasses.dataclass
class FakeApp:
    status: int = 200
    body: bytes = b'{"count": 1234}'
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    calls: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        return web.Response(status=self.status, body=self.body, headers=self.headers)


@dataclasses.dataclass
class FakeAccountant:
    """Answers like the accountant; checks every request against the real protocol model."""

    mode: str = "grant"  # grant | exhausted | stale | error
    reserved: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    committed: list[str] = dataclasses.field(default_factory=list)
    released: list[str] = dataclasses.field(default_factory=list)
    tokens: list[str] = dataclasses.field(default_factory=list)
    policy_hash: str | None = None  # the DPPolicy's current hash; None: what the pod baked
    policy_mode: str = "answer"  # answer | deleted | error
    policy_checks: list[dict[str, str]] = dataclasses.field(default_factory=list)

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

    async def reserve(self, request: web.Request) -> web.Response:
        self.tokens.append(request.headers.get("Authorization", ""))
        body = await request.json()
        parsed = protocol.SpendRequest.model_validate(body)
        accounting.PureAccountant().release_cost(
            accounting.Release(
                mechanism=parsed.mechanism,
                epsilon=parsed.epsilon,
                delta=parsed.delta,
                sensitivity=parsed.sensitivity,
                scale=parsed.scale,
            )
        )
        if self.mode == "exhausted":
            return web.json_response({"outcome": "exhausted", "message": "No budget"}, status=429)
        if self.mode == "stale":
            return web.json_response(
                {"outcome": "denied", "message": "Stale policy: this pod runs policy hash x"},
                status=409,
            )
        if self.mode == "error":
            return web.Response(status=500, body=b"boom")
        self.reserved.append(body)
        return web.json_response(
            {"outcome": "granted", "message": "ok", "epsilonRemaining": "9.5"}, status=200
        )

    async def close(self, request: web.Request) -> web.Response:
        body = await request.json()
        target = self.committed if request.path.endswith("commit") else self.released
        target.append(body["requestId"])
        return web.json_response({"outcome": "committed", "message": "ok"})


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


async def start_harness(
    tmp_path: Path,
    *,
    accountant_port: int | None = None,
    shift: float = 0.5,
    policy: dict[str, Any] | None = None,
    **sidecar_options: Any,
) -> Harness:
    app = FakeApp()
    upstream = web.Application()
    upstream.router.add_route("*", "/{tail:.*}", app.handle)
    upstream_server = test_utils.TestServer(upstream, host="127.0.0.1")
    await upstream_server.start_server()
    fake_accountant = FakeAccountant()
    accountant_app = web.Application()
    accountant_app.router.add_post("/v1/reserve", fake_accountant.reserve)
    accountant_app.router.add_post("/v1/commit", fake_accountant.close)
    accountant_app.router.add_post("/v1/release", fake_accountant.close)
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
        upstream_port=upstream_server.port or 0,
        accountant_url=f"http://127.0.0.1:{accountant_port or accountant_server.port}",
        ca_path=None,
        token_path=str(token),
    )
    sidecar = proxy.Sidecar(
        settings,
        accountant=accountant_client.AccountantClient(
            url=settings.accountant_url,
            token_path=settings.token_path,
            ca_path=None,
            timeout_seconds=2,
        ),
        planner=pure.shifting_planner(shift),
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


async def test_a_covered_answer_is_noised_charged_once_and_labelled(harness: Harness) -> None:
    reply = await harness.client.get("/count")
    assert reply.status == 200
    assert await reply.json() == {"count": 1234.5}
    assert reply.headers["X-DP-Epsilon"] == "0.25"
    assert reply.headers["X-DP-Delta"] == "0"
    assert reply.headers["X-DP-Mechanism"] == "laplace"
    assert reply.headers["X-DP-Budget-Remaining"] == "9.5"
    assert reply.headers["X-DP-Policy-Hash"].startswith("sha256:")
    [charge] = harness.accountant.reserved
    assert charge["route"] == "/count"
    assert charge["policy"] == "survey"
    assert charge["policyHash"] == reply.headers["X-DP-Policy-Hash"]
    assert (Decimal(charge["epsilon"]), Decimal(charge["delta"])) == (Decimal("0.25"), Decimal(0))
    assert harness.accountant.committed == [charge["requestId"]]
    assert harness.accountant.tokens == ["Bearer pod-token"]


async def test_identical_requests_get_the_identical_answer_and_are_not_charged_again(
    harness: Harness,
) -> None:
    harness.app.body = b'{"total": 70, "groups": [], "histogram": {}}'
    first = await harness.client.get("/stats/north?b=2&a=1", headers={"X-Test": "1"})
    body = await first.read()
    assert first.status == 200
    harness.app.body = b'{"total": 71, "groups": [], "histogram": {}}'  # the app changed
    again = await harness.client.get("/stats/north?a=1&b=2")
    assert await again.read() == body
    assert again.headers["X-DP-Cache"] == "hit"
    assert len(harness.accountant.reserved) == 1
    other = await harness.client.get("/stats/south?a=1&b=2")
    assert other.status == 200
    assert len(harness.accountant.reserved) == 2


async def test_post_bodies_are_part_of_the_cache_key(harness: Harness) -> None:
    await harness.client.post("/count", data=b"q=1")
    await harness.client.post("/count", data=b"q=2")
    await harness.client.post("/count", data=b"q=1")
    assert len(harness.accountant.reserved) == 2


async def test_the_whole_answer_is_one_charge_and_small_cohorts_are_suppressed(
    harness: Harness,
) -> None:
    harness.app.body = json.dumps(
        {
            "region": "north",
            "total": 100,
            "groups": [{"name": "a", "count": 2}, {"name": "b", "count": 98}],
            "histogram": {"0-9": 1, "10-19": 99},
        }
    ).encode()
    reply = await harness.client.get("/stats/north")
    assert reply.status == 200
    assert reply.headers["X-DP-Suppressed"] == "2"
    answer = await reply.json()
    assert answer["total"] == 100.5
    assert answer["groups"] == [{"name": "a", "count": None}, {"name": "b", "count": 98.5}]
    assert answer["histogram"] == {"0-9": None, "10-19": 99.5}
    assert answer["_dp"]["suppressed"] == ["$.groups[0].count", "$.histogram.0-9"]
    [charge] = harness.accountant.reserved
    assert charge["route"] == "/stats/{region}"  # the declared pattern, not the path
    assert Decimal(charge["epsilon"]) == Decimal("0.5")


@pytest.mark.parametrize(
    ("path", "method", "status", "reason"),
    [
        ("/secret", "GET", 404, "route-not-covered"),
        ("/stats/north/extra", "GET", 404, "route-not-covered"),
        ("/stats/north", "POST", 405, "method-not-allowed"),
    ],
)
async def test_unlisted_routes_and_methods_are_refused(
    harness: Harness, path: str, method: str, status: int, reason: str
) -> None:
    reply = await harness.client.request(method, path)
    assert reply.status == status
    assert (await reply.json())["error"] == reason
    assert harness.app.calls == 0


async def test_pass_through_paths_are_forwarded_unchanged(harness: Harness) -> None:
    harness.app.body = b"ok"
    reply = await harness.client.get("/healthz")
    assert (reply.status, await reply.read()) == (200, b"ok")
    assert harness.accountant.reserved == []


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (500, b'{"count": 1234}', "upstream-error"),
        (200, b'{"count": 12', "upstream-not-json"),
        (200, b"<html>1234</html>", "upstream-not-json"),
        (200, b'{"total": 1234}', "covered-field-missing"),
        (200, b'{"count": "1234"}', "covered-field-invalid"),
    ],
)
async def test_upstream_failures_give_a_reason_never_the_body(
    harness: Harness, status: int, body: bytes, reason: str
) -> None:
    harness.app.status, harness.app.body = status, body
    harness.app.headers = {"X-Count": "1234"}
    reply = await harness.client.get("/count")
    text = await reply.text()
    assert reply.status == 502
    assert json.loads(text)["error"] == reason
    assert "1234" not in text
    assert "1234" not in str(reply.headers)
    assert harness.accountant.reserved == []


@pytest.mark.parametrize(
    ("mode", "status", "reason"),
    [("exhausted", 429, "budget-exhausted"), ("error", 503, "accountant-refused")],
)
async def test_accountant_refusals_fail_closed(
    harness: Harness, mode: str, status: int, reason: str
) -> None:
    harness.accountant.mode = mode
    reply = await harness.client.get("/count")
    assert reply.status == status
    assert (await reply.json())["error"] == reason
    assert "1234" not in await reply.text()
    assert (await harness.admin.get("/readyz")).status == 200


async def test_a_stale_policy_stops_releasing_and_turns_not_ready(harness: Harness) -> None:
    assert (await harness.admin.get("/readyz")).status == 200
    harness.accountant.mode = "stale"
    reply = await harness.client.get("/count")
    assert reply.status == 503
    assert (await reply.json())["error"] == "stale-policy"
    readiness = await harness.admin.get("/readyz")
    assert readiness.status == 503
    assert (await readiness.json())["status"] == "stale-policy"
    harness.accountant.mode = "grant"
    calls = harness.app.calls
    assert (await harness.client.get("/count?again=1")).status == 503
    assert harness.app.calls == calls  # not even asked


MEAN_AND_QUANTILE_SPEC: dict[str, Any] = {
    **POLICY_SPEC,
    "routes": [
        *POLICY_SPEC["routes"],
        {
            "path": "/income",
            "mechanism": "laplace",
            "epsilon": 0.5,
            "fields": [
                {
                    "path": "$.average",
                    "kind": "mean",
                    "bounds": {"lower": 0, "upper": 100},
                    "countPath": "$.people",
                },
                {"path": "$.people", "kind": "count"},
            ],
        },
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


async def test_a_mean_is_released_as_noisy_sum_over_noisy_count_in_one_charge(
    tmp_path: Path,
) -> None:
    harness = await start_harness(tmp_path, policy=MEAN_AND_QUANTILE_SPEC)
    try:
        harness.app.body = b'{"average": 40.0, "people": 10, "unit": "EUR"}'
        reply = await harness.client.get("/income")
        assert reply.status == 200, await reply.text()
        # The stand-in sampler adds 0.5 to the count (10.5) and to the sum (400.5).
        assert await reply.json() == {
            "average": pytest.approx(400.5 / 10.5),
            "people": 10.5,
            "unit": "EUR",
        }
        [charge] = harness.accountant.reserved
        assert (charge["route"], Decimal(charge["epsilon"])) == ("/income", Decimal("0.5"))
    finally:
        await harness.stop()


async def test_a_quantile_route_is_refused_before_the_application_is_asked(
    tmp_path: Path,
) -> None:
    harness = await start_harness(tmp_path, policy=MEAN_AND_QUANTILE_SPEC)
    try:
        reply = await harness.client.get("/median")
        assert reply.status == 501
        answer = await reply.json()
        assert answer["error"] == "field-kind-unsupported"
        assert "histogram" in answer["message"]
        assert harness.app.calls == 0
        assert harness.accountant.reserved == []
        assert (await harness.client.get("/count")).status == 200  # other routes still work
    finally:
        await harness.stop()


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
        assert harness.accountant.reserved == []
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


class SteppingClock:
    """A fake monotonic clock for the release deadline: each read advances it by ``tick``."""

    def __init__(self, tick: float) -> None:
        self.now = 0.0
        self.tick = tick
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        self.now += self.tick
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _overruns(text: str, route: str) -> float:
    prefix = f'hush_sidecar_release_deadline_overruns_total{{route="{route}"}} '
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    return float(lines[0].removeprefix(prefix)) if lines else 0.0


async def test_the_noising_step_is_padded_to_the_routes_deadline(tmp_path: Path) -> None:
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


async def test_an_overrun_is_released_counted_and_logged_without_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clock = SteppingClock(tick=0.012)  # the step "takes" 12 ms: three 5 ms periods
    harness = await start_harness(tmp_path, deadline_clock=clock, deadline_sleep=clock.sleep)
    try:
        before = _overruns(await (await harness.admin.get("/metrics")).text(), "/count")
        reply = await harness.client.get("/count")
        assert reply.status == 200
        assert await reply.json() == {"count": 1234.5}
        after = _overruns(await (await harness.admin.get("/metrics")).text(), "/count")
        assert after == before + 1
        logged = capsys.readouterr()
        text = logged.out + logged.err
        assert "Overran the release deadline" in text
        assert "periods" in text
        assert "1234" not in text
    finally:
        await harness.stop()


async def test_an_unreachable_accountant_fails_closed(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    started = await start_harness(tmp_path, accountant_port=closed_port)
    try:
        reply = await started.client.get("/count")
        assert reply.status == 503
        assert (await reply.json())["error"] == "accountant-unreachable"
    finally:
        await started.stop()


async def test_metrics_and_health(harness: Harness) -> None:
    await harness.client.get("/count")
    await harness.client.get("/count")
    assert (await harness.admin.get("/healthz")).status == 200
    text = await (await harness.admin.get("/metrics")).text()
    assert 'hush_sidecar_requests_total{outcome="cache-hit",route="/count"}' in text
    assert "hush_sidecar_request_seconds_bucket" in text


# -- property: no raw covered value ever leaves --------------------------------------------

FINGERPRINT = 731_904_000  # raw covered values are FINGERPRINT + i; nothing else looks like it

_plain_values = strategies.one_of(
    strategies.integers(-999, 999),
    strategies.text(alphabet="abcxyz ", max_size=8),
    strategies.booleans(),
    strategies.none(),
)


@strategies.composite
def upstream_answers(draw: strategies.DrawFn) -> tuple[int, bytes, list[int]]:
    raws: list[int] = []

    def raw() -> int:
        value = FINGERPRINT + len(raws)
        raws.append(value)
        return value

    groups = [
        {"name": draw(_plain_values), "count": raw()}
        for _ in range(draw(strategies.integers(0, 4)))
    ]
    histogram = {f"bin{index}": raw() for index in range(draw(strategies.integers(0, 4)))}
    document: dict[str, Any] = {
        "total": raw(),
        "groups": groups,
        "histogram": histogram,
        "extra": draw(strategies.dictionaries(strategies.sampled_from("pqr"), _plain_values)),
    }
    mutation = draw(strategies.sampled_from(["none", "drop", "string", "float", "nest", "list"]))
    if mutation == "drop":
        del document[draw(strategies.sampled_from(["total", "groups", "histogram"]))]
    elif mutation == "string":
        document["total"] = str(document["total"])
    elif mutation == "float":
        document["total"] = document["total"] + 0.25
    elif mutation == "nest":
        document["histogram"] = [document["histogram"]]
    elif mutation == "list":
        document = [document]  # type: ignore[assignment]
    body = json.dumps(document).encode()
    if draw(strategies.booleans()):
        body = body[: draw(strategies.integers(0, len(body)))]
    status = draw(strategies.sampled_from([200, 200, 200, 201, 204, 301, 404, 500, 503]))
    return status, body, raws


def test_no_raw_covered_value_ever_leaves(tmp_path: Path) -> None:
    loop = asyncio.new_event_loop()
    # The stand-in sampler moves every value far away (-2e9), so that a released value can
    # never contain a raw one as a substring; the real sampler is tested statistically.
    harness = loop.run_until_complete(start_harness(tmp_path, shift=-2e9))
    counter = iter(range(10**9))

    async def check(status: int, body: bytes, raws: list[int]) -> None:
        harness.app.status, harness.app.body = status, body
        harness.app.headers = {"X-Raw": ",".join(map(str, raws))}
        reply = await harness.client.get(f"/stats/r{next(counter)}")
        text = (await reply.read()).decode("utf-8", "replace") + str(dict(reply.headers))
        for value in raws:
            assert str(value) not in text, (reply.status, text)
        if reply.status == 200:
            assert status == 200

    @hypothesis.settings(max_examples=150, deadline=None)
    @hypothesis.given(answer=upstream_answers())
    def run(answer: tuple[int, bytes, list[int]]) -> None:
        loop.run_until_complete(check(*answer))

    try:
        run()
    finally:
        loop.run_until_complete(harness.stop())
        loop.close()
