"""``GET /v1/policy-status``: authenticated like a charge, answers the current policy hash.

The real ``server.Accountant`` over a fake cluster (TokenReview, pod and policy reads); no
budget is ever read or written (the fake store fails the test if it is).
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from aiohttp import test_utils, web

from hush.accountant import server, writer

BAKED = "sha256:" + "a" * 64
NEWER = "sha256:" + "b" * 64
REVIEW = {
    "authenticated": True,
    "user": {
        "username": "system:serviceaccount:stats:app",
        "extra": {
            "authentication.kubernetes.io/pod-name": ["app-1"],
            "authentication.kubernetes.io/pod-uid": ["uid-1"],
        },
    },
}


@dataclasses.dataclass
class FakeCluster:
    policy_hash: str | None = BAKED
    policy_exists: bool = True
    policy_reads: int = 0

    async def review_token(self, token: str, audiences: list[str]) -> Mapping[str, Any]:
        if token != "pod-token" or audiences != [server.AUDIENCE]:
            return {"authenticated": False, "error": "unknown token"}
        return REVIEW

    async def read_pod(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        assert (namespace, name) == ("stats", "app-1")
        return {"metadata": {"uid": "uid-1", "annotations": {"hush.dev/policy": "survey"}}}

    async def read_policy(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        self.policy_reads += 1
        if not self.policy_exists or (namespace, name) != ("stats", "survey"):
            return None
        status = {"policyHash": self.policy_hash} if self.policy_hash else {}
        return {"spec": {"budgetRef": {"name": "census", "team": "analytics"}}, "status": status}


class NoBudgets:
    async def read(self, namespace: str, name: str) -> dict[str, Any] | None:
        raise AssertionError("the policy status must not read a budget")

    async def write_status(self, body: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError("the policy status must not write a budget")


@dataclasses.dataclass
class Harness:
    cluster: FakeCluster
    accountant: server.Accountant
    client: test_utils.TestClient[web.Request, web.Application]

    async def status(
        self,
        policy: str = "survey",
        policy_hash: str = BAKED,
        token: str = "pod-token",  # noqa: S107 - a fake
    ) -> tuple[int, dict[str, Any]]:
        reply = await self.client.get(
            "/v1/policy-status",
            params={"policy": policy, "policyHash": policy_hash},
            headers={"Authorization": f"Bearer {token}"},
        )
        return reply.status, await reply.json()


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    cluster = FakeCluster()
    writers = writer.WriterRegistry(
        NoBudgets(), clock=lambda: datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    )
    accountant = server.Accountant(cluster, writers, is_leader=lambda: False)
    client = test_utils.TestClient(test_utils.TestServer(accountant.application()))
    await client.start_server()
    yield Harness(cluster, accountant, client)
    await client.close()


async def test_a_current_hash_is_reported_current_even_by_a_standby_replica(
    harness: Harness,
) -> None:
    status, answer = await harness.status()
    assert status == 200
    assert answer == {
        "policy": "survey",
        "policyHash": BAKED,
        "stale": False,
        "message": "The policy hash is current",
    }


async def test_a_changed_policy_is_reported_stale_at_once(harness: Harness) -> None:
    await harness.status()
    harness.cluster.policy_hash = NEWER
    # Cached as current for the baked hash; the watch event of the change forgets it.
    harness.accountant.forget_policy("stats", "survey")
    status, answer = await harness.status()
    assert status == 200
    assert (answer["stale"], answer["policyHash"]) == (True, NEWER)
    assert answer["message"].startswith("Stale policy")
    reads = harness.cluster.policy_reads
    # A baked hash that differs from the cached one always reads the policy again.
    await harness.status(policy_hash="sha256:" + "c" * 64)
    assert harness.cluster.policy_reads == reads + 1


async def test_a_policy_not_hashed_yet_is_not_stale(harness: Harness) -> None:
    harness.cluster.policy_hash = None
    status, answer = await harness.status()
    assert (status, answer["stale"]) == (200, False)
    assert "policyHash" in answer
    assert answer["policyHash"] is None


@pytest.mark.parametrize(
    ("arguments", "status", "message"),
    [
        ({"token": "stolen"}, 401, "unknown token"),
        ({"policy": "other"}, 403, "runs under policy survey, not other"),
        ({"policy": ""}, 400, "?policy=<name>"),
    ],
)
async def test_callers_are_authenticated_and_may_ask_only_about_their_own_policy(
    harness: Harness, arguments: dict[str, str], status: int, message: str
) -> None:
    answer_status, answer = await harness.status(**arguments)
    assert answer_status == status
    assert message in answer["message"]


async def test_a_deleted_policy_is_a_404(harness: Harness) -> None:
    harness.cluster.policy_exists = False
    status, answer = await harness.status()
    assert status == 404
    assert answer["outcome"] == "denied"
    assert "does not exist" in answer["message"]
