"""What every spending test needs: a budget, a policy with one count route, a pod-bound token,
and the body of a charge.

A charge names the policy, the route and the policy hash baked into the pod, nothing else:
the accountant prices the route from the policy (docs/design/0018, "Wire"). So do the lease
bodies (``lease_body``, ``report_body``; docs/design/0021-leases.md).

Shared by the accountant, takeover and sidecar e2e tests and by ``bench/bench_accountant.py``
so that they all exercise the same objects the same way.
"""

from __future__ import annotations

from typing import Any

from kubernetes import client

from hush.api import ledger as wire

import hush_resources
import waiting

AUDIENCE = "hush-accountant"
TEAM = "analytics"
COUNT_ROUTE = "/count"


def budget_manifest(name: str, *, team_epsilon: float, total: float = 10.0) -> dict[str, Any]:
    """A pure-accounting budget with one team quota."""
    return {
        "apiVersion": "hush.dev/v1alpha1",
        "kind": "PrivacyBudget",
        "metadata": {"name": name},
        "spec": {
            "dataset": name,
            "epsilon": total,
            "quotas": [{"team": TEAM, "epsilon": team_epsilon}],
        },
    }


def count_policy_manifest(
    name: str, *, budget: str, epsilon: float, route: str = COUNT_ROUTE
) -> dict[str, Any]:
    """A policy with one Laplace count route charged to ``budget``."""
    return {
        "apiVersion": "hush.dev/v1alpha1",
        "kind": "DPPolicy",
        "metadata": {"name": name},
        "spec": {
            "budgetRef": {"name": budget, "team": TEAM},
            "upstream": {"port": 8080},
            "routes": [
                {
                    "path": route,
                    "mechanism": "laplace",
                    "epsilon": epsilon,
                    "fields": [{"path": "$.count", "kind": "count"}],
                }
            ],
        },
    }


def pod_bound_token(api_client: client.ApiClient, namespace: str, policy: str) -> str:
    """A pod annotated with ``policy``, and its projected token for the accountant."""
    return pod_bound_tokens(api_client, namespace, policy, 1)[0]


def pod_bound_tokens(
    api_client: client.ApiClient, namespace: str, policy: str, count: int
) -> list[str]:
    """``count`` pods annotated with ``policy`` (one ServiceAccount), and their tokens:
    what ``count`` sidecars of one Deployment would authenticate with."""
    core = client.CoreV1Api(api_client)
    account = f"app-{policy}"
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=account))
    )
    names = [f"app-{policy}"] + [f"app-{policy}-{index}" for index in range(1, count)]
    return [_pod_token(core, namespace, policy, account, name) for name in names]


def _pod_token(core: client.CoreV1Api, namespace: str, policy: str, account: str, name: str) -> str:
    pod = core.create_namespaced_pod(
        namespace,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name=name, annotations={"hush.dev/policy": policy}),
            spec=client.V1PodSpec(
                service_account_name=account,
                containers=[client.V1Container(name="app", image="registry.invalid/app:1")],
            ),
        ),
    )
    if pod.metadata is None:
        raise AssertionError("the apiserver returned a pod without metadata")
    request = core.create_namespaced_service_account_token(
        account,
        namespace,
        client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(
                audiences=[AUDIENCE],
                expiration_seconds=3600,
                bound_object_ref=client.V1BoundObjectReference(
                    kind="Pod", api_version="v1", name=pod.metadata.name, uid=pod.metadata.uid
                ),
            )
        ),
    )
    if request.status is None:
        raise AssertionError("the TokenRequest returned no token")
    token: str = request.status.token
    return token


def ledger(api_client: client.ApiClient, namespace: str, budget: str) -> wire.Ledger:
    found = hush_resources.get(api_client, namespace, "PrivacyBudget", budget)
    return wire.Ledger.model_validate(found["status"]["ledger"])


def policy_hash(api_client: client.ApiClient, namespace: str, policy: str) -> str:
    """The DPPolicy's hash once the operator has computed it (what a pod would bake)."""
    found = waiting.wait_for(
        lambda: (
            hush_resources.get(api_client, namespace, "DPPolicy", policy)
            .get("status", {})
            .get("policyHash")
        ),
        timeout=60,
        description=f"DPPolicy {namespace}/{policy} to be hashed by the operator",
    )
    return str(found)


def charge_body(
    request_id: str, policy: str, policy_hash: str, *, route: str = COUNT_ROUTE
) -> dict[str, str]:
    """The body of ``POST /v1/charge``: which release, under which policy and route."""
    return {"requestId": request_id, "policy": policy, "route": route, "policyHash": policy_hash}


def lease_body(
    lease_id: str,
    policy: str,
    policy_hash: str,
    *,
    releases: int,
    seconds: int = 30,
    route: str = COUNT_ROUTE,
) -> dict[str, Any]:
    """The body of ``POST /v1/leases``: a lease sized for ``releases`` releases of ``route``."""
    return {
        "leaseId": lease_id,
        "policy": policy,
        "route": route,
        "policyHash": policy_hash,
        "releases": releases,
        "seconds": seconds,
    }


def report_body(
    policy: str,
    policy_hash: str,
    batch: int,
    request_ids: list[str],
    *,
    renew: int | None = None,
    deferrable: bool = False,
    time: str = "2026-12-08T00:00:00Z",
    route: str = COUNT_ROUTE,
) -> dict[str, Any]:
    """The body of ``POST /v1/leases/{id}/report`` (or ``/settle`` without ``renew``);
    ``deferrable`` when the sidecar still holds units and is not waiting on the answer."""
    body: dict[str, Any] = {
        "policy": policy,
        "policyHash": policy_hash,
        "batch": batch,
        "releases": [
            {"route": route, "requestId": request_id, "time": time} for request_id in request_ids
        ],
    }
    if renew is not None:
        body["renew"] = renew
    if deferrable:
        body["deferrable"] = True
    return body
