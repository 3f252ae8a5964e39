"""``POST /v1/charge``: the accountant prices a release from the policy, never from the caller.

The real ``server.Accountant`` and ``writer.WriterRegistry`` over a fake cluster (TokenReview,
pod and policy reads) and an in-memory PrivacyBudget store that does compare-and-swap like
the apiserver. What is checked is what the ledger records: every charge equals
``route_cost.route_charge`` of the route as the policy declares it *now*, in every accounting
mode, whatever the body would like; and there is no way to reserve, commit or refund.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
from collections.abc import AsyncIterator, Mapping
from decimal import Decimal
from typing import Any

import pytest
from aiohttp import test_utils, web

from hush.accountant import pricing, server, writer
from hush.api import dppolicy, privacybudget
from hush.api import ledger as wire
from hush.ledger import chain, limits
from hush.privacy import accounting, amounts, route_cost

NAMESPACE = "stats"
POLICY = "survey"
BUDGET = "census"
HASH = "sha256:" + "a" * 64
TOKEN = "pod-token"
NOW = datetime.datetime(2026, 12, 7, 12, 0, tzinfo=datetime.UTC)
REVIEW = {
    "authenticated": True,
    "user": {
        "username": f"system:serviceaccount:{NAMESPACE}:app",
        "extra": {
            "authentication.kubernetes.io/pod-name": ["app-1"],
            "authentication.kubernetes.io/pod-uid": ["uid-1"],
        },
    },
}

COUNT_ROUTE: dict[str, Any] = {
    "path": "/count",
    "mechanism": "laplace",
    "epsilon": 0.1,
    "fields": [{"path": "$.count", "kind": "count"}],
}
# The same path after the privacy owner changed its shape: more fields, another mechanism.
RESHAPED_ROUTE: dict[str, Any] = {
    "path": "/count",
    "mechanism": "gaussian",
    "epsilon": 0.5,
    "delta": 1e-7,
    "fields": [
        {"path": "$.count", "kind": "count", "contributionsPerIndividual": 2},
        {"path": "$.total", "kind": "sum", "bounds": {"lower": 0, "upper": 100}},
        {"path": "$.average", "kind": "mean", "bounds": {"lower": 0, "upper": 100},
         "countPath": "$.count"},
    ],
}  # fmt: skip
# Its vector length comes from the declared domain (3 keys), not from any answer.
KEYED_ROUTE: dict[str, Any] = {
    "path": "/regions",
    "mechanism": "discreteLaplace",
    "epsilon": 0.2,
    "fields": [{"path": "$.regions.*", "kind": "count"}],
    "domains": [{"path": "$.regions.*", "keys": ["north", "south", "west"]}],
}
# An open key set: part of the delta pays for the noisy threshold that selects keys.
SELECTED_ROUTE: dict[str, Any] = {
    "path": "/open",
    "mechanism": "laplace",
    "epsilon": 1.0,
    "delta": 1e-6,
    "fields": [{"path": "$.regions.*", "kind": "count"}],
    "domains": [
        {"path": "$.regions.*", "partitionSelection": {"maxPartitionsContributed": 1, "maxKeys": 5}}
    ],
}
QUANTILE_ROUTE: dict[str, Any] = {
    "path": "/median",
    "mechanism": "laplace",
    "epsilon": 0.1,
    "fields": [
        {"path": "$.median", "kind": "quantile", "quantile": 0.5,
         "bounds": {"lower": 0, "upper": 10}},
    ],
}  # fmt: skip


def _route(raw: Mapping[str, Any]) -> dppolicy.Route:
    return dppolicy.Route.model_validate(raw)


@dataclasses.dataclass
class FakeCluster:
    """TokenReview, the caller's pod and the DPPolicy as the apiserver would return them."""

    routes: list[dict[str, Any]]
    generation: int = 1
    policy_reads: int = 0

    async def review_token(self, token: str, audiences: list[str]) -> Mapping[str, Any]:
        if token != TOKEN or audiences != [server.AUDIENCE]:
            return {"authenticated": False, "error": "unknown token"}
        return REVIEW

    async def read_pod(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return {"metadata": {"uid": "uid-1", "annotations": {"hush.dev/policy": POLICY}}}

    async def read_policy(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        self.policy_reads += 1
        if (namespace, name) != (NAMESPACE, POLICY):
            return None
        return {
            "metadata": {"name": POLICY, "uid": "policy-uid", "generation": self.generation},
            "spec": {
                "budgetRef": {"name": BUDGET, "team": "analytics"},
                "upstream": {"port": 8080},
                "routes": copy.deepcopy(self.routes),
            },
            "status": {"policyHash": HASH},
        }


class MemoryBudgets:
    """One PrivacyBudget; status writes are compare-and-swap on resourceVersion."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.writes = 0
        self.body: dict[str, Any] = {
            "apiVersion": "hush.dev/v1alpha1",
            "kind": "PrivacyBudget",
            "metadata": {
                "name": BUDGET,
                "namespace": NAMESPACE,
                "resourceVersion": "1",
                "generation": 1,
                "creationTimestamp": "2026-12-01T00:00:00Z",
            },
            "spec": spec,
            "status": {},
        }

    async def read(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.body) if (namespace, name) == (NAMESPACE, BUDGET) else None

    async def write_status(self, body: dict[str, Any]) -> dict[str, Any]:
        version = body["metadata"]["resourceVersion"]
        assert version == self.body["metadata"]["resourceVersion"], "a blind write"
        self.writes += 1
        self.body["metadata"]["resourceVersion"] = str(int(version) + 1)
        self.body["status"] = copy.deepcopy(body["status"])
        return copy.deepcopy(self.body)

    def ledger(self) -> wire.Ledger:
        return wire.Ledger.model_validate(self.body["status"].get("ledger") or {})


def _budget_spec(mode: str) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "dataset": "census",
        "epsilon": 50.0,
        "quotas": [{"team": "analytics", "epsilon": 50.0, "delta": 1e-5}],
        "accounting": mode,
        "delta": 1e-5,
    }
    return spec


@dataclasses.dataclass
class Harness:
    cluster: FakeCluster
    budgets: MemoryBudgets
    writers: writer.WriterRegistry
    accountant: server.Accountant
    client: test_utils.TestClient[web.Request, web.Application]

    async def post(
        self, path: str, body: dict[str, Any] | bytes, token: str = TOKEN
    ) -> tuple[int, dict[str, Any]]:
        options: dict[str, Any] = {"data": body} if isinstance(body, bytes) else {"json": body}
        reply = await self.client.post(
            path, headers={"Authorization": f"Bearer {token}"}, **options
        )
        answer = await reply.json() if reply.content_type == "application/json" else {}
        return reply.status, answer

    async def charge(self, request_id: str, route: str = "/count", **extra: Any) -> Any:
        body = {"requestId": request_id, "policy": POLICY, "route": route, "policyHash": HASH}
        return await self.post("/v1/charge", {**body, **extra})

    async def close(self) -> None:
        await self.client.close()
        await self.writers.stop()

    def change_policy(self, routes: list[dict[str, Any]]) -> None:
        """What a spec change does: a new generation, and the watch event forgets the cache."""
        self.cluster.routes = routes
        self.cluster.generation += 1
        self.accountant.forget_policy(NAMESPACE, POLICY)


async def _harness(mode: str, routes: list[dict[str, Any]]) -> Harness:
    cluster = FakeCluster(routes=routes)
    budgets = MemoryBudgets(_budget_spec(mode))
    writers = writer.WriterRegistry(budgets, clock=lambda: NOW)
    accountant = server.Accountant(cluster, writers)
    client = test_utils.TestClient(test_utils.TestServer(accountant.application()))
    await client.start_server()
    return Harness(cluster, budgets, writers, accountant, client)


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    harness = await _harness("pure", [COUNT_ROUTE, KEYED_ROUTE, QUANTILE_ROUTE])
    yield harness
    await harness.close()


def _assert_entry_is(entry: wire.Entry, release: accounting.Release, mode: str) -> None:
    """The ledger entry names the policy's release and charges exactly its cost."""
    assert (entry.action, entry.mechanism) == ("charge", release.mechanism)
    assert entry.noise_scale == amounts.display(release.scale)
    assert entry.sensitivity == amounts.display(release.sensitivity)
    assert entry.epsilon == amounts.display(release.epsilon)
    assert entry.delta == amounts.display(release.delta)
    assert entry.policy_hash == HASH  # the pod's baked hash, checked and then recorded
    spec = privacybudget.PrivacyBudgetSpec.model_validate(_budget_spec(mode))
    accountant = limits.limits_for(spec).accountant
    assert entry.cost == accountant.to_json(accountant.release_cost(release))


@pytest.mark.parametrize("mode", ["pure", "zcdp", "rdp"])
async def test_the_charge_is_the_policys_route_cost_even_after_the_policy_changes_shape(
    mode: str,
) -> None:
    harness = await _harness(mode, [COUNT_ROUTE])
    try:
        status, answer = await harness.charge("first")
        assert (status, answer["outcome"]) == (200, "granted")
        first = route_cost.route_charge(_route(COUNT_ROUTE))
        _assert_entry_is(harness.budgets.ledger().entries[-1], first, mode)

        harness.change_policy([RESHAPED_ROUTE])
        status, answer = await harness.charge("second")
        assert (status, answer["outcome"]) == (200, "granted")
        second = route_cost.route_charge(_route(RESHAPED_ROUTE))
        assert second != first  # the new shape costs something else, and that is charged
        ledger = harness.budgets.ledger()
        _assert_entry_is(ledger.entries[-1], second, mode)
        assert [entry.request_id for entry in ledger.entries] == ["first", "second"]
        assert chain.verify(ledger) == []
    finally:
        await harness.close()


async def test_a_keyed_routes_cost_follows_its_declared_domain(harness: Harness) -> None:
    status, _ = await harness.charge("keyed", route="/regions")
    assert status == 200
    release = route_cost.route_charge(_route(KEYED_ROUTE))
    _assert_entry_is(harness.budgets.ledger().entries[-1], release, "pure")
    assert route_cost.field_lengths(_route(KEYED_ROUTE)) == (3,)


@pytest.mark.parametrize(
    ("cost", "value"),
    [
        ("mechanism", "laplace"),
        ("epsilon", "0.0001"),
        ("delta", "0"),
        ("sensitivity", "0.001"),
        ("scale", "1000000"),
    ],
)
async def test_a_body_that_carries_a_cost_is_malformed_and_nothing_is_charged(
    harness: Harness, cost: str, value: str
) -> None:
    status, answer = await harness.charge("liar", **{cost: value})
    assert status == 400
    assert answer["outcome"] == "bad-request"
    assert f"{cost}: Extra inputs are not permitted" in answer["message"]
    assert harness.budgets.writes == 0


async def test_there_is_no_reserve_commit_or_release_endpoint(harness: Harness) -> None:
    body = {"requestId": "r1", "policy": POLICY, "route": "/count", "policyHash": HASH}
    for path in ("/v1/reserve", "/v1/commit", "/v1/release"):
        status, _ = await harness.post(path, body)
        assert status in (404, 405), path
    assert harness.budgets.writes == 0


async def test_a_retry_is_answered_from_the_ledger_and_not_charged_twice(
    harness: Harness,
) -> None:
    first = await harness.charge("same")
    retry = await harness.charge("same")
    assert (first[0], first[1]["outcome"]) == (200, "granted")
    assert (retry[0], retry[1]["outcome"], retry[1]["sequence"]) == (200, "duplicate", 1)
    assert harness.budgets.ledger().sequence == 1


async def test_a_route_that_cannot_be_priced_is_refused_naming_policy_and_route(
    harness: Harness,
) -> None:
    status, answer = await harness.charge("q", route="/median")
    assert status == 409
    assert answer["message"].startswith(f"Policy {POLICY} route /median cannot be charged")
    assert harness.budgets.writes == 0
    # A stored route that does not parse (an older or hand-edited object) is refused too.
    harness.change_policy([{**COUNT_ROUTE, "epsilon": "lots"}])
    status, answer = await harness.charge("p")
    assert status == 409
    assert "route /count cannot be charged: it is not a valid route (epsilon" in answer["message"]
    assert harness.budgets.writes == 0


async def test_undeclared_routes_stale_hashes_and_strangers_are_refused(
    harness: Harness,
) -> None:
    status, answer = await harness.charge("u", route="/secret")
    assert (status, answer["message"]) == (403, f"Policy {POLICY} has no route /secret")
    status, answer = await harness.charge("s", policyHash="sha256:" + "b" * 64)
    assert status == 409
    assert answer["message"].startswith("Stale policy")
    body = {"requestId": "t", "policy": POLICY, "route": "/count", "policyHash": HASH}
    status, _ = await harness.post("/v1/charge", body, token="stolen")
    assert status == 401
    assert harness.budgets.writes == 0


async def test_a_route_is_priced_once_per_policy_generation(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    priced: list[str] = []
    real = route_cost.route_charge

    def counting(route: dppolicy.Route) -> accounting.Release:
        priced.append(route.path)
        return real(route)

    monkeypatch.setattr(route_cost, "route_charge", counting)
    for number in range(3):
        assert (await harness.charge(f"c{number}"))[0] == 200
    assert priced == ["/count"]
    harness.change_policy([{**COUNT_ROUTE, "epsilon": 0.2}])
    assert (await harness.charge("after"))[0] == 200
    assert priced == ["/count", "/count"]
    entry = harness.budgets.ledger().entries[-1]
    assert Decimal(entry.epsilon) == Decimal("0.2")


def test_pricing_without_uid_or_generation_is_not_cached() -> None:
    prices = pricing.Prices()
    policy: dict[str, Any] = {"metadata": {}}
    first = prices.price(NAMESPACE, POLICY, policy, COUNT_ROUTE).release
    second = prices.price(NAMESPACE, POLICY, policy, {**COUNT_ROUTE, "epsilon": 0.3}).release
    assert (first.epsilon, second.epsilon) == (Decimal("0.1"), Decimal("0.3"))


@pytest.mark.parametrize("mode", ["pure", "zcdp", "rdp"])
async def test_partition_selection_is_charged_only_where_its_delta_is_counted(mode: str) -> None:
    harness = await _harness(mode, [SELECTED_ROUTE])
    try:
        status, answer = await harness.charge("open", route="/open")
        ledger = harness.budgets.ledger()
        if mode == "pure":
            assert (status, answer["outcome"]) == (200, "granted")
            release = route_cost.route_charge(_route(SELECTED_ROUTE))
            assert release.delta == Decimal("0.000001")  # the noise's and the threshold's
            _assert_entry_is(ledger.entries[-1], release, mode)
        else:
            assert (status, answer["outcome"]) == (409, "unaccountable")
            assert f"{mode} accounting does not count" in answer["message"]
            assert ledger.sequence == 0
    finally:
        await harness.close()
