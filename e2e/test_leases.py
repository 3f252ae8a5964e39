"""Leases against the real apiserver (docs/design/0021-leases.md): 50 concurrent sidecars
speaking the lease protocol drain a quota worth N releases exactly, then are refused; a
sidecar that stops reporting has its lease written off at expiry; the ledger verifies.

The clients are asyncio coroutines that behave like sidecars: they ask for a lease, release
locally exactly as many answers as the lease holds (``releasesLeft``), report them in one
batch and renew, and settle when nothing more is granted. The drain also measures how many
releases per second the accountant accounts (docs/benchmarks.md, "Leases").
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes import client

from hush.ledger import chain

import devcluster
import hush_resources
import operator_process
import spending
import waiting

RELEASE_EPSILON = 0.001
CLIENTS = 50
# Releases a sidecar asks for per lease: about a second of a busy pod's traffic.
REQUESTED = 200


@pytest.fixture(scope="module")
def accountant(
    api_client: client.ApiClient, kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    hush_resources.install_crds(api_client)
    directory = tmp_path_factory.mktemp("accountant")
    cert, key = operator_process.write_serving_certificate(directory)
    port = operator_process.free_port()
    with operator_process.running_operator(
        kubeconfig,
        directory / "operator.log",
        f"--accountant-port={port}",
        "--accountant-host=127.0.0.1",
        f"--accountant-tls-cert={cert}",
        f"--accountant-tls-key={key}",
    ) as process:
        yield {"url": f"https://127.0.0.1:{port}", "cert": cert, "process": process}


@dataclasses.dataclass(frozen=True)
class Pods:
    tokens: list[str]
    policy: str
    policy_hash: str


def _setup(
    api_client: client.ApiClient, namespace: str, *, releases: int, pods: int, name: str
) -> Pods:
    team_epsilon = releases * RELEASE_EPSILON
    hush_resources.create(
        api_client,
        namespace,
        spending.budget_manifest(name, team_epsilon=team_epsilon, total=2 * team_epsilon),
    )
    hush_resources.create(
        api_client,
        namespace,
        spending.count_policy_manifest(name, budget=name, epsilon=RELEASE_EPSILON),
    )
    hush_resources.wait_for_condition(
        api_client, namespace, "PrivacyBudget", name, status="True", reason="Accepted"
    )
    tokens = spending.pod_bound_tokens(api_client, namespace, name, pods)
    return Pods(tokens, name, spending.policy_hash(api_client, namespace, name))


def _session(accountant: dict[str, Any]) -> aiohttp.ClientSession:
    context = operator_process.client_ssl_context(accountant["cert"])
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=context, limit=CLIENTS + 8),
        timeout=aiohttp.ClientTimeout(total=120),
    )


async def _post(
    session: aiohttp.ClientSession, url: str, token: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"}
    async with session.post(url, headers=headers, json=body) as reply:
        return reply.status, await reply.json()


@dataclasses.dataclass
class SidecarResult:
    released: int = 0
    leases: int = 0
    reports: int = 0
    refusal: tuple[int, str] | None = None


async def _greedy_sidecar(
    session: aiohttp.ClientSession, url: str, pods: Pods, index: int
) -> SidecarResult:
    """Release everything it is leased, renewing with every report, until refused."""
    token = pods.tokens[index]
    result = SidecarResult()
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    while True:
        result.leases += 1
        lease_id = f"s{index}-{result.leases}"
        status, answer = await _post(
            session,
            f"{url}/v1/leases",
            token,
            spending.lease_body(lease_id, pods.policy, pods.policy_hash, releases=REQUESTED),
        )
        if status != 200:
            result.refusal = (status, answer["outcome"])
            return result
        left, batch = answer["releasesLeft"], 0
        while left:
            # Release ``left`` answers locally (each covered by the durable lease), then
            # report them and ask for more.
            request_ids = [f"{lease_id}-{batch}-{number}" for number in range(left)]
            result.released += left
            batch += 1
            status, answer = await _post(
                session,
                f"{url}/v1/leases/{lease_id}/report",
                token,
                spending.report_body(
                    pods.policy, pods.policy_hash, batch, request_ids, renew=REQUESTED, time=now
                ),
            )
            if status != 200:
                raise AssertionError(f"report refused: {status} {answer}")
            result.reports += 1
            left = answer["releasesLeft"]
        batch += 1
        status, answer = await _post(
            session,
            f"{url}/v1/leases/{lease_id}/settle",
            token,
            spending.report_body(pods.policy, pods.policy_hash, batch, []),
        )
        if (status, answer["outcome"]) != (200, "settled"):
            raise AssertionError(f"settlement refused: {status} {answer}")


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measured_pids(accountant: dict[str, Any], uses_dev_cluster: bool) -> dict[str, int]:
    """The operator's pid, and the apiserver's and etcd's on a ``hush dev`` cluster."""
    pids = {"operator": int(accountant["process"].pid)}
    if uses_dev_cluster:
        found = devcluster.pids(devcluster.status())
        pids.update({name: found[name] for name in ("kube-apiserver", "etcd") if name in found})
    return pids


def test_fifty_sidecars_drain_a_quota_exactly(
    api_client: client.ApiClient,
    namespace: str,
    accountant: dict[str, Any],
    uses_dev_cluster: bool,
) -> None:
    releases = 100_000  # the quota is worth exactly this many releases
    pods = _setup(api_client, namespace, releases=releases, pods=CLIENTS, name="drain")
    pids = _measured_pids(accountant, uses_dev_cluster)

    async def drain() -> tuple[list[SidecarResult], float, dict[str, float]]:
        async with _session(accountant) as session:
            cpu = {name: _cpu_seconds(pid) for name, pid in pids.items()}
            cpu["clients"] = time.process_time()
            started = time.perf_counter()
            results = await asyncio.gather(
                *(_greedy_sidecar(session, accountant["url"], pods, n) for n in range(CLIENTS))
            )
            elapsed = time.perf_counter() - started
            used = {name: _cpu_seconds(pid) - cpu[name] for name, pid in pids.items()}
            used["clients"] = time.process_time() - cpu["clients"]
            return list(results), elapsed, used

    results, elapsed, cpu = asyncio.run(drain())
    released = sum(result.released for result in results)
    size = len(json.dumps(hush_resources.get(api_client, namespace, "PrivacyBudget", "drain")))
    cores = ", ".join(f"{name} {seconds / elapsed:.2f}" for name, seconds in cpu.items())
    print(
        f"\nLEASES {CLIENTS} clients: {released} releases in {elapsed:.2f} s = "
        f"{released / elapsed:.0f} releases/s accounted; "
        f"{sum(r.leases for r in results)} grants, {sum(r.reports for r in results)} reports; "
        f"CPU (cores): {cores}; status {size} bytes"
    )
    assert released == releases
    assert {result.refusal for result in results} == {(429, "exhausted")}

    ledger = spending.ledger(api_client, namespace, "drain")
    assert ledger.leases == []
    assert ledger.leases_written_off == 0
    assert chain.verify(ledger) == []
    budget = hush_resources.get(api_client, namespace, "PrivacyBudget", "drain")
    team = budget["status"]["teams"][0]
    assert team["epsilon"]["remaining"] == "0"
    assert ledger.spent[0] == releases * 1_000_000  # epsilon 0.001 in 1e-9 units


async def _paced_sidecar(
    session: aiohttp.ClientSession, url: str, pods: Pods, index: int, *, rate: int, seconds: float
) -> int:
    """Release ``rate`` answers a second (as far as the lease allows) for ``seconds``,
    reporting and renewing every half second as a sidecar would, then settle."""
    token, lease_id, tick = pods.tokens[index], f"p{index}", 0.5
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    status, answer = await _post(
        session,
        f"{url}/v1/leases",
        token,
        spending.lease_body(lease_id, pods.policy, pods.policy_hash, releases=rate),
    )
    assert status == 200, answer
    left, batch, released = answer["releasesLeft"], 0, 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    # Spread the clients over the tick, as independent pods would be.
    await asyncio.sleep(tick * index / CLIENTS)
    while loop.time() < deadline:
        started = loop.time()
        count = min(left, int(rate * tick))
        request_ids = [f"{lease_id}-{batch}-{number}" for number in range(count)]
        released += count
        batch += 1
        status, answer = await _post(
            session,
            f"{url}/v1/leases/{lease_id}/report",
            token,
            # The lease holds about two ticks of traffic: the answer is not awaited to
            # release, so the accountant may let the report share a later write.
            spending.report_body(
                pods.policy,
                pods.policy_hash,
                batch,
                request_ids,
                renew=rate,
                deferrable=left - count >= count,
                time=now,
            ),
        )
        assert status == 200, answer
        left = answer["releasesLeft"]
        await asyncio.sleep(max(0.0, tick - (loop.time() - started)))
    status, answer = await _post(
        session,
        f"{url}/v1/leases/{lease_id}/settle",
        token,
        spending.report_body(pods.policy, pods.policy_hash, batch + 1, []),
    )
    assert (status, answer["outcome"]) == (200, "settled"), answer
    return released


def test_fifty_sidecars_at_a_steady_rate_cost_the_accountant_little(
    api_client: client.ApiClient,
    namespace: str,
    accountant: dict[str, Any],
    uses_dev_cluster: bool,
) -> None:
    """50 sidecars releasing 400 answers/s each (20,000/s in all), reporting every 0.5 s:
    the accountant's and apiserver's CPU at the issue's target rate; the ledger is exact."""
    rate, seconds = 400, 10.0
    pods = _setup(api_client, namespace, releases=10_000_000, pods=CLIENTS, name="steady")
    pids = _measured_pids(accountant, uses_dev_cluster)

    async def run() -> tuple[int, float, dict[str, float]]:
        async with _session(accountant) as session:
            cpu = {name: _cpu_seconds(pid) for name, pid in pids.items()}
            cpu["clients"] = time.process_time()
            started = time.perf_counter()
            counts = await asyncio.gather(
                *(
                    _paced_sidecar(session, accountant["url"], pods, n, rate=rate, seconds=seconds)
                    for n in range(CLIENTS)
                )
            )
            elapsed = time.perf_counter() - started
            used = {name: _cpu_seconds(pid) - cpu[name] for name, pid in pids.items()}
            used["clients"] = time.process_time() - cpu["clients"]
            return sum(counts), elapsed, used

    released, elapsed, cpu = asyncio.run(run())
    cores = ", ".join(f"{name} {used / elapsed:.2f}" for name, used in cpu.items())
    print(
        f"\nLEASES-STEADY {CLIENTS} clients at {rate}/s each: {released} releases in "
        f"{elapsed:.2f} s = {released / elapsed:.0f} releases/s accounted; CPU (cores): {cores}"
    )
    ledger = spending.ledger(api_client, namespace, "steady")
    assert ledger.leases == []
    assert ledger.spent[0] == released * 1_000_000  # settled: exactly what was released
    assert chain.verify(ledger) == []


def test_a_sidecar_that_stops_reporting_is_written_off_at_expiry(
    api_client: client.ApiClient, namespace: str, accountant: dict[str, Any], kubeconfig: Path
) -> None:
    pods = _setup(api_client, namespace, releases=1000, pods=1, name="crash")
    token, url = pods.tokens[0], accountant["url"]

    async def crash() -> tuple[int, int]:
        async with _session(accountant) as session:
            status, answer = await _post(
                session,
                f"{url}/v1/leases",
                token,
                spending.lease_body(
                    "doomed", pods.policy, pods.policy_hash, releases=100, seconds=3
                ),
            )
            assert status == 200, answer
            granted = answer["releasesLeft"]
            status, answer = await _post(
                session,
                f"{url}/v1/leases/doomed/report",
                token,
                spending.report_body(pods.policy, pods.policy_hash, 1, ["a", "b", "c"]),
            )
            assert (status, answer["releasesLeft"]) == (200, granted - 3), answer
            # Seven more answers leave before the sidecar is killed: never reported.
            return granted, 3 + 7

    granted, released = asyncio.run(crash())
    assert granted == 100

    def written_off() -> bool:
        ledger = spending.ledger(api_client, namespace, "crash")
        return ledger.leases == [] and ledger.leases_written_off == 1

    waiting.wait_for(written_off, timeout=30, interval=0.5, description="the lease's write-off")
    ledger = spending.ledger(api_client, namespace, "crash")
    assert chain.verify(ledger) == []
    assert ledger.spent[0] >= released * 1_000_000  # never less than what left
    assert ledger.spent[0] == granted * 1_000_000  # the unused 90 stay spent
    assert ledger.written_off == [97 * 1_000_000, 0]
    assert [entry.action for entry in ledger.entries] == ["lease", "report", "write-off"]

    async def late_report() -> tuple[int, dict[str, Any]]:
        async with _session(accountant) as session:
            return await _post(
                session,
                f"{url}/v1/leases/doomed/report",
                token,
                spending.report_body(pods.policy, pods.policy_hash, 2, ["d"]),
            )

    status, answer = asyncio.run(late_report())
    assert (status, answer["outcome"]) == (410, "expired")

    environment = {"KUBECONFIG": str(kubeconfig), "PATH": "/usr/bin:/bin"}
    for action, expected in (
        ("verify", "verified: 3 entries"),
        ("show", "written off at expiry: 1"),
    ):
        shown = subprocess.run(
            [sys.executable, "-m", "hush", "ledger", action, "crash", "-n", namespace],
            capture_output=True,
            text=True,
            env=environment,
            check=False,
            timeout=60,
        )
        assert shown.returncode == 0, shown.stderr
        assert expected in shown.stdout, shown.stdout
