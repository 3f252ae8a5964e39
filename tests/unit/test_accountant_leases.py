"""``/v1/leases``: grant, report, renew, settle and the expiry sweep through the real
``server.Accountant`` and ``writer.WriterRegistry`` (fake cluster, in-memory budget with
compare-and-swap; the harness of test_accountant_charge). Every lease and release is priced
from the policy, never from the body; ``/v1/charge`` is untouched (its own tests)."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator
from typing import Any

import prometheus_client
import pytest

from hush.accountant import server, writer
from hush.api import dppolicy
from hush.ledger import chain
from hush.privacy import accounting, amounts, route_cost
from tests.unit import test_accountant_charge as charging

POLICY, HASH = charging.POLICY, charging.HASH


def _grant_body(lease_id: str, route: str = "/count", **extra: Any) -> dict[str, Any]:
    return {
        "leaseId": lease_id,
        "policy": POLICY,
        "route": route,
        "policyHash": HASH,
        "releases": 5,
        **extra,
    }


def _report_body(batch: int, routes: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "policy": POLICY,
        "policyHash": HASH,
        "batch": batch,
        "releases": [
            {"route": route, "requestId": f"q{batch}-{n}", "time": "2026-12-07T12:00:00Z"}
            for n, route in enumerate(routes)
        ],
        **extra,
    }


def _units(raw: dict[str, Any]) -> list[int]:
    release = route_cost.route_charge(dppolicy.Route.model_validate(raw))
    return list(accounting.accountant("pure").release_cost(release).units)


@pytest.fixture
async def harness() -> AsyncIterator[charging.Harness]:
    harness = await charging._harness(
        "pure", [charging.COUNT_ROUTE, charging.KEYED_ROUTE, charging.SELECTED_ROUTE]
    )
    yield harness
    await harness.close()


async def test_a_lease_is_priced_from_the_policy_and_durable_before_the_answer(
    harness: charging.Harness,
) -> None:
    status, answer = await harness.post("/v1/leases", _grant_body("l1"))
    assert (status, answer["outcome"], answer["releasesLeft"]) == (200, "leased", 5)
    count = _units(charging.COUNT_ROUTE)
    assert answer["granted"] == [5 * unit for unit in count]
    ledger = harness.budgets.ledger()  # written before the answer came back
    assert [lease.lease_id for lease in ledger.leases] == ["l1"]
    assert ledger.spent == [5 * unit for unit in count]
    entry = ledger.entries[-1]
    release = route_cost.route_charge(dppolicy.Route.model_validate(charging.COUNT_ROUTE))
    assert (entry.action, entry.mechanism) == ("lease", "laplace")
    assert entry.epsilon == amounts.display(release.epsilon)
    # A body that suggests a cost is malformed; a retried grant is the same lease.
    status, refused = await harness.post("/v1/leases", _grant_body("l2", epsilon="1e-9"))
    assert (status, refused["outcome"]) == (400, "bad-request")
    status, again = await harness.post("/v1/leases", _grant_body("l1"))
    assert (status, again["outcome"], again["sequence"]) == (200, "duplicate", answer["sequence"])
    assert harness.budgets.ledger().spent == ledger.spent


async def test_reports_price_each_route_renew_and_settle_returns_the_rest(
    harness: charging.Harness,
) -> None:
    await harness.post("/v1/leases", _grant_body("l1", releases=10))
    count, keyed = _units(charging.COUNT_ROUTE), _units(charging.KEYED_ROUTE)
    labels = {"namespace": charging.NAMESPACE, "budget": charging.BUDGET, "team": "analytics"}

    def charged() -> float:
        value = prometheus_client.REGISTRY.get_sample_value(
            "hush_accountant_epsilon_charged_total", labels
        )
        return value or 0.0

    before = charged()
    # A keyed release costs more than a count; both are priced by their own route.
    status, answer = await harness.post(
        "/v1/leases/l1/report", _report_body(1, ["/count", "/regions"], renew=3)
    )
    assert (status, answer["outcome"]) == (200, "reported"), answer
    used = [c + k for c, k in zip(count, keyed, strict=True)]
    assert answer["used"] == used
    assert answer["added"] == [3 * unit for unit in count]
    # The metric follows the releases made (0.1 + 0.2), not the lease.
    assert charged() - before == pytest.approx(0.3)
    entries = harness.budgets.ledger().entries
    reports = [entry for entry in entries if entry.action == "report"]
    assert [(entry.mechanism, entry.releases, entry.cost) for entry in reports] == [
        ("laplace", 1, count),
        ("discreteLaplace", 1, keyed),
    ]
    status, undeclared = await harness.post("/v1/leases/l1/report", _report_body(2, ["/other"]))
    assert (status, undeclared["message"]) == (403, "Policy survey has no route /other")
    status, beyond = await harness.post("/v1/leases/l1/report", _report_body(2, ["/count"] * 40))
    assert (status, beyond["outcome"]) == (409, "beyond-lease")
    status, settled = await harness.post("/v1/leases/l1/settle", _report_body(2, ["/count"]))
    assert (status, settled["outcome"]) == (200, "settled"), settled
    ledger = harness.budgets.ledger()
    spent = [2 * c + k for c, k in zip(count, keyed, strict=True)]
    assert ledger.spent == spent  # exactly what was released
    assert ledger.leases == []
    assert chain.verify(ledger) == []
    status, retried = await harness.post("/v1/leases/l1/settle", _report_body(2, ["/count"]))
    assert (status, retried["outcome"]) == (200, "duplicate")
    assert harness.budgets.ledger().spent == spent


async def test_refusals_have_their_codes(harness: charging.Harness) -> None:
    cases = {
        "unknown": await harness.post("/v1/leases/nope/report", _report_body(1, [])),
        "bad-id": await harness.post("/v1/leases/a%20b/report", _report_body(1, [])),
        "settle-renews": await harness.post("/v1/leases/x/settle", _report_body(1, [], renew=1)),
        "no-token": await harness.post("/v1/leases", _grant_body("l1"), token="nope"),
        "stale": await harness.post("/v1/leases", _grant_body("l1", policyHash="sha256:old")),
        # Partition selection is counted by pure accounting only; this budget is pure.
        "selected": await harness.post("/v1/leases", _grant_body("l3", route="/open")),
    }
    statuses = {name: (status, answer["outcome"]) for name, (status, answer) in cases.items()}
    assert statuses == {
        "unknown": (404, "unknown-lease"),
        "bad-id": (400, "bad-request"),
        "settle-renews": (400, "bad-request"),
        "no-token": (401, "denied"),
        "stale": (409, "denied"),
        "selected": (200, "leased"),
    }


async def test_an_expired_lease_is_swept_and_written_off_without_other_traffic() -> None:
    now = [charging.NOW]
    cluster = charging.FakeCluster(routes=[charging.COUNT_ROUTE])
    budgets = charging.MemoryBudgets(charging._budget_spec("pure"))
    writers = writer.WriterRegistry(budgets, clock=lambda: now[0])
    accountant = server.Accountant(cluster, writers)
    client = charging.test_utils.TestClient(
        charging.test_utils.TestServer(accountant.application())
    )
    await client.start_server()
    harness = charging.Harness(cluster, budgets, writers, accountant, client)
    try:
        status, _ = await harness.post("/v1/leases", _grant_body("l1", seconds=1))
        assert status == 200
        now[0] += datetime.timedelta(seconds=2)  # the sidecar went away
        for _ in range(100):  # the sweep fires 1.25 s after the grant's write
            await asyncio.sleep(0.05)
            if budgets.ledger().leases_written_off:
                break
        ledger = budgets.ledger()
        assert (ledger.leases, ledger.leases_written_off) == ([], 1)
        assert ledger.written_off == ledger.spent  # nothing was reported: all of it
        assert ledger.entries[-1].action == "write-off"
        status, late = await harness.post("/v1/leases/l1/report", _report_body(1, ["/count"]))
        assert (status, late["outcome"]) == (410, "expired")
    finally:
        await harness.close()


async def test_deferrable_reports_share_a_write_and_urgent_ones_are_not_held(
    harness: charging.Harness,
) -> None:
    for lease_id in ("a", "b"):
        await harness.post("/v1/leases", _grant_body(lease_id, releases=10))
    writes = harness.budgets.writes
    loop = asyncio.get_running_loop()

    async def report(
        lease_id: str, delay: float, batch: int = 1, **extra: Any
    ) -> tuple[int, float]:
        await asyncio.sleep(delay)
        started = loop.time()
        status, _ = await harness.post(
            f"/v1/leases/{lease_id}/report",
            _report_body(batch, ["/count"], **extra),
        )
        return status, loop.time() - started

    # Two deferrable reports 50 ms apart: one status write, the first waited for the second.
    (first, waited), (second, _) = await asyncio.gather(
        report("a", 0.0, deferrable=True), report("b", 0.05, deferrable=True)
    )
    assert (first, second) == (200, 200)
    assert harness.budgets.writes == writes + 1
    assert waited >= 0.2  # held for DEFER_SECONDS (0.25 s) to share the write
    # An urgent report is written at once, taking a waiting deferrable one with it.
    writes = harness.budgets.writes
    (deferred, _), (urgent, urgent_wait) = await asyncio.gather(
        report("a", 0.0, batch=2, deferrable=True), report("b", 0.02, batch=2)
    )
    assert (deferred, urgent) == (200, 200)
    assert harness.budgets.writes == writes + 1
    assert urgent_wait < 0.2


async def test_a_refresh_after_a_restart_arms_the_sweep_for_open_leases() -> None:
    """A new operator process has no timer; kopf's resume handler refreshes the budget,
    which finds the open lease and writes it off at its expiry."""
    now = [charging.NOW]
    cluster = charging.FakeCluster(routes=[charging.COUNT_ROUTE])
    budgets = charging.MemoryBudgets(charging._budget_spec("pure"))
    first = writer.WriterRegistry(budgets, clock=lambda: now[0])
    accountant = server.Accountant(cluster, first)
    client = charging.test_utils.TestClient(
        charging.test_utils.TestServer(accountant.application())
    )
    await client.start_server()
    harness = charging.Harness(cluster, budgets, first, accountant, client)
    status, _ = await harness.post("/v1/leases", _grant_body("l1", seconds=1))
    assert status == 200
    await harness.close()  # the operator goes away with the lease open
    restarted = writer.WriterRegistry(budgets, clock=lambda: now[0])
    try:
        await restarted.writer(charging.NAMESPACE, charging.BUDGET).refresh()
        assert budgets.ledger().leases_written_off == 0  # not expired yet: nothing written
        now[0] += datetime.timedelta(seconds=2)
        for _ in range(100):
            await asyncio.sleep(0.05)
            if budgets.ledger().leases_written_off:
                break
        assert (budgets.ledger().leases, budgets.ledger().leases_written_off) == ([], 1)
    finally:
        await restarted.stop()
