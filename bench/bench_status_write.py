"""What one PrivacyBudget status write costs the apiserver, next to a ConfigMap write.

Usage: bench/bench_status_write.py --kubeconfig PATH --apiserver-pid PID [--writes 60]

The accountant's throughput is bounded by its status writes (docs/benchmarks.md, "The
accountant on a real apiserver"). This writes, in a loop and one at a time, a realistic
PrivacyBudget status (a ledger after 5,000 charges from 50 pods, compacted as the
accountant compacts it), the same status without its recent request ids, and without them
and its entries; then a ConfigMap of 2 and 10 KB. For each it prints the latency per write
and the apiserver's CPU time per write (from /proc/PID/stat), so the cost of the custom
resource's write path can be read against the built-in type's.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import decimal
import json
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tools
from kubernetes import client, config

from hush.api import ledger as wire
from hush.api import privacybudget
from hush.ledger import book, limits
from hush.privacy import accounting
from hush.reconcile import privacybudget as budget_status

GROUP, VERSION, PLURAL = "hush.dev", "v1alpha1", "privacybudgets"
SPEC: dict[str, Any] = {
    "dataset": "bench",
    "epsilon": 1_000_000.0,
    "delta": 1e-6,
    "quotas": [{"team": "analytics", "epsilon": 1_000_000.0, "delta": 1e-6}],
    "accounting": "pure",
}
NOW = datetime.datetime(2026, 11, 23, tzinfo=datetime.UTC)


def realistic_status(charges: int = 5000) -> dict[str, Any]:
    spec = privacybudget.PrivacyBudgetSpec.model_validate(SPEC)
    ledger = book.Book(wire.Ledger(), limits.limits_for(spec))
    for number in range(charges):
        ledger.charge(
            book.ChargeRequest(
                request_id=f"bench-{number:06d}-{secrets.token_hex(4)}",
                consumer=wire.Consumer(
                    namespace="bench", pod=f"app-{number % 50}", policy="bench", team="analytics"
                ),
                release=accounting.Release(
                    mechanism="laplace",
                    epsilon=decimal.Decimal("0.001"),
                    delta=decimal.Decimal(0),
                    sensitivity=decimal.Decimal(1),
                    scale=decimal.Decimal(1000),
                ),
            ),
            NOW,
        )
        if number % 50 == 49:
            ledger.snapshot()  # one group commit: compaction as the accountant does it
    status = budget_status.evaluate(
        SPEC, generation=1, status={}, ledger=ledger.snapshot(), now=NOW
    )
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)


def measure(label: str, pid: int, writes: int, write: Callable[[int], Any], size: int) -> None:
    cpu, started = tools.process_cpu_seconds(pid), time.perf_counter()
    for number in range(writes):
        write(number)
    elapsed, spent = time.perf_counter() - started, tools.process_cpu_seconds(pid) - cpu
    print(
        f"{label:<44} {size:>7} B  {elapsed / writes * 1000:6.1f} ms/write  "
        f"apiserver {spent / writes * 1000:6.1f} ms CPU/write",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--apiserver-pid", type=int, required=True)
    parser.add_argument("--writes", type=int, default=60)
    arguments = parser.parse_args()
    api = config.new_client_from_config(config_file=str(arguments.kubeconfig))
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    namespace = f"hush-bench-status-{secrets.token_hex(3)}"
    core.create_namespace({"metadata": {"name": namespace}})
    try:
        custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL,
            {"apiVersion": f"{GROUP}/{VERSION}", "kind": "PrivacyBudget",
             "metadata": {"name": "bench"}, "spec": SPEC},
        )  # fmt: skip
        full = realistic_status()
        without_recent = copy.deepcopy(full)
        without_recent["ledger"]["recentRequests"] = []
        bare = copy.deepcopy(without_recent)
        bare["ledger"]["entries"] = []
        for label, status in (
            ("PrivacyBudget status (5,000 charges)", full),
            ("  without the 64 recent request ids", without_recent),
            ("  without recent ids and entries", bare),
        ):
            current = custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, "bench"
            )

            def write(number: int, status: dict[str, Any] = status) -> None:
                nonlocal current
                body = {
                    "apiVersion": current["apiVersion"],
                    "kind": current["kind"],
                    "metadata": {
                        "name": "bench",
                        "namespace": namespace,
                        "resourceVersion": current["metadata"]["resourceVersion"],
                    },
                    "spec": current["spec"],
                    "status": {**status, "observedGeneration": 1 + number % 2},
                }
                current = custom.replace_namespaced_custom_object_status(
                    GROUP, VERSION, namespace, PLURAL, "bench", body
                )

            measure(
                label, arguments.apiserver_pid, arguments.writes, write, len(json.dumps(status))
            )
        core.create_namespaced_config_map(namespace, {"metadata": {"name": "bench"}})
        for size in (2_000, 10_000):

            def write_map(number: int, size: int = size) -> None:
                core.replace_namespaced_config_map(
                    "bench", namespace,
                    {"metadata": {"name": "bench"}, "data": {"a": "x" * size, "n": str(number)}},
                )  # fmt: skip

            measure(f"ConfigMap of {size:,} bytes", arguments.apiserver_pid, arguments.writes,
                    write_map, size)  # fmt: skip
    finally:
        core.delete_namespace(namespace)
    return 0


if __name__ == "__main__":
    sys.exit(main())
