"""Compare accountant variants at 50 clients, alternating runs on one cluster.

Usage:
  bench/compare_accountant.py --kubeconfig PATH --arm NAME=ENV[+ENV...] --arm ... \
      [--repeats 3] [--charges 6000] [--clients 50]

Each arm is a label and the environment its operator runs with, e.g.
``--arm before=PYTHONPATH=/tmp/base/operator --arm after=PYTHONPATH=$PWD/operator`` (an
older checkout's source tree put first on the path) or
``--arm gap5=HUSH_LEDGER_GATHER_MS=5 --arm gap10=HUSH_LEDGER_GATHER_MS=10``. The arms run
in turn, ``--repeats`` rounds, so a slow minute on a shared machine hits every arm alike;
each run is one ``bench_accountant.run`` (a fresh namespace, budget and operator process,
group commit on). Prints every run and each arm's median charges/s and operator CPU per charge.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import bench_accountant


def _arm(text: str) -> tuple[str, dict[str, str]]:
    label, _, assignments = text.partition("=")
    if not label or not assignments:
        raise argparse.ArgumentTypeError(f"expected NAME=VAR=VALUE[+VAR=VALUE], got {text!r}")
    environment = {}
    for assignment in assignments.split("+"):
        name, separator, value = assignment.partition("=")
        if not separator:
            raise argparse.ArgumentTypeError(f"expected VAR=VALUE, got {assignment!r}")
        environment[name] = value
    return label, environment


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--arm", type=_arm, action="append", required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--charges", type=int, default=6000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/hush-bench"))  # noqa: S108
    arguments = parser.parse_args()
    arguments.workdir.mkdir(parents=True, exist_ok=True)
    rates: dict[str, list[float]] = {label: [] for label, _ in arguments.arm}
    cpu: dict[str, list[float]] = {label: [] for label, _ in arguments.arm}
    for _ in range(arguments.repeats):
        for label, environment in arguments.arm:
            saved = {name: os.environ.get(name) for name in environment}
            os.environ.update(environment)
            try:
                row = bench_accountant.run(
                    arguments.kubeconfig, arguments.clients, arguments.charges, 512,
                    arguments.workdir,
                )  # fmt: skip
            finally:
                for name, value in saved.items():
                    if value is None:
                        os.environ.pop(name, None)
                    else:
                        os.environ[name] = value
            rates[label].append(row["charges_per_s"])
            cpu[label].append(row["operator_cpu_ms"])
            print(
                f"RESULT {label}: {row['charges_per_s']:.0f} charges/s, p50 {row['p50_ms']:.1f} ms,"
                f" p99 {row['p99_ms']:.1f} ms, {row['mean_batch']:.1f} operations per write, "
                f"operator CPU {row['operator_cpu_ms']:.3f} ms per charge, "
                f"RSS {row['operator_rss_mib']:.0f} MiB, "
                f"ledger verifies: {row['verifies']}",
                flush=True,
            )
    for label, values in rates.items():
        print(
            f"RESULT median {label}: {statistics.median(values):.0f} charges/s "
            f"({', '.join(f'{value:.0f}' for value in values)}); operator CPU "
            f"{statistics.median(cpu[label]):.3f} ms per charge "
            f"({', '.join(f'{value:.3f}' for value in cpu[label])})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
