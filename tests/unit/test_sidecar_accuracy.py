"""``X-DP-Accuracy`` on released answers: each field's 95 % half-width, from the route's plan.

Uses the in-process harness of test_sidecar_proxy (a fake application and accountant around
the real proxy). The expected half-widths are the closed forms at the plan's scales, not
hush.privacy.accuracy's own numbers."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

from hush.api import dppolicy
from hush.privacy import route_cost
from hush.sidecar import proxy
from tests.unit.test_sidecar_proxy import POLICY_SPEC, start_harness


def _header(value: str) -> dict[str, float]:
    return {path: float(width) for path, width in (part.split("=") for part in value.split(";"))}


def _scales(route_path: str) -> list[float]:
    spec = dppolicy.DPPolicySpec.model_validate(POLICY_SPEC)
    [route] = [route for route in spec.routes if route.path == route_path]
    return [field.plan.sampler.scale for field in route_cost.route_plan(route).fields]


async def test_a_release_carries_each_fields_95_percent_half_width(tmp_path: Path) -> None:
    harness = await start_harness(tmp_path)
    try:
        harness.app.body = b'{"total": 40, "groups": [{"name": "a", "count": 9}]}'
        reply = await harness.client.get("/stats/north")
        assert reply.status == 200
        widths = _header(reply.headers["X-DP-Accuracy"])
        # Laplace: P[|Z| >= a] = e^(-a/b) = 0.05 at a = b ln 20; rounded up, 4 digits.
        assert list(widths) == ["$.total", "$.groups[*].count", "$.histogram.*"]
        for (path, width), scale in zip(widths.items(), _scales("/stats/{region}"), strict=True):
            expected = scale * math.log(20)
            assert expected <= width <= expected * 1.001, path

        count = await harness.client.get("/count")
        [(path, width)] = _header(count.headers["X-DP-Accuracy"]).items()
        [scale] = _scales("/count")
        assert path == "$.count"
        assert scale * math.log(20) <= width <= scale * math.log(20) * 1.001

        again = await harness.client.get("/count")  # a cached answer keeps its labels
        assert again.headers["X-DP-Cache"] == "hit"
        assert again.headers["X-DP-Accuracy"] == count.headers["X-DP-Accuracy"]
    finally:
        await harness.stop()


async def test_the_header_does_not_depend_on_the_answer(tmp_path: Path) -> None:
    harness = await start_harness(tmp_path)
    try:
        harness.app.body = b'{"count": 3}'
        small = await harness.client.get("/count?fresh=1")
        harness.app.body = b'{"count": 3000000}'
        large = await harness.client.get("/count?fresh=2")
        assert small.headers["X-DP-Accuracy"] == large.headers["X-DP-Accuracy"]
    finally:
        await harness.stop()


async def test_a_whole_answer_failure_carries_no_accuracy(tmp_path: Path) -> None:
    harness = await start_harness(tmp_path)
    try:
        harness.app.status = 500
        reply = await harness.client.get("/count")
        assert reply.status == 502
        assert "X-DP-Accuracy" not in reply.headers
    finally:
        await harness.stop()


def test_a_plan_whose_samplers_have_no_usable_scale_gets_no_header() -> None:
    spec = dppolicy.DPPolicySpec.model_validate(POLICY_SPEC)
    route = spec.routes[1]
    plan = route_cost.route_plan(route)
    assert proxy.accuracy_header(plan) is not None

    class NoScale:
        mechanism = "laplace"
        scale = 0.0
        integer = False

    broken_field = plan.fields[0]
    broken = route_cost.RoutePlan(
        route=plan.route,
        mechanism=plan.mechanism,
        fields=(
            route_cost.FieldPlan(
                field=broken_field.field,
                domains=broken_field.domains,
                length=broken_field.length,
                sensitivity_length=broken_field.sensitivity_length,
                plan=type(broken_field.plan)(
                    sampler=NoScale(),  # type: ignore[arg-type]
                    release=broken_field.plan.release,
                    length=broken_field.plan.length,
                ),
            ),
        ),
        selections=(),
        charge=plan.charge,
    )
    assert proxy.accuracy_header(broken) is None


STATISTICS_POLICY: dict[str, Any] = {
    "budgetRef": {"name": "survey", "team": "analytics"},
    "upstream": {"port": 8080},
    "routes": [
        {
            "path": "/laplace",
            "mechanism": "laplace",
            "epsilon": 0.5,
            "releaseDeadline": "0s",  # no padding: 10,000 releases in seconds
            "fields": [{"path": "$.count", "kind": "count"}],
            "queryParameters": [{"name": "n"}],
        }
    ],
}
RELEASES = 10_000
TRUE_COUNT = 1234


async def test_the_95_percent_interval_covers_the_truth_95_percent_of_the_time(
    tmp_path: Path,
) -> None:
    # 10,000 releases through the real proxy and OpenDP's samplers, each a fresh query (no
    # cache hit): the released count is within the header's half-width of the truth 95 % of
    # the time, +-1 % (4.6 standard errors: a false failure about once in 250,000 runs).
    # test_privacy_accuracy checks every mechanism's sampler the same way, without the HTTP
    # round trips (25 s here).
    harness = await start_harness(tmp_path, policy=STATISTICS_POLICY)
    try:
        harness.app.body = json.dumps({"count": TRUE_COUNT}).encode()
        covered = 0
        widths: set[str] = set()

        async def one(number: int) -> tuple[float, str]:
            reply = await harness.client.get(f"/laplace?n={number}")
            assert reply.status == 200
            answer = await reply.json()
            return float(answer["count"]), reply.headers["X-DP-Accuracy"]

        for start in range(0, RELEASES, 200):
            for value, header in await asyncio.gather(*(one(n) for n in range(start, start + 200))):
                widths.add(header)
                [width] = _header(header).values()
                covered += abs(value - TRUE_COUNT) < width
        assert len(widths) == 1
        assert len(harness.accountant.charged) == RELEASES
        assert 0.94 <= covered / RELEASES <= 0.96, covered
    finally:
        await harness.stop()
