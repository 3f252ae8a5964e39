"""Crash and takeover against the real apiserver: SIGKILL the accountant in the middle of a
burst of charges and check that no acknowledged charge is lost and none is counted twice.

Clients behave like sidecars: each charge has a request id, and a charge that got no
definitive answer (connection error, 503) is sent again with the *same* id until it gets
one. A charge may be recorded and then lose its answer in the crash; its retry must be
answered "duplicate" (200) from the ledger, never charged again.

The check does not depend on compaction (old entries are folded into a checkpoint): every
200 answer carries the ledger sequence of its entry, and the acknowledged request ids must
map one-to-one onto the sequences 1..N of the ledger, with the team's spend equal to N
charges. So every recorded charge was acknowledged, and every acknowledged one was recorded
exactly once.

Each test leads its own Lease in its own namespace, so that runs sharing a cluster never
contend for one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes import client

from hush.api import ledger as wire
from hush.ledger import chain

import hush_resources
import operator_process
import spending
import waiting

AUDIENCE = "hush-accountant"
ROUTE = "/count"
RELEASE_EPSILON = "0.001"
BUDGET = "survey"
LEASE = "hush-operator"
CLIENTS = 20
RETRY_DELAY = 0.2  # seconds between a client's attempts at one charge
BURST_DEADLINE = 150.0  # seconds for a whole burst, crashes and restarts included


# -- operator processes -------------------------------------------------------------------


@dataclasses.dataclass
class Operators:
    """Operator processes for one test: started with leader election on a Lease in the
    test's namespace; every one still running is stopped, and every log printed, at the end.
    """

    kubeconfig: Path
    directory: Path
    lease_namespace: str
    stack: contextlib.ExitStack
    started: int = 0

    def __post_init__(self) -> None:
        self.cert, self.key = operator_process.write_serving_certificate(self.directory)

    def start(self, port: int) -> subprocess.Popen[bytes]:
        """Start one operator serving the accountant on ``port``; wait for its liveness."""
        self.started += 1
        return self.stack.enter_context(
            operator_process.running_operator(
                self.kubeconfig,
                self.directory / f"operator-{self.started}-port-{port}.log",
                f"--accountant-port={port}",
                "--accountant-host=127.0.0.1",
                f"--accountant-tls-cert={self.cert}",
                f"--accountant-tls-key={self.key}",
                "--leader-election",
                f"--leader-election-namespace={self.lease_namespace}",
                f"--leader-election-name={LEASE}",
            )
        )

    def readyz(self, port: int) -> int | None:
        """The status of ``GET /readyz`` (None when nothing answers)."""
        context = operator_process.client_ssl_context(self.cert)
        try:
            with urllib.request.urlopen(
                f"https://127.0.0.1:{port}/readyz", timeout=2, context=context
            ) as reply:
                return int(reply.status)
        except urllib.error.HTTPError as error:
            return int(error.code)
        except OSError:
            return None

    def wait_ready(self, port: int, *, timeout: float) -> None:
        waiting.wait_for(
            lambda: self.readyz(port) == 200,
            timeout=timeout,
            interval=0.2,
            description=f"the accountant on port {port} to lead and report ready",
            observe=lambda: self.readyz(port),
        )


@pytest.fixture
def operators(
    api_client: client.ApiClient, kubeconfig: Path, namespace: str, tmp_path: Path
) -> Iterator[Operators]:
    hush_resources.install_crds(api_client)
    with contextlib.ExitStack() as stack:
        yield Operators(kubeconfig, tmp_path, namespace, stack)


def _identity(process: subprocess.Popen[bytes]) -> str:
    # What `hush operator` calls itself (leadership.default_identity), seen from outside.
    return f"{socket.gethostname()}_{process.pid}"


def _sigkill(process: subprocess.Popen[bytes]) -> float:
    """SIGKILL ``process`` (no cleanup, no lease release); return when it was killed."""
    process.kill()
    killed_at = time.monotonic()
    process.wait(timeout=10)
    return killed_at


def _lease(api_client: client.ApiClient, namespace: str) -> dict[str, Any]:
    lease = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
        "coordination.k8s.io", "v1", namespace, "leases", LEASE
    )
    assert isinstance(lease, dict)
    return lease


# -- a budget, a policy and a sidecar's token ---------------------------------------------


def _setup_budget(api_client: client.ApiClient, namespace: str) -> tuple[str, str]:
    """A budget with room for every charge of the test, its policy, a pod's token and the
    policy hash it would have baked."""
    hush_resources.create(
        api_client, namespace, spending.budget_manifest(BUDGET, team_epsilon=5.0, total=10.0)
    )
    hush_resources.create(
        api_client,
        namespace,
        spending.count_policy_manifest(
            BUDGET, budget=BUDGET, epsilon=float(RELEASE_EPSILON), route=ROUTE
        ),
    )
    hush_resources.wait_for_condition(
        api_client, namespace, "PrivacyBudget", BUDGET, status="True", reason="Accepted"
    )
    token = spending.pod_bound_token(api_client, namespace, BUDGET)
    return token, spending.policy_hash(api_client, namespace, BUDGET)


# -- clients that retry like sidecars -----------------------------------------------------


@dataclasses.dataclass
class Tally:
    """What the clients saw: the definitive answer to every request id, and the retries."""

    answers: dict[str, tuple[str, int]] = dataclasses.field(default_factory=dict)
    resent: set[str] = dataclasses.field(default_factory=set)
    connection_errors: int = 0
    unavailable: int = 0
    unexpected: list[tuple[str, int, Any]] = dataclasses.field(default_factory=list)
    milestones: dict[int, asyncio.Event] = dataclasses.field(default_factory=dict)

    def milestone(self, count: int) -> asyncio.Event:
        """An event set once ``count`` request ids have been acknowledged."""
        event = self.milestones.setdefault(count, asyncio.Event())
        if len(self.answers) >= count:
            event.set()
        return event

    def acknowledge(self, request_id: str, body: dict[str, Any]) -> None:
        self.answers[request_id] = (body["outcome"], int(body["sequence"]))
        for count, event in self.milestones.items():
            if len(self.answers) >= count:
                event.set()


async def _burst(
    token: str,
    policy_hash: str,
    cert: Path,
    ports: list[int],
    *,
    per_client: int,
    tally: Tally,
) -> None:
    """CLIENTS clients, each sending ``per_client`` charges one after another; on a
    connection error or 503 a client tries the next port (as a Service would route to
    another endpoint) and resends the same request id."""
    deadline = time.monotonic() + BURST_DEADLINE
    context = operator_process.client_ssl_context(cert)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=context, limit=64),
        timeout=aiohttp.ClientTimeout(total=30),
        headers={"Authorization": f"Bearer {token}"},
    ) as session:

        async def one_client(index: int) -> None:
            turn = index
            for number in range(per_client):
                request_id = f"c{index}-{number}"
                while True:
                    if time.monotonic() > deadline:
                        raise AssertionError(f"No definitive answer for {request_id} in time")
                    url = f"https://127.0.0.1:{ports[turn % len(ports)]}/v1/charge"
                    try:
                        async with session.post(
                            url, json=spending.charge_body(request_id, BUDGET, policy_hash)
                        ) as reply:
                            status, body = reply.status, await reply.json()
                    except (aiohttp.ClientError, TimeoutError):
                        tally.connection_errors += 1
                    else:
                        if status == 200:
                            tally.acknowledge(request_id, body)
                            break
                        if status != 503:
                            tally.unexpected.append((request_id, status, body))
                            break
                        tally.unavailable += 1
                    # No definitive answer: the charge may or may not be recorded.
                    tally.resent.add(request_id)
                    turn += 1
                    await asyncio.sleep(RETRY_DELAY)

        await asyncio.gather(*(one_client(index) for index in range(CLIENTS)))


def _assert_every_charge_counted_once(
    api_client: client.ApiClient, namespace: str, tally: Tally, *, issued: int
) -> wire.Ledger:
    assert tally.unexpected == []
    assert len(tally.answers) == issued, "every request id got a definitive answer"
    outcomes = {outcome for outcome, _ in tally.answers.values()}
    assert outcomes <= {"granted", "duplicate"}

    budget = hush_resources.get(api_client, namespace, "PrivacyBudget", BUDGET)
    ledger = wire.Ledger.model_validate(budget["status"]["ledger"])
    assert chain.verify(ledger) == []
    # One-to-one: each acknowledged id owns one ledger sequence, and every sequence is owned.
    sequences = sorted(sequence for _, sequence in tally.answers.values())
    assert sequences == list(range(1, ledger.sequence + 1))
    assert ledger.sequence == issued
    assert [entry.action for entry in ledger.entries] == ["charge"] * len(ledger.entries)
    for entry in ledger.entries:
        assert tally.answers[entry.request_id][1] == entry.sequence
    for request_id, _, sequence in ledger.request_window():
        assert tally.answers[request_id][1] == sequence
    # "duplicate" only ever answers a resend whose first attempt was recorded but unanswered.
    duplicates = {
        request_id for request_id, (outcome, _) in tally.answers.items() if outcome == "duplicate"
    }
    assert duplicates <= tally.resent
    teams = {team["team"]: team for team in budget["status"]["teams"]}
    assert Decimal(teams["analytics"]["epsilon"]["spent"]) == Decimal(RELEASE_EPSILON) * issued
    print(
        f"{issued} charges recorded once each; {len(duplicates)} recorded but unanswered "
        f"before a crash and answered 'duplicate' on resend; {len(tally.resent)} resent; "
        f"{tally.connection_errors} connection errors, {tally.unavailable} answers 503"
    )
    return ledger


# -- the tests ----------------------------------------------------------------------------


def test_sigkill_mid_burst_loses_and_doubles_nothing(
    api_client: client.ApiClient, namespace: str, operators: Operators
) -> None:
    """Three SIGKILLs during 800 charges from 20 clients; restarted on the same port."""
    port = operator_process.free_port()
    process = operators.start(port)
    operators.wait_ready(port, timeout=60)
    token, policy_hash = _setup_budget(api_client, namespace)
    per_client, kill_after = 40, (200, 400, 600)
    tally = Tally()
    restarts: list[float] = []

    async def crash_three_times() -> None:
        nonlocal process
        for count in kill_after:
            await asyncio.wait_for(tally.milestone(count).wait(), timeout=BURST_DEADLINE)
            killed_at = await asyncio.to_thread(_sigkill, process)
            process = await asyncio.to_thread(operators.start, port)
            await asyncio.to_thread(operators.wait_ready, port, timeout=60)
            restarts.append(time.monotonic() - killed_at)

    async def scenario() -> None:
        await asyncio.gather(
            _burst(token, policy_hash, operators.cert, [port], per_client=per_client, tally=tally),
            crash_three_times(),
        )

    asyncio.run(scenario())

    assert len(restarts) == 3
    print("Killed and restarted; ready again after " + ", ".join(f"{s:.1f}s" for s in restarts))
    _assert_every_charge_counted_once(api_client, namespace, tally, issued=CLIENTS * per_client)


def test_standby_takes_over_from_a_killed_leader(
    api_client: client.ApiClient, namespace: str, operators: Operators
) -> None:
    """Two replicas; exactly one is ready; SIGKILL it mid-burst; the other takes over."""
    first_port, second_port = operator_process.free_port(), operator_process.free_port()
    first = operators.start(first_port)
    operators.wait_ready(first_port, timeout=60)
    second = operators.start(second_port)
    second_log = operators.directory / f"operator-2-port-{second_port}.log"
    waiting.wait_for(
        lambda: "Stood by: Lease" in second_log.read_text(),
        timeout=30,
        description="the second replica to see the first one's Lease and stand by",
    )
    assert (operators.readyz(first_port), operators.readyz(second_port)) == (200, 503)
    assert _lease(api_client, namespace)["spec"]["holderIdentity"] == _identity(first)
    token, policy_hash = _setup_budget(api_client, namespace)
    per_client = 30
    tally = Tally()
    takeover: list[float] = []

    async def kill_the_leader() -> None:
        await asyncio.wait_for(tally.milestone(200).wait(), timeout=BURST_DEADLINE)
        killed_at = await asyncio.to_thread(_sigkill, first)
        await asyncio.to_thread(operators.wait_ready, second_port, timeout=30)
        takeover.append(time.monotonic() - killed_at)

    async def scenario() -> None:
        await asyncio.gather(
            _burst(
                token,
                policy_hash,
                operators.cert,
                [first_port, second_port],
                per_client=per_client,
                tally=tally,
            ),
            kill_the_leader(),
        )

    asyncio.run(scenario())

    print(f"The standby took over {takeover[0]:.1f}s after the leader was SIGKILLed")
    lease = _lease(api_client, namespace)
    assert lease["spec"]["holderIdentity"] == _identity(second)
    assert lease["spec"]["leaseTransitions"] >= 1
    _assert_every_charge_counted_once(api_client, namespace, tally, issued=CLIENTS * per_client)
