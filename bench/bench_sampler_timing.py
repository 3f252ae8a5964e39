"""Does the time a release takes reveal how large its noise was? Samplers, padded, end to end.

Usage: .venv/bin/python bench/bench_sampler_timing.py [--samples 5000] [--requests 2000]
(about 3 minutes; part of `make bench`). Prints one table per part.

A sampler whose running time grows with the magnitude of its draw (rejection loops,
big-integer arithmetic; some discrete samplers differ 25x between small and large noise)
lets a client who sees both the noisy value and the response time learn about the noise,
hence about the true value. For every mechanism the sidecar uses, at a small (1) and a
large (1e6) noise scale:

1. ``raw``: ``--samples`` single-value draws through ``hush.privacy.mechanisms`` (``build``
   then ``release([x])``, exactly what the sidecar calls for a one-value field), each timed
   with ``perf_counter_ns``.
2. ``padded``: the same draws inside ``hush.sidecar.deadline.ReleaseDeadline`` (what the
   sidecar wraps its noising step in), at a 1 ms deadline so that this part takes seconds,
   not minutes (a single draw takes ~0.3 ms; the sidecar's default is 5 ms).
3. ``step``: how long the whole padded step (``release.release_document`` and ``render``) takes for
   routes of 1, 4 and 16 count fields of 10 values each (Laplace), as percentiles, to
   choose a route's ``releaseDeadline`` (overruns are released late, so they should be rare).
4. ``proxy``: ``--requests`` requests, each with a fresh query string (no cache hits),
   through the real ``hush.sidecar.proxy.Sidecar`` in this process, in front of an
   in-process application and accountant, timed as the client sees them, with the route's
   ``releaseDeadline`` at 0s (padding off) and at the default 5ms.

Each row: Spearman's rho between |noise| and the duration, its two-sided p-value (under
independence, |rho| > 3/sqrt(n) has probability < 0.3%), the ratio of the median duration
of the draws in the top decile of |noise| to that of the bottom decile, the median duration
and, when padded, how many steps overran the deadline. The machine's load average is
printed first: durations are only comparable within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import prometheus_client
import scipy.stats
from aiohttp import ClientSession, test_utils, web

from hush.api import dppolicy
from hush.observability import logging as hush_logging
from hush.privacy import kinds, mechanisms, route_cost
from hush.reconcile import dppolicy as policy_reconcile
from hush.sidecar import accountant_client, config, deadline, proxy, release

TRUE_VALUE = 1000
SCALES = (1.0, 1e6)
PADDED_DEADLINE_SECONDS = 0.001


@dataclasses.dataclass(frozen=True)
class Row:
    label: str
    noise: np.ndarray[Any, np.dtype[np.float64]]
    seconds: np.ndarray[Any, np.dtype[np.float64]]
    overruns: int | None = None

    def cells(self) -> str:
        rho, p_value = scipy.stats.spearmanr(self.noise, self.seconds)
        low, high = np.quantile(self.noise, [0.1, 0.9])
        bottom = np.median(self.seconds[self.noise <= low])
        top = np.median(self.seconds[self.noise >= high])
        bound = 3 / np.sqrt(len(self.noise))
        verdict = "LEAKS" if abs(rho) > bound else "~0"
        overruns = "-" if self.overruns is None else str(self.overruns)
        return (
            f"{self.label:<34}{len(self.noise):>6} {rho:>+7.3f} {p_value:>9.1e} {verdict:>6}"
            f" {top / bottom:>8.3f} {np.median(self.seconds) * 1e6:>9.1f} {overruns:>8}"
        )


def _header(title: str) -> None:
    print(f"\n{title}")
    print(
        f"{'mechanism, scale':<34}{'n':>6} {'rho':>7} {'p':>9} {'':>6} {'top/bot':>8}"
        f" {'median µs':>9} {'overruns':>8}"
    )


def _draw(sampler: mechanisms.Sampler) -> float:
    """|noise| of one single-value release, as the sidecar makes it for a one-value field."""
    value: int | float = TRUE_VALUE if sampler.integer else float(TRUE_VALUE)
    return abs(float(sampler.release([value])[0]) - TRUE_VALUE)


def _samplers() -> list[tuple[str, mechanisms.Sampler]]:
    found = []
    for mechanism in kinds.MECHANISMS:
        for scale in SCALES:
            sampler = mechanisms.build(mechanism, scale, integer=kinds.is_discrete(mechanism))
            found.append((f"{mechanism}, {scale:g}", sampler))
    return found


def _measure_samplers(samples: int, padding: deadline.ReleaseDeadline | None) -> list[Row]:
    rows = []
    for label, sampler in _samplers():
        for _ in range(20):  # warm up: caches, branch predictors, the allocator
            _draw(sampler)
        noise = np.empty(samples)
        seconds = np.empty(samples)
        overruns = 0
        for index in range(samples):
            started = time.perf_counter_ns()
            if padding is None:
                noise[index] = _draw(sampler)
            else:
                padded = padding.run(functools.partial(_draw, sampler))
                noise[index] = padded.value
                overruns += padded.overran
            seconds[index] = (time.perf_counter_ns() - started) / 1e9
        rows.append(Row(label, noise, seconds, overruns if padding is not None else None))
    return rows


# -- part 3: the whole step, by route shape ----------------------------------------------


def _step_percentiles(fields: int, answers: int) -> str:
    route = dppolicy.Route.model_validate(
        {
            "path": "/shape",
            "mechanism": "laplace",
            "epsilon": 1.0,
            "fields": [{"path": f"$.f{index}[*]", "kind": "count"} for index in range(fields)],
            "domains": [{"path": f"$.f{index}[*]", "length": 10} for index in range(fields)],
        }
    )
    plan = route_cost.route_plan(route)
    seconds = np.empty(answers)
    for index in range(-20, answers):  # the first 20 warm the caches
        document = {f"f{field}": [TRUE_VALUE] * 10 for field in range(fields)}
        started = time.perf_counter_ns()
        release.render(release.release_document(document, plan, min_cohort=0))
        if index >= 0:
            seconds[index] = (time.perf_counter_ns() - started) / 1e9
    p50, p99, p999 = np.quantile(seconds, [0.5, 0.99, 0.999]) * 1e3
    return (
        f"{fields:>2} fields x 10 values: p50 {p50:.2f} ms, p99 {p99:.2f} ms, "
        f"p99.9 {p999:.2f} ms, max {seconds.max() * 1e3:.2f} ms"
    )


# -- part 4: the proxy end to end --------------------------------------------------------


def _policy(release_deadline: str) -> dppolicy.DPPolicySpec:
    """One count route per mechanism, at a large scale (sensitivity 1e5, epsilon 0.1)."""
    routes = []
    for mechanism in kinds.MECHANISMS:
        routes.append(
            {
                "path": f"/{mechanism}",
                "mechanism": mechanism,
                "epsilon": 0.1,
                "delta": 1e-6 if kinds.is_gaussian(mechanism) else 0.0,
                "releaseDeadline": release_deadline,
                "fields": [{"path": "$.count", "kind": "count", "sensitivity": 100000}],
                "queryParameters": [{"name": "warm"}, {"name": "i"}],
            }
        )
    return dppolicy.DPPolicySpec.model_validate(
        {"budgetRef": {"name": "b", "team": "t"}, "upstream": {"port": 8080}, "routes": routes}
    )


async def _application(_: web.Request) -> web.Response:
    return web.json_response({"count": TRUE_VALUE})


async def _charge(_: web.Request) -> web.Response:
    return web.json_response({"outcome": "granted", "message": "ok", "epsilonRemaining": "1"})


async def _measure_proxy(
    requests: int, release_deadline: str, token: Path, counted: dict[str, int]
) -> list[Row]:
    """``counted``: overruns seen so far per route (the metric counts across runs)."""
    upstream = web.Application()
    upstream.router.add_get("/{tail:.*}", _application)
    accountant = web.Application()
    accountant.router.add_post("/v1/charge", _charge)
    servers = [test_utils.TestServer(upstream), test_utils.TestServer(accountant)]
    for server in servers:
        await server.start_server()
    spec = _policy(release_deadline)
    settings = config.SidecarConfig(
        policy_name="bench",
        policy_hash=policy_reconcile.policy_hash(spec),
        policy=spec,
        listen_port=1,
        admin_port=2,
        upstream_port=servers[0].port or 0,
        accountant_url=f"http://127.0.0.1:{servers[1].port}",
        ca_path=None,
        token_path=str(token),
        cache_entries=0,
    )
    sidecar = proxy.Sidecar(
        settings,
        accountant=accountant_client.AccountantClient(
            url=settings.accountant_url, token_path=str(token), ca_path=None, timeout_seconds=5
        ),
    )
    front = test_utils.TestServer(sidecar.application())
    await front.start_server()
    rows = []
    try:
        async with ClientSession() as session:
            for mechanism in kinds.MECHANISMS:
                url = f"http://127.0.0.1:{front.port}/{mechanism}"
                for index in range(20):  # warm up connections and caches
                    async with session.get(url, params={"warm": str(index)}) as reply:
                        await reply.read()
                noise = np.empty(requests)
                seconds = np.empty(requests)
                for index in range(requests):
                    started = time.perf_counter_ns()
                    async with session.get(url, params={"i": str(index)}) as reply:
                        body = await reply.read()  # the last byte is what the client sees
                    seconds[index] = (time.perf_counter_ns() - started) / 1e9
                    if reply.status != 200:
                        raise RuntimeError(f"the sidecar answered {reply.status}: {body!r}")
                    noise[index] = abs(float(json.loads(body)["count"]) - TRUE_VALUE)
                overruns = prometheus_client.REGISTRY.get_sample_value(
                    "hush_sidecar_release_deadline_overruns_total", {"route": f"/{mechanism}"}
                )
                label = f"{mechanism}, deadline {release_deadline}"
                rows.append(Row(label, noise, seconds, int(overruns or 0) - counted[mechanism]))
                counted[mechanism] = int(overruns or 0)
    finally:
        await front.close()
        for server in servers:
            await server.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=5000, help="draws per sampler row")
    parser.add_argument("--requests", type=int, default=2000, help="requests per proxy row")
    arguments = parser.parse_args()
    # The access log would drown the tables; overruns are counted from the metric instead.
    hush_logging.configure(level=logging.ERROR, log_format="text")
    load = os.getloadavg()
    print(
        f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
        f"true value {TRUE_VALUE}; |noise| = |released - true|"
    )
    _header("1. raw: one draw per call through hush.privacy.mechanisms")
    for row in _measure_samplers(arguments.samples, None):
        print(row.cells())
    padding = deadline.ReleaseDeadline(PADDED_DEADLINE_SECONDS)
    _header(
        f"2. padded: the same draws inside ReleaseDeadline({PADDED_DEADLINE_SECONDS * 1e3:g} ms)"
    )
    for row in _measure_samplers(arguments.samples, padding):
        print(row.cells())
    print("\n3. step: release_document + render, by route shape (to choose releaseDeadline)")
    for fields in (1, 4, 16):
        print(_step_percentiles(fields, arguments.samples // 5))
    _header("4. proxy: response time seen by the client, count route, scale ~1e6")
    with tempfile.TemporaryDirectory() as directory:
        token = Path(directory) / "token"
        token.write_text("bench-token\n")
        counted: dict[str, int] = dict.fromkeys(kinds.MECHANISMS, 0)
        for release_deadline in ("0s", "5ms"):
            rows = asyncio.run(_measure_proxy(arguments.requests, release_deadline, token, counted))
            for row in rows:
                print(row.cells())


if __name__ == "__main__":
    main()
