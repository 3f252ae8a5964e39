"""Benchmark noise samplers: per-call latency and bulk throughput, safe and unsafe.

Usage: .venv/bin/python bench/bench_samplers.py   (about 20 s; prints one table)

Rows:
- numpy: the speed of light, and UNSAFE (float noise, Mironov 2012): never used for noise.
- python-dp (Google's C++ library via OpenMined's binding), if installed: safe (snapping /
  granularity), but one Python call per value and no discrete Gaussian.
- OpenDP through ``hush.privacy.mechanisms`` (what Hush uses): one vector call per answer,
  cached measurement objects, lattice 2**-52 for reals; and OpenDP at its default lattice
  (2**-1074, exact but big-integer arithmetic) to show why the lattice is set explicitly.
The machine's load average is printed first: rows are only comparable within one run.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import opendp.prelude as dp

from hush.privacy import mechanisms

BUDGET_SECONDS = 0.25  # per row and size
SIZES = (1, 10, 100, 1_000, 10_000)


def _measure(call: Callable[[], object], values_per_call: int) -> tuple[float, float]:
    """(microseconds per call, values per second), timing for about BUDGET_SECONDS."""
    call()  # warm caches (measurement objects per length)
    calls = 0
    started = time.perf_counter()
    elapsed = 0.0
    while elapsed < BUDGET_SECONDS:
        call()
        calls += 1
        elapsed = time.perf_counter() - started
    per_call = elapsed / calls
    return per_call * 1e6, values_per_call / per_call


def _row(label: str, cells: list[tuple[float, float] | None]) -> None:
    text = []
    for cell in cells:
        if cell is None:
            text.append(f"{'-':>19}")
        else:
            per_call, rate = cell
            text.append(f"{per_call:>9.1f} {rate / 1e3:>8.1f}k")
    print(f"{label:<34}" + " ".join(text))


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def main() -> None:
    load = os.getloadavg()
    print(
        f"python {platform.python_version()}, {os.cpu_count()} CPUs, load average "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; opendp {_version('opendp')}, "
        f"python-dp {_version('python-dp')}, numpy {np.__version__}"
    )
    print("each cell: microseconds per call, thousands of values per second")
    header = " ".join(f"{f'n={size}':>19}" for size in SIZES)
    print(f"{'sampler':<34}{header}")

    generator = np.random.default_rng()
    _row(
        "numpy laplace (UNSAFE)",
        [_measure(lambda n=n: generator.laplace(0.0, 1.0, n), n) for n in SIZES],
    )

    try:
        from pydp.algorithms import numerical_mechanisms  # no vector API: a loop per value

        laplace_pydp: Any = numerical_mechanisms.LaplaceMechanism(1.0, 1.0)
        gaussian_pydp: Any = numerical_mechanisms.GaussianMechanism(1.0, 1e-5, 1.0)
        for label, mechanism in (
            ("python-dp laplace", laplace_pydp),
            ("python-dp gaussian", gaussian_pydp),
        ):
            cells: list[tuple[float, float] | None] = []
            for n in SIZES:
                values = [1.0] * n
                cells.append(
                    _measure(lambda m=mechanism, v=values: [m.add_noise(x) for x in v], n)
                    if n <= 1_000
                    else None
                )
            _row(label, cells)
    except ImportError:
        print("python-dp not installed: skipped")

    for mechanism, integer in (
        ("laplace", False),
        ("gaussian", False),
        ("discreteLaplace", True),
        ("discreteGaussian", True),
    ):
        sampler = mechanisms.build(mechanism, 3.0, integer=integer)
        cells = []
        for n in SIZES:
            values: list[float | int] = [7] * n if integer else [7.25] * n
            cells.append(_measure(lambda s=sampler, v=values: s.release(v), n))
        _row(f"hush/OpenDP {mechanism}", cells)

    for mechanism in ("laplace", "gaussian"):
        cells = []
        for n in SIZES:
            if n > 1_000:
                cells.append(None)
                continue
            gaussian = mechanism == "gaussian"
            measurement = (dp.m.make_gaussian if gaussian else dp.m.make_laplace)(
                dp.vector_domain(dp.atom_domain(T="f64", nan=False), size=n),
                (dp.l2_distance if gaussian else dp.l1_distance)(T="f64"),
                scale=3.0,
            )
            values_f = [7.25] * n
            cells.append(_measure(lambda m=measurement, v=values_f: m(v), n))
        _row(f"OpenDP {mechanism}, default lattice", cells)

    def build_uncached() -> object:
        return dp.m.make_laplace(
            dp.vector_domain(dp.atom_domain(T="f64", nan=False), size=10),
            dp.l1_distance(T="f64"),
            scale=3.0,
            k=mechanisms.LATTICE_EXPONENT,
        )

    per_build, _ = _measure(build_uncached, 1)
    print(f"building one OpenDP measurement (what the cache saves): {per_build:.0f} us")


if __name__ == "__main__":
    main()
