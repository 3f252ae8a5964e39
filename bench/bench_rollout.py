"""Benchmark policy-change rollouts on a real control plane (Deployment controller + kwok).

Usage: bench/bench_rollout.py --kubeconfig PATH [--deployments 1,10,100]
(`make bench` runs it on its own local cluster). The operator runs as a host process with
its webhooks registered (injection stamps each pod's policy hash). For each size N, a fresh
namespace gets a budget, a policy and N one-replica Deployments that use it; once
``RolloutComplete`` holds, the policy's epsilon changes and we measure

- *triggered*: from the spec change to the last Deployment carrying the new
  ``hush.dev/policy-rollout`` annotation (seen through a watch);
- *complete*: from the spec change to ``RolloutComplete=True`` at the new hash;

and the operator's peak RSS (``VmHWM``) over the run. The baseline, measured in the same
run on the same cluster, is a plain client that patches the same annotation into the N
Deployments one after another (what ``kubectl rollout restart`` does) and waits until every
pod is new: the ratio shows what Hush adds on top of the controllers' own work.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

import tools
from kubernetes import client, config, watch

from hush.rollout import trigger

import hush_resources
import spending
import waiting
import webhook_setup

TIMEOUT = 900


def _deployment(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": {"hush.dev/policy": "bench"}},
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "image": "registry.invalid/app@sha256:" + "a" * 64,
                            "ports": [{"name": "http", "containerPort": 8080}],
                        }
                    ]
                },
            },
        },
    }


def _policy(api: client.ApiClient, namespace: str) -> dict[str, Any]:
    return hush_resources.get(api, namespace, "DPPolicy", "bench")


def _rollout_done(api: client.ApiClient, namespace: str, desired: str) -> bool:
    policy = _policy(api, namespace)
    rollout = (policy.get("status") or {}).get("rollout") or {}
    found = hush_resources.condition(policy, "RolloutComplete")
    return bool(
        rollout.get("desiredHash") == desired and found is not None and found["status"] == "True"
    )


def _pods_all_new(api: client.ApiClient, namespace: str, old: set[str], count: int) -> bool:
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace).items
    live = [p for p in pods if p.metadata.deletion_timestamp is None]
    names = {p.metadata.name for p in pods}
    return (
        len(live) == count and not (names & old) and all(p.status.phase == "Running" for p in live)
    )


def _setup(api: client.ApiClient, count: int) -> tuple[str, str]:
    namespace = f"hush-bench-rollout-{secrets.token_hex(3)}"
    client.CoreV1Api(api).create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace))
    )
    hush_resources.create(api, namespace, spending.budget_manifest("bench", team_epsilon=1.0))
    hush_resources.create(
        api, namespace, spending.count_policy_manifest("bench", budget="bench", epsilon=0.1)
    )
    policy = hush_resources.wait_for_condition(
        api, namespace, "DPPolicy", "bench", status="True", reason="Accepted"
    )
    apps = client.AppsV1Api(api)
    for index in range(count):
        apps.create_namespaced_deployment(namespace, _deployment(f"web-{index:03d}"))
    current = str(policy["status"]["policyHash"])
    waiting.wait_for(
        lambda: (
            _rollout_done(api, namespace, current)
            and _policy(api, namespace)["status"]["rollout"]["totalWorkloads"] == count
        ),
        timeout=TIMEOUT,
        interval=0.5,
        description=f"{count} Deployments complete at the first hash",
    )
    return namespace, current


def _watch_annotations(
    api: client.ApiClient, namespace: str, count: int, value: str, seen: dict[str, float]
) -> threading.Thread:
    def run() -> None:
        stream = watch.Watch()
        for event in stream.stream(
            client.AppsV1Api(api).list_namespaced_deployment, namespace, timeout_seconds=TIMEOUT
        ):
            deployment = event["object"]
            annotations = deployment.spec.template.metadata.annotations or {}
            if annotations.get(trigger.ROLLOUT_ANNOTATION) == value:
                seen.setdefault(deployment.metadata.name, time.perf_counter())
            if len(seen) >= count:
                stream.stop()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def measure_hush(api: client.ApiClient, count: int, *, complete: bool = True) -> dict[str, float]:
    namespace, old_hash = _setup(api, count)
    seen: dict[str, float] = {}
    policy = _policy(api, namespace)
    routes = policy["spec"]["routes"]
    routes[0]["epsilon"] = 0.2
    # The new hash is known once the operator reconciles; watch for any value != old.
    started = time.perf_counter()
    hush_resources.patch_spec(api, namespace, "DPPolicy", "bench", {"routes": routes})
    new_hash = waiting.wait_for(
        lambda: (
            (_policy(api, namespace).get("status") or {}).get("policyHash")
            if (_policy(api, namespace).get("status") or {}).get("policyHash") != old_hash
            else None
        ),
        timeout=60,
        interval=0.05,
        description="the new policy hash",
    )
    watcher = _watch_annotations(api, namespace, count, str(new_hash), seen)
    watcher.join(TIMEOUT)
    triggered = max(seen.values()) - started
    if not complete:
        client.CoreV1Api(api).delete_namespace(namespace)
        return {"triggered_s": triggered, "complete_s": float("nan")}
    waiting.wait_for(
        lambda: _rollout_done(api, namespace, str(new_hash)),
        timeout=TIMEOUT,
        interval=0.25,
        description="RolloutComplete at the new hash",
    )
    complete = time.perf_counter() - started
    client.CoreV1Api(api).delete_namespace(namespace)
    return {"triggered_s": triggered, "complete_s": complete}


def measure_baseline(api: client.ApiClient, count: int) -> dict[str, float]:
    """The same rollout started by a plain client, patching one Deployment at a time."""
    namespace, _ = _setup(api, count)
    old = {p.metadata.name for p in client.CoreV1Api(api).list_namespaced_pod(namespace).items}
    apps = client.AppsV1Api(api)
    started = time.perf_counter()
    for index in range(count):
        apps.patch_namespaced_deployment(
            f"web-{index:03d}",
            namespace,
            {"spec": {"template": {"metadata": {"annotations": {"bench/restart": "1"}}}}},
        )
    triggered = time.perf_counter() - started
    waiting.wait_for(
        lambda: _pods_all_new(api, namespace, old, count),
        timeout=TIMEOUT,
        interval=0.25,
        description="every pod replaced",
    )
    complete = time.perf_counter() - started
    client.CoreV1Api(api).delete_namespace(namespace)
    return {"triggered_s": triggered, "complete_s": complete}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--deployments", default="1,10,100")
    parser.add_argument(
        "--trigger-only",
        action="store_true",
        help="Measure only the time to the last rollout started (no baseline, no completion).",
    )
    arguments = parser.parse_args()
    api = config.new_client_from_config(config_file=str(arguments.kubeconfig))
    hush_resources.install_crds(api)
    sizes = [int(size) for size in arguments.deployments.split(",")]
    workdir = Path(f"/tmp/hush-bench-rollout-{secrets.token_hex(3)}")  # noqa: S108
    workdir.mkdir(parents=True)
    rows = []
    with webhook_setup.operator_with_webhooks(api, arguments.kubeconfig, workdir) as running:
        pid = running["process"].pid
        for size in sizes:
            if arguments.trigger_only:
                hush = measure_hush(api, size, complete=False)
                row = {
                    "deployments": size,
                    "hush_triggered_s": round(hush["triggered_s"], 2),
                    "operator_peak_rss_mib": round(tools.process_memory_mib(pid, "VmHWM"), 1),
                }
                print(json.dumps(row), flush=True)
                continue
            baseline = measure_baseline(api, size)
            hush = measure_hush(api, size)
            rows.append(
                {
                    "deployments": size,
                    "hush_triggered_s": round(hush["triggered_s"], 2),
                    "hush_complete_s": round(hush["complete_s"], 2),
                    "baseline_triggered_s": round(baseline["triggered_s"], 2),
                    "baseline_complete_s": round(baseline["complete_s"], 2),
                    "complete_ratio": round(hush["complete_s"] / baseline["complete_s"], 2),
                    "operator_peak_rss_mib": round(tools.process_memory_mib(pid, "VmHWM"), 1),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    print()
    print(
        f"{'deployments':>11} {'triggered':>10} {'complete':>9} {'baseline trig':>13} "
        f"{'baseline done':>13} {'ratio':>6} {'peak RSS':>9}"
    )
    for row in rows:
        print(
            f"{row['deployments']:>11} {row['hush_triggered_s']:>9.2f}s "
            f"{row['hush_complete_s']:>8.2f}s {row['baseline_triggered_s']:>12.2f}s "
            f"{row['baseline_complete_s']:>12.2f}s {row['complete_ratio']:>6.2f} "
            f"{row['operator_peak_rss_mib']:>6.1f} MiB"
        )
    target = next((row for row in rows if row["deployments"] == 100), None)
    if target is not None:
        verdict = "met" if target["hush_triggered_s"] <= 5 else "MISSED"
        print(f"Target: 100 Deployments triggered within 5 s: {verdict}")
    print(json.dumps({"bench": "rollout", "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
