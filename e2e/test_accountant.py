"""The accountant against the real apiserver: authenticated charges, no overspend under
concurrency, idempotent retries, a tamper-evident ledger, and RBAC that keeps sidecars away
from budget status."""

from __future__ import annotations

import asyncio
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

from hush.api import ledger as wire
from hush.ledger import chain

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


def _setup(
    api_client: client.ApiClient, namespace: str, *, team_epsilon: float, name: str = "survey"
) -> str:
    hush_resources.create(api_client, namespace, _budget(name, team_epsilon))
    hush_resources.create(api_client, namespace, _policy(name, name))
    hush_resources.wait_for_condition(
        api_client, namespace, "PrivacyBudget", name, status="True", reason="Accepted"
    )
    return spending.pod_bound_token(api_client, namespace, name)


def _spend_body(request_id: str, policy: str = "survey") -> dict[str, Any]:
    return {
        "requestId": request_id,
        "policy": policy,
        "route": ROUTE,
        "mechanism": "laplace",
        "epsilon": RELEASE_EPSILON,
        "delta": "0",
        "sensitivity": "1",
        "scale": "1000",
    }


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
    token = _setup(api_client, namespace, team_epsilon=4.0)
    clients, per_client = 50, 200

    async def burst() -> list[tuple[int, dict[str, Any]]]:
        async with _session(accountant) as session:

            async def one_client(index: int) -> list[tuple[int, dict[str, Any]]]:
                answers = []
                for number in range(per_client):
                    body = _spend_body(f"c{index}-{number}")
                    answers.append(
                        await _post(session, f"{accountant['url']}/v1/charge", token, body)
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


def test_reserve_commit_release_and_idempotent_retries(
    api_client: client.ApiClient, namespace: str, accountant: dict[str, Any]
) -> None:
    token = _setup(api_client, namespace, team_epsilon=1.0)

    async def scenario() -> dict[str, tuple[int, dict[str, Any]]]:
        url = accountant["url"]
        async with _session(accountant) as session:
            results = {
                "reserve": await _post(session, f"{url}/v1/reserve", token, _spend_body("r1")),
                "retry": await _post(session, f"{url}/v1/reserve", token, _spend_body("r1")),
                "commit": await _post(
                    session, f"{url}/v1/commit", token, {"requestId": "r1", "policy": "survey"}
                ),
                "late-release": await _post(
                    session, f"{url}/v1/release", token, {"requestId": "r1", "policy": "survey"}
                ),
                "reserve2": await _post(session, f"{url}/v1/reserve", token, _spend_body("r2")),
                "release2": await _post(
                    session, f"{url}/v1/release", token, {"requestId": "r2", "policy": "survey"}
                ),
                "open": await _post(session, f"{url}/v1/reserve", token, _spend_body("r3")),
                "malformed": await _post(session, f"{url}/v1/reserve", token, {"requestId": 5}),
                "not-json": await _post(session, f"{url}/v1/commit", token, b'{"requestId": '),
                "not-utf8": await _post(session, f"{url}/v1/reserve", token, b"\xff\xfe{}"),
            }
            return results

    results = asyncio.run(scenario())
    assert results["reserve"][0] == 200
    assert results["reserve"][1]["outcome"] == "granted"
    assert results["retry"] == (200, {**results["retry"][1], "outcome": "duplicate"})
    assert results["commit"][1]["outcome"] == "committed"
    assert results["late-release"][0] == 409
    assert results["release2"][1]["outcome"] == "released"
    assert results["malformed"][0] == 400
    assert "requestId" in results["malformed"][1]["message"]
    for case in ("not-json", "not-utf8"):
        assert results[case] == (
            400, {"outcome": "bad-request", "message": "The body is not JSON", "overBudget": False}
        )  # fmt: skip
    # Spent: r1 (committed) and r3 (open reservation counts as spent); r2 was refunded.
    ledger = spending.ledger(api_client, namespace, "survey")
    assert [entry.action for entry in ledger.entries] == [
        "reserve", "commit", "reserve", "release", "reserve",
    ]  # fmt: skip
    assert [item.request_id for item in ledger.reservations] == ["r3"]
    budget = hush_resources.get(api_client, namespace, "PrivacyBudget", "survey")
    assert budget["status"]["teams"][0]["epsilon"]["spent"] == "0.002"


def test_tokens_of_other_pods_policies_and_namespaces_are_refused(
    api_client: client.ApiClient, namespace: str, accountant: dict[str, Any]
) -> None:
    token = _setup(api_client, namespace, team_epsilon=1.0)
    other_token = _setup(api_client, namespace, team_epsilon=1.0, name="other")
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
        results = _token_scenario(accountant, token, other_token, wrong_audience, foreign_token)
    finally:
        core.delete_namespace(elsewhere)
    assert results["own"][0] == 200
    assert results["other-policy"][0] == 403
    assert "runs under policy other, not survey" in results["other-policy"][1]["message"]
    assert results["other-namespace"][0] == 404
    assert f"DPPolicy {elsewhere}/survey does not exist" in results["other-namespace"][1]["message"]
    assert results["wrong-audience"][0] == 401
    assert results["no-token"][0] == 401
    assert results["undeclared-cost"][0] == 403
    assert spending.ledger(api_client, namespace, "survey").sequence == 1  # only "own" was charged


def _token_scenario(
    accountant: dict[str, Any], token: str, other_token: str, wrong_audience: str, foreign: str
) -> dict[str, tuple[int, dict[str, Any]]]:
    async def scenario() -> dict[str, tuple[int, dict[str, Any]]]:
        url = f"{accountant['url']}/v1/charge"
        async with _session(accountant) as session:
            return {
                "other-namespace": await _post(session, url, foreign, _spend_body("x6")),
                "own": await _post(session, url, token, _spend_body("x1")),
                "other-policy": await _post(session, url, other_token, _spend_body("x2")),
                "wrong-audience": await _post(session, url, wrong_audience, _spend_body("x3")),
                "no-token": await _post(session, url, "", _spend_body("x4")),
                "undeclared-cost": await _post(
                    session, url, token, {**_spend_body("x5"), "epsilon": "0.0001"}
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
    token = _setup(api_client, namespace, team_epsilon=1.0)

    async def charge(count: int) -> None:
        async with _session(accountant) as session:
            for number in range(count):
                status, _ = await _post(
                    session, f"{accountant['url']}/v1/charge", token, _spend_body(f"v{number}")
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
    token = _setup(api_client, namespace, team_epsilon=1.0)
    # Before any charge, the accounting mode may still change.
    hush_resources.patch_spec(api_client, namespace, "PrivacyBudget", "survey", {"delta": 1e-6})

    async def charge(count: int) -> None:
        async with _session(accountant) as session:
            for number in range(count):
                status, body = await _post(
                    session, f"{accountant['url']}/v1/charge", token, _spend_body(f"m{number}")
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
    budget["spec"]["renewal"] = {
        "policy": "calendar",
        "period": "8s",
        "acknowledgeUnboundedLoss": True,
    }
    hush_resources.create(api_client, namespace, budget)
    hush_resources.create(api_client, namespace, _policy("daily", "daily"))
    hush_resources.wait_for_condition(
        api_client, namespace, "PrivacyBudget", "daily", status="True", reason="Accepted"
    )
    token = spending.pod_bound_token(api_client, namespace, "daily")
    counter = iter(range(1_000_000))

    async def charge() -> int:
        async with _session(accountant) as session:
            status, _ = await _post(
                session,
                f"{accountant['url']}/v1/charge",
                token,
                _spend_body(f"d{next(counter)}", policy="daily"),
            )
            return status

    def window_is_exhausted() -> bool:
        return asyncio.run(charge()) == 429

    # Spend the window, then wait (bounded) for the next window to refill it.
    waiting.wait_for(window_is_exhausted, timeout=30, interval=0.2, description="exhaustion")
    waiting.wait_for(
        lambda: asyncio.run(charge()) == 200, timeout=30, interval=0.5, description="renewal"
    )
    status = hush_resources.get(api_client, namespace, "PrivacyBudget", "daily")["status"]
    assert Decimal(status["lifetimeEpsilonSpent"]) >= Decimal("0.003")
    assert status["ledger"]["window"] >= 1
    warning = hush_resources.condition({"status": status}, "UnboundedLifetimeLoss")
    assert warning is not None
    assert "spent over all windows so far" in warning["message"]
    assert chain.verify(wire.Ledger.model_validate(status["ledger"])) == []
