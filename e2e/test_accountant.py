"""The accountant against the real apiserver: authenticated charges priced from the policy
(never from the caller), no refund on the wire, no overspend under concurrency, idempotent
retries, a tamper-evident ledger, and RBAC that keeps sidecars away from budget status."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes import client

from hush.api import dppolicy
from hush.api import ledger as wire
from hush.ledger import chain
from hush.privacy import amounts, route_cost

import hush_resources
import operator_process
import spending
import waiting

AUDIENCE = spending.AUDIENCE
ROUTE = spending.COUNT_ROUTE
RELEASE_EPSILON = "0.001"


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
    assert process.returncode is not None


def _budget(name: str, team_epsilon: float, total: float = 10.0) -> dict[str, Any]:
    return spending.budget_manifest(name, team_epsilon=team_epsilon, total=total)


def _policy(name: str, budget: str) -> dict[str, Any]:
    return spending.count_policy_manifest(
        name, budget=budget, epsilon=float(RELEASE_EPSILON), route=ROUTE
    )


@dataclasses.dataclass(frozen=True)
class Spender:
    """A pod's token and the policy hash it would have baked: what a sidecar charges with."""

    token: str
    policy: str
    policy_hash: str

    def body(self, request_id: str, **changes: str) -> dict[str, str]:
        return {**spending.charge_body(request_id, self.policy, self.policy_hash), **changes}


def _setup(
    api_client: client.ApiClient, namespace: str, *, team_epsilon: float, name: str = "survey"
) -> Spender:
    hush_resources.create(api_client, namespace, _budget(name, team_epsilon))
    hush_resources.create(api_client, namespace, _policy(name, name))
    hush_resources.wait_for_condition(
        api_client, namespace, "PrivacyBudget", name, status="True", reason="Accepted"
    )
    token = spending.pod_bound_token(api_client, namespace, name)
    return Spender(token, name, spending.policy_hash(api_client, namespace, name))


def _assert_entry_names_the_policys_release(entry: wire.Entry, route: dict[str, Any]) -> None:
    """The ledger entry records the release the policy's route defines, nothing reported."""
    release = route_cost.route_charge(dppolicy.Route.model_validate(route))
    recorded = (entry.mechanism, entry.noise_scale, entry.sensitivity, entry.epsilon, entry.delta)
    assert recorded == (
        release.mechanism,
        amounts.display(release.scale),
        amounts.display(release.sensitivity),
        amounts.display(release.epsilon),
        amounts.display(release.delta),
    )


async def _post(
    session: aiohttp.ClientSession, url: str, token: str, body: dict[str, Any] | bytes
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    options: dict[str, Any] = {"data": body} if isinstance(body, bytes) else {"json": body}
    async with session.post(url, headers=headers, **options) as reply:
        return reply.status, await reply.json()


def _session(accountant: dict[str, Any]) -> aiohttp.ClientSession:
    context = operator_process.client_ssl_context(accountant["cert"])
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=context, limit=64),
        timeout=aiohttp.ClientTimeout(total=120),
    )


def test_concurrent_charges_never_exceed_the_quota(
    api_client: client.ApiClient, namespace: str, accountant: dict[str, Any]
) -> None:
    # 50 clients ask for 10,000 releases of epsilon 0.001 (10.0 in all) from a quota of 4.0.
    spender = _setup(api_client, namespace, team_epsilon=4.0)
    clients, per_client = 50, 200

    async def burst() -> list[tuple[int, dict[str, Any]]]:
        async with _session(accountant) as session:

            async def one_client(index: int) -> list[tuple[int, dict[str, Any]]]:
                answers = []
                for number in range(per_client):
                    body = spender.body(f"c{index}-{number}")
                    answers.append(
                        await _post(session, f"{accountant['url']}/v1/charge", spender.token, body)
                    )
                return answers

            results = await asyncio.gather(*(one_client(index) for index in range(clients)))
            return [answer for result in results for answer in result]

    answers = asyncio.run(burst())
    granted = [body for status, body in answers if status == 200]
    refused = [(status, body) for status, body in answers if status != 200]
    assert len(granted) + len(refused) == clients * per_client
    assert len(granted) == 4000, f"granted {len(granted)}"
    assert {status for status, _ in refused} == {429}
    assert all("Budget exhausted" in body["message"] for _, body in refused)

    budget = hush_resources.get(api_client, namespace, "PrivacyBudget", "survey")
    teams = {team["team"]: team for team in budget["status"]["teams"]}
    assert Decimal(teams["analytics"]["epsilon"]["spent"]) == Decimal(RELEASE_EPSILON) * 4000
    assert teams["analytics"]["epsilon"]["remaining"] == "0"
    ledger = wire.Ledger.model_validate(budget["status"]["ledger"])
    assert ledger.sequence == 4000
    assert chain.verify(ledger) == []
    size = len(json.dumps(budget))
    assert size < 64 * 1024, f"PrivacyBudget is {size} bytes"

    def alert_messages() -> list[str]:
        events = client.CoreV1Api(api_client).list_namespaced_event(
            namespace, field_selector="involvedObject.name=survey"
        )
        return [event.message for event in events.items if event.reason == "NearExhaustion"]

    # Alerts at 80% and 95% of the team's quota (the dataset itself is at 40%).
    messages = waiting.wait_for(
        lambda: (found := alert_messages()) and len(found) >= 2 and found,
        timeout=30,
        description="NearExhaustion Events",
    )
    assert all("Team analytics spent" in message for message in messages), messages


def test_a_charge_is_priced_from_the_policy_final_and_idempotent(
    api_client: client.ApiClient, namespace: str, accountant: dict[str, Any]
) -> None:
    spender = _setup(api_client, namespace, team_epsilon=1.0)
    token, body = spender.token, spender.body

    async def scenario() -> dict[str, tuple[int, dict[str, Any]]]:
        url = accountant["url"]
        charge = f"{url}/v1/charge"
        async with _session(accountant) as session:
            results = {
                "charge": await _post(session, charge, token, body("r1")),
                "retry": await _post(session, charge, token, body("r1")),
                # A sidecar that reports its own (smaller) cost is not listened to: refused.
                "sensitivity": await _post(session, charge, token, body("r2", sensitivity="0")),
                "scale": await _post(session, charge, token, body("r3", scale="1e9")),
                "epsilon": await _post(session, charge, token, body("r4", epsilon="1e-9")),
                "malformed": await _post(session, charge, token, {"requestId": 5}),
                "not-json": await _post(session, charge, token, b'{"requestId": '),
                "not-utf8": await _post(session, charge, token, b"\xff\xfe{}"),
            }
            # No two-phase spend and no refund: those endpoints are gone.
            for name in ("reserve", "commit", "release"):
                async with session.post(
                    f"{url}/v1/{name}",
                    headers={"Authorization": f"Bearer {token}"},
                    json={"requestId": "r1", "policy": spender.policy},
                ) as reply:
                    results[name] = (reply.status, {})
            return results

    results = asyncio.run(scenario())
    assert results["charge"][0] == 200
    assert results["charge"][1]["outcome"] == "granted"
    assert results["retry"] == (
        200,
        {
            **results["charge"][1],
            "outcome": "duplicate",
            "message": "Request r1 was already committed",
        },
    )
    for cost in ("sensitivity", "scale", "epsilon"):
        status, answer = results[cost]
        assert (status, answer["outcome"]) == (400, "bad-request"), answer
        assert f"{cost}: Extra inputs are not permitted" in answer["message"]
    assert results["malformed"][0] == 400
    assert "requestId" in results["malformed"][1]["message"]
    for case in ("not-json", "not-utf8"):
        assert results[case] == (
            400, {"outcome": "bad-request", "message": "The body is not JSON", "overBudget": False}
        )  # fmt: skip
    for name in ("reserve", "commit", "release"):
        assert results[name][0] in (404, 405), name

    # One charge, recorded with the policy's mechanism, scale, sensitivity, epsilon, delta.
    ledger = spending.ledger(api_client, namespace, "survey")
    assert [(entry.action, entry.request_id) for entry in ledger.entries] == [("charge", "r1")]
    assert ledger.reservations == []
    route = _policy("survey", "survey")["spec"]["routes"][0]
    _assert_entry_names_the_policys_release(ledger.entries[0], route)
    assert (ledger.entries[0].mechanism, ledger.entries[0].epsilon) == ("laplace", "0.001")
    budget = hush_resources.get(api_client, namespace, "PrivacyBudget", "survey")
    assert budget["status"]["teams"][0]["epsilon"]["spent"] == RELEASE_EPSILON


def test_the_charge_follows_the_policy_when_it_changes(
    api_client: client.ApiClient, namespace: str, accountant: dict[str, Any]
) -> None:
    spender = _setup(api_client, namespace, team_epsilon=1.0)
    policy = hush_resources.get(api_client, namespace, "DPPolicy", "survey")
    # The privacy owner reshapes the route: a discrete release of a count and a bounded sum
    # (the budget is pure epsilon, delta 0: a Laplace kind).
    route = {
        **policy["spec"]["routes"][0],
        "mechanism": "discreteLaplace",
        "epsilon": 0.01,
        "fields": [
            {"path": "$.count", "kind": "count"},
            {"path": "$.total", "kind": "sum", "bounds": {"lower": 0, "upper": 50}},
        ],
    }
    hush_resources.patch_spec(api_client, namespace, "DPPolicy", "survey", {"routes": [route]})
    new_hash = waiting.wait_for(
        lambda: (
            (found := spending.policy_hash(api_client, namespace, "survey")) != spender.policy_hash
            and found
        ),
        timeout=60,
        description="the operator to hash the changed policy",
    )
    current = dataclasses.replace(spender, policy_hash=str(new_hash))

    async def scenario() -> dict[str, tuple[int, dict[str, Any]]]:
        url = f"{accountant['url']}/v1/charge"
        async with _session(accountant) as session:
            return {
                "stale": await _post(session, url, spender.token, spender.body("old")),
                "current": await _post(session, url, current.token, current.body("new")),
            }

    results = asyncio.run(scenario())
    assert results["stale"][0] == 409
    assert results["stale"][1]["message"].startswith("Stale policy")
    assert results["current"][0] == 200, results["current"]
    ledger = spending.ledger(api_client, namespace, "survey")
    assert [entry.request_id for entry in ledger.entries] == ["new"]
    _assert_entry_names_the_policys_release(ledger.entries[0], route)
    assert (ledger.entries[0].mechanism, ledger.entries[0].epsilon) == ("discreteLaplace", "0.01")


def test_tokens_of_other_pods_policies_and_namespaces_are_refused(
    api_client: client.ApiClient, namespace: str, accountant: dict[str, Any]
) -> None:
    spender = _setup(api_client, namespace, team_epsilon=1.0)
    other = _setup(api_client, namespace, team_epsilon=1.0, name="other")
    core = client.CoreV1Api(api_client)
    wrong_audience = core.create_namespaced_service_account_token(
        "app-survey",
        namespace,
        client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=["api"])),
    ).status.token
    # A pod in another namespace whose annotation names this namespace's policy.
    elsewhere = f"{namespace}-other"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=elsewhere)))
    try:
        waiting.wait_for(
            lambda: (
                core.list_namespaced_service_account(
                    elsewhere, field_selector="metadata.name=default"
                ).items
            ),
            timeout=60,
            description=f"the default ServiceAccount in {elsewhere}",
        )
        foreign_token = spending.pod_bound_token(api_client, elsewhere, "survey")
        results = _token_scenario(accountant, spender, other.token, wrong_audience, foreign_token)
    finally:
        core.delete_namespace(elsewhere)
    assert results["own"][0] == 200
    assert results["other-policy"][0] == 403
    assert "runs under policy other, not survey" in results["other-policy"][1]["message"]
    assert results["other-namespace"][0] == 404
    assert f"DPPolicy {elsewhere}/survey does not exist" in results["other-namespace"][1]["message"]
    assert results["wrong-audience"][0] == 401
    assert results["no-token"][0] == 401
    assert results["undeclared-route"][0] == 403
    assert results["undeclared-route"][1]["message"] == "Policy survey has no route /other"
    assert spending.ledger(api_client, namespace, "survey").sequence == 1  # only "own" was charged


def _token_scenario(
    accountant: dict[str, Any],
    spender: Spender,
    other_token: str,
    wrong_audience: str,
    foreign: str,
) -> dict[str, tuple[int, dict[str, Any]]]:
    async def scenario() -> dict[str, tuple[int, dict[str, Any]]]:
        url = f"{accountant['url']}/v1/charge"
        body = spender.body
        async with _session(accountant) as session:
            return {
                "other-namespace": await _post(session, url, foreign, body("x6")),
                "own": await _post(session, url, spender.token, body("x1")),
                "other-policy": await _post(session, url, other_token, body("x2")),
                "wrong-audience": await _post(session, url, wrong_audience, body("x3")),
                "no-token": await _post(session, url, "", body("x4")),
                "undeclared-route": await _post(
                    session, url, spender.token, body("x5", route="/other")
                ),
            }

    return asyncio.run(scenario())


def test_only_the_operator_may_write_budget_status(
    api_client: client.ApiClient, namespace: str
) -> None:
    """RBAC as the real apiserver decides it: a workload's ServiceAccount cannot write status."""
    core = client.CoreV1Api(api_client)
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="workload"))
    )
    authorization = client.AuthorizationV1Api(api_client)
    for verb in ("patch", "update"):
        review = authorization.create_subject_access_review(
            client.V1SubjectAccessReview(
                spec=client.V1SubjectAccessReviewSpec(
                    user=f"system:serviceaccount:{namespace}:workload",
                    groups=["system:serviceaccounts", f"system:serviceaccounts:{namespace}"],
                    resource_attributes=client.V1ResourceAttributes(
                        group="hush.dev",
                        resource="privacybudgets",
                        subresource="status",
                        verb=verb,
                        namespace=namespace,
                    ),
                )
            )
        )
        assert review.status.allowed is False


def test_ledger_verify_detects_an_edited_entry(
    api_client: client.ApiClient, namespace: str, accountant: dict[str, Any], kubeconfig: Path
) -> None:
    spender = _setup(api_client, namespace, team_epsilon=1.0)

    async def charge(count: int) -> None:
        async with _session(accountant) as session:
            for number in range(count):
                status, _ = await _post(
                    session,
                    f"{accountant['url']}/v1/charge",
                    spender.token,
                    spender.body(f"v{number}"),
                )
                assert status == 200

    asyncio.run(charge(5))
    environment = {"KUBECONFIG": str(kubeconfig), "PATH": "/usr/bin:/bin"}

    def hush_ledger(action: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "hush", "ledger", action, "survey", "-n", namespace],
            capture_output=True,
            text=True,
            env=environment,
            check=False,
            timeout=60,
        )

    verified = hush_ledger("verify")
    assert verified.returncode == 0, verified.stderr
    assert "verified: 5 entries" in verified.stdout

    # An admin rewrites history: entry 3 now claims a smaller epsilon.
    custom = client.CustomObjectsApi(api_client)
    budget = hush_resources.get(api_client, namespace, "PrivacyBudget", "survey")
    budget["status"]["ledger"]["entries"][2]["epsilon"] = "0.0001"
    custom.replace_namespaced_custom_object_status(
        "hush.dev", "v1alpha1", namespace, "privacybudgets", "survey", budget
    )
    tampered = hush_ledger("verify")
    assert tampered.returncode == 1
    assert "entry 3 (charge v2): hash does not match its content" in tampered.stderr

    exported = hush_ledger("export")
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [line["sequence"] for line in lines] == [1, 2, 3, 4, 5]


def test_spent_budgets_cannot_be_lowered_below_spending_or_change_mode(
    api_client: client.ApiClient, namespace: str, accountant: dict[str, Any]
) -> None:
    spender = _setup(api_client, namespace, team_epsilon=1.0)
    # Before any charge, the accounting mode may still change.
    hush_resources.patch_spec(api_client, namespace, "PrivacyBudget", "survey", {"delta": 1e-6})

    async def charge(count: int) -> None:
        async with _session(accountant) as session:
            for number in range(count):
                status, body = await _post(
                    session,
                    f"{accountant['url']}/v1/charge",
                    spender.token,
                    spender.body(f"m{number}"),
                )
                assert status == 200, body

    asyncio.run(charge(3))
    refusals = {
        "accounting": {"accounting": "zcdp"},
        "epsilon": {"epsilon": 0.002, "quotas": [{"team": "analytics", "epsilon": 0.002}]},
        "delta": {"delta": 1e-7},
    }
    messages = {}
    for name, change in refusals.items():
        with pytest.raises(client.ApiException) as refused:
            hush_resources.patch_spec(api_client, namespace, "PrivacyBudget", "survey", change)
        assert refused.value.status == 422
        messages[name] = json.loads(refused.value.body)["message"]
    assert "spec.accounting cannot change after the first charge" in messages["accounting"]
    assert "cannot be lowered below the epsilon already spent" in messages["epsilon"]
    assert "spec.delta cannot be lowered after the first charge" in messages["delta"]
    # Raising the total is fine.
    hush_resources.patch_spec(api_client, namespace, "PrivacyBudget", "survey", {"epsilon": 20.0})


def test_calendar_renewal_refills_each_window_and_keeps_the_lifetime_loss(
    api_client: client.ApiClient, namespace: str, accountant: dict[str, Any]
) -> None:
    budget = _budget("daily", 0.002)
    # Periods are at least an hour; an anchor an hour (less 40 s) ago puts the start of
    # window 1 40 s from now.
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=40)
    anchor = (soon - datetime.timedelta(hours=1)).replace(microsecond=0)
    boundary = anchor + datetime.timedelta(hours=1)
    budget["spec"]["renewal"] = {
        "policy": "calendar",
        "period": "1h",
        "anchor": anchor.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "acknowledgeUnboundedLoss": True,
    }
    hush_resources.create(api_client, namespace, budget)
    hush_resources.create(api_client, namespace, _policy("daily", "daily"))
    hush_resources.wait_for_condition(
        api_client, namespace, "PrivacyBudget", "daily", status="True", reason="Accepted"
    )
    token = spending.pod_bound_token(api_client, namespace, "daily")
    daily_hash = spending.policy_hash(api_client, namespace, "daily")
    counter = iter(range(1_000_000))

    async def charge() -> int:
        async with _session(accountant) as session:
            status, _ = await _post(
                session,
                f"{accountant['url']}/v1/charge",
                token,
                spending.charge_body(f"d{next(counter)}", "daily", daily_hash),
            )
            return status

    def window_is_exhausted() -> bool:
        return asyncio.run(charge()) == 429

    # Spend the window, then wait (bounded) for the next window to refill it.
    waiting.wait_for(window_is_exhausted, timeout=30, interval=0.2, description="exhaustion")
    assert datetime.datetime.now(datetime.UTC) < boundary, "window 0 ended before it was spent"
    waiting.wait_for(
        lambda: asyncio.run(charge()) == 200, timeout=90, interval=0.5, description="renewal"
    )
    status = hush_resources.get(api_client, namespace, "PrivacyBudget", "daily")["status"]
    assert Decimal(status["lifetimeEpsilonSpent"]) >= Decimal("0.003")
    assert status["ledger"]["window"] >= 1
    warning = hush_resources.condition({"status": status}, "UnboundedLifetimeLoss")
    assert warning is not None
    assert "spent over all windows so far" in warning["message"]
    assert chain.verify(wire.Ledger.model_validate(status["ledger"])) == []
