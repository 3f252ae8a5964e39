"""Does the time a release takes still reveal its noise when the noise comes from a pool?

Usage: .venv/bin/python bench/bench_pooled_timing.py [--samples 5000] [--requests 2000]
(about a minute). The same measurements and table as bench/bench_sampler_timing.py (whose
helpers it reuses), for pooled noise (``hush.privacy.noise_pool``,
docs/design/0022-pooled-noise.md):

0. ``direct``: bench_sampler_timing.py's part 1 (OpenDP on the request path), in the same
   run, for comparison.
1. ``raw``: single-value releases through a ``PooledSampler`` whose pool is refilled by its
   background thread while the draws run (the sidecar's situation), for every mechanism at
   scale 1 and, where a pool exists (the discrete kinds), 1e6. Pool misses are printed.
2. ``proxy``: requests through the real ``Sidecar`` (whose default planner pools) with the
   ``releaseDeadline`` at 0s, i.e. no padding, for count routes every one of whose samplers
   is pooled (real kinds at sensitivity 1, discrete kinds at 1e5; epsilon 0.1).

Each row: Spearman's rho between |noise| and the duration with its p-value (|rho| >
3/sqrt(n) is marked LEAKS), the top/bottom-decile ratio of median durations, the median.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import prometheus_client

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_sampler_timing as base  # a sibling script, not a package

from hush.api import dppolicy
from hush.observability import logging as hush_logging
from hush.privacy import kinds, mechanisms, noise_pool


def _pooled_rows(samples: int) -> tuple[list[base.Row], int]:
    # Big enough for a row's draws: a miss would draw directly (and be timed as such).
    pools = noise_pool.NoisePools(size=samples + 100)
    samplers = []
    for mechanism in kinds.MECHANISMS:
        for scale in base.SCALES:
            direct = mechanisms.build(mechanism, scale, integer=kinds.is_discrete(mechanism))
            pooled = pools.sampler(direct)
            if pooled is not direct:
                samplers.append((f"{mechanism}, {scale:g}, pooled", pooled))
    pools.start()
    deadline = time.monotonic() + 60
    while any(len(pool) < pool.size for pool in pools.pools) and time.monotonic() < deadline:
        time.sleep(0.05)  # the first fill
    rows = []
    try:
        for label, sampler in samplers:
            for _ in range(20):
                base._draw(sampler)
            noise = np.empty(samples)
            seconds = np.empty(samples)
            for index in range(samples):
                started = time.perf_counter_ns()
                noise[index] = base._draw(sampler)
                seconds[index] = (time.perf_counter_ns() - started) / 1e9
            rows.append(base.Row(label, noise, seconds))
    finally:
        pools.close()
    return rows, pools.misses


def _poolable_policy(release_deadline: str) -> dppolicy.DPPolicySpec:
    routes = []
    for mechanism in kinds.MECHANISMS:
        routes.append(
            {
                "path": f"/{mechanism}",
                "mechanism": mechanism,
                "epsilon": 0.1,
                "delta": 1e-6 if kinds.is_gaussian(mechanism) else 0.0,
                "releaseDeadline": release_deadline,
                "fields": [
                    {
                        "path": "$.count",
                        "kind": "count",
                        "sensitivity": 100000 if kinds.is_discrete(mechanism) else 1,
                    }
                ],
                "queryParameters": [{"name": "warm"}, {"name": "i"}],
            }
        )
    return dppolicy.DPPolicySpec.model_validate(
        {"budgetRef": {"name": "b", "team": "t"}, "upstream": {"port": 8080}, "routes": routes}
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=5000, help="draws per sampler row")
    parser.add_argument("--requests", type=int, default=2000, help="requests per proxy row")
    arguments = parser.parse_args()
    hush_logging.configure(level=logging.ERROR, log_format="text")
    load = os.getloadavg()
    print(
        f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
        f"true value {base.TRUE_VALUE}; |noise| = |released - true|"
    )
    base._header("0. direct (for comparison, same run): bench_sampler_timing.py's part 1")
    for row in base._measure_samplers(arguments.samples, None):
        print(row.cells())
    base._header("1. raw: one pooled release per call, the pools refilled in the background")
    rows, misses = _pooled_rows(arguments.samples)
    for row in rows:
        print(row.cells())
    print(f"pool misses (drawn directly): {misses}")
    base._policy = _poolable_policy  # every route's sampler pooled
    base._header("2. proxy: response time seen by the client, releaseDeadline 0s, pooled")
    with tempfile.TemporaryDirectory() as directory:
        token = Path(directory) / "token"
        token.write_text("bench-token\n")
        counted: dict[str, int] = dict.fromkeys(kinds.MECHANISMS, 0)
        for row in asyncio.run(base._measure_proxy(arguments.requests, "0s", token, counted)):
            print(row.cells())
    misses = prometheus_client.REGISTRY.get_sample_value("hush_sidecar_noise_pool_misses_total")
    print(f"pool misses in the sidecar (drawn directly): {int(misses or 0)}")


if __name__ == "__main__":
    main()
