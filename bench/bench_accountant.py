"""Benchmark the accountant against a real apiserver: charges/s and latency, status size.

Usage: bench/bench_accountant.py --kubeconfig PATH [--charges N] [--clients 1,10,50]
(`make bench` runs it on its own local cluster). For each configuration it starts the
operator as a host process, creates a fresh namespace with a budget, a policy and a pod
token, fires charges from concurrent clients and prints one table row. The baseline is the
same accountant with group commit disabled (HUSH_LEDGER_MAX_BATCH=1: one status write per
charge), measured in the same run, so the rows can be read as ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

import tools
from kubernetes import client, config

from hush.api import ledger as wire
from hush.ledger import chain

import hush_resources
import operator_process
import spending


def _fire(
    url: str, cert: Path, token: str, policy_hash: str, clients: int, charges: int, workdir: Path
) -> dict[str, Any]:
    """``charges`` charges from ``clients`` closed-loop clients (hush-fixed-rate, in Go: a
    Python client cost a third of a core that the operator and apiserver then lacked),
    after an unrecorded warm-up of two charges per client (identity and policy caches)."""
    prefix = secrets.token_hex(3)
    body = workdir / f"charge-{prefix}.json"
    # What a sidecar sends: no cost, the accountant prices the route from the policy.
    body.write_text(json.dumps(spending.charge_body(f"b{prefix}-{{{{id}}}}", "bench", policy_hash)))
    bearer = workdir / f"token-{prefix}"
    bearer.write_text(token)
    result = subprocess.run(
        [str(tools.bin_dir() / "hush-fixed-rate"), f"-url={url}/v1/charge", "-method=POST",
         f"-body-file={body}", "-content-type=application/json", f"-ca-file={cert}",
         f"-bearer-file={bearer}", f"-clients={clients}", f"-requests={charges}",
         f"-warmup-requests={2 * clients}", "-timeout=600s"],
        capture_output=True,
        text=True,
        check=True,
    )  # fmt: skip
    report: dict[str, Any] = json.loads(result.stdout)
    if report["failed"]:
        raise RuntimeError(f"{report['failed']} charges refused: {report['first_failure']}")
    return report


def _mean_batch(log: Path) -> float:
    """Operations per status write, from the writer's "Committed operations" log lines."""
    sizes = [int(size) for size in re.findall(r'"operations": (\d+)', log.read_text())]
    return sum(sizes) / len(sizes) if sizes else 0.0


def run(
    kubeconfig: Path, clients: int, charges: int, max_batch: int, workdir: Path
) -> dict[str, Any]:
    api = config.new_client_from_config(config_file=str(kubeconfig))
    hush_resources.install_crds(api)
    namespace = f"hush-bench-{secrets.token_hex(3)}"
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    try:
        import waiting

        waiting.wait_for(
            lambda: core.list_namespaced_service_account(namespace).items,
            timeout=60,
            description="default ServiceAccount",
        )
        budget = spending.budget_manifest("bench", team_epsilon=1_000_000, total=1_000_000)
        hush_resources.create(api, namespace, budget)
        policy = spending.count_policy_manifest("bench", budget="bench", epsilon=0.001)
        hush_resources.create(api, namespace, policy)
        token = spending.pod_bound_token(api, namespace, "bench")
        cert, key = operator_process.write_serving_certificate(workdir)
        port = operator_process.free_port()
        os.environ["HUSH_LEDGER_MAX_BATCH"] = str(max_batch)
        log = workdir / f"operator-{namespace}.log"
        with operator_process.running_operator(
            kubeconfig,
            log,
            f"--accountant-port={port}",
            "--accountant-host=127.0.0.1",
            f"--accountant-tls-cert={cert}",
            f"--accountant-tls-key={key}",
        ) as operator:
            hush_resources.wait_for_condition(
                api, namespace, "PrivacyBudget", "bench", status="True", timeout=60
            )
            policy_hash = spending.policy_hash(api, namespace, "bench")
            cpu_before = tools.process_cpu_seconds(operator.pid)
            fired = _fire(
                f"https://127.0.0.1:{port}", cert, token, policy_hash, clients, charges, workdir
            )
            operator_cpu = tools.process_cpu_seconds(operator.pid) - cpu_before
            operator_rss = tools.process_memory_mib(operator.pid)
        budget = hush_resources.get(api, namespace, "PrivacyBudget", "bench")
        ledger = wire.Ledger.model_validate(budget["status"]["ledger"])
        return {
            "clients": clients,
            "max_batch": max_batch,
            "charges": fired["ok"],
            "charges_per_s": fired["achieved_rate"],
            "p50_ms": fired["latency_ms"]["p50"],
            "p99_ms": fired["latency_ms"]["p99"],
            "client_cpu": fired["generator_cpu_fraction"],
            "mean_batch": _mean_batch(log),
            # CPU of the operator process per charge (warm-up charges included): steadier
            # than charges/s on a shared host, where another tenant's load moves the rate.
            "operator_rss_mib": operator_rss,
            "operator_cpu_ms": 1000 * operator_cpu / (fired["ok"] + 2 * clients),
            "status_bytes": len(json.dumps(budget)),
            "ledger_sequence": ledger.sequence,
            "verifies": not chain.verify(ledger),
        }
    finally:
        os.environ.pop("HUSH_LEDGER_MAX_BATCH", None)
        core.delete_namespace(namespace)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--charges", type=int, default=3000)
    parser.add_argument("--clients", default="1,10,50")
    parser.add_argument("--size-charges", type=int, default=100_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/hush-bench"))  # noqa: S108
    arguments = parser.parse_args()
    arguments.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    header = (
        "clients  batch  charges  charges/s  p50 ms  p99 ms  status bytes  verifies  "
        "ops/write  client CPU"
    )

    def report(row: dict[str, Any]) -> None:
        rows.append(row)
        print(
            f"RESULT {row['clients']:>7}  {row['max_batch']:>5}  {row['charges']:>7}  "
            f"{row['charges_per_s']:>9.0f}  {row['p50_ms']:>6.1f}  {row['p99_ms']:>6.1f}  "
            f"{row['status_bytes']:>12}  {row['verifies']!s:>8}  {row['mean_batch']:>9.1f}  "
            f"{row['client_cpu']:>10.0%}",
            flush=True,
        )

    print("RESULT " + header, flush=True)
    for clients in [int(value) for value in arguments.clients.split(",")]:
        charges = arguments.charges if clients > 1 else max(arguments.charges // 5, 200)
        # One write per charge is slow: a smaller sample gives its rate just as well.
        report(run(arguments.kubeconfig, clients, min(charges, 1000), 1, arguments.workdir))
        report(run(arguments.kubeconfig, clients, charges, 512, arguments.workdir))
    if arguments.size_charges:
        report(run(arguments.kubeconfig, 50, arguments.size_charges, 512, arguments.workdir))
    print("RESULT ratio (group commit / one write per charge), charges/s:")
    for baseline, grouped in zip(rows[0:-1:2], rows[1::2], strict=False):
        print(
            f"RESULT   {grouped['clients']:>3} clients: "
            f"{grouped['charges_per_s'] / baseline['charges_per_s']:.1f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
