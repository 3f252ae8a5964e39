"""Who is calling, and may they charge this? Pure decisions over API objects.

A sidecar authenticates with its pod's projected ServiceAccount token, bound to the pod
and to the accountant's audience. The TokenReview answer names the ServiceAccount and, for
pod-bound tokens, the pod (``authentication.kubernetes.io/pod-name`` / ``pod-uid`` extras).
The caller may charge only:
- under the policy that its pod's ``hush.dev/policy`` annotation names,
- in the pod's own namespace (policies and budgets are namespaced),
- the budget and team that policy's ``budgetRef`` names,
- a route that policy declares.
What a release of that route costs is not the caller's to say: ``pricing`` computes it from
the policy (the request carries no cost at all).
A token without a bound pod, for another audience, of a deleted pod or of a pod recreated
under the same name (uid mismatch) is refused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

POLICY_ANNOTATION = "hush.dev/policy"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Caller:
    namespace: str
    service_account: str
    pod: str
    pod_uid: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class Grant:
    """What an authorised caller may charge."""

    namespace: str
    pod: str
    policy: str
    budget: str
    team: str


class DeniedError(Exception):
    """The caller may not do this; the message says why (it is sent back)."""

    def __init__(self, message: str, *, status: int = 403) -> None:
        super().__init__(message)
        self.status = status


def caller_from_review(review: Mapping[str, Any]) -> Caller:
    """The calling pod from a TokenReview status, or ``DeniedError``."""
    if not review.get("authenticated"):
        raise DeniedError(
            "Token not accepted: " + str(review.get("error") or "unauthenticated"), status=401
        )
    user = review.get("user") or {}
    username = str(user.get("username", ""))
    if not username.startswith(SERVICE_ACCOUNT_PREFIX):
        raise DeniedError(f"{username} is not a ServiceAccount")
    namespace, _, service_account = username.removeprefix(SERVICE_ACCOUNT_PREFIX).partition(":")
    extra = user.get("extra") or {}
    pod_names = extra.get("authentication.kubernetes.io/pod-name") or []
    pod_uids = extra.get("authentication.kubernetes.io/pod-uid") or []
    if not pod_names or not pod_uids:
        raise DeniedError(
            "The token is not bound to a pod: use the pod's projected ServiceAccount token"
        )
    return Caller(
        namespace=namespace,
        service_account=service_account,
        pod=str(pod_names[0]),
        pod_uid=str(pod_uids[0]),
    )


def policy_of_pod(caller: Caller, pod: Mapping[str, Any] | None) -> str:
    """The policy the caller's pod runs under, checking the pod is the token's pod."""
    if pod is None:
        raise DeniedError(f"Pod {caller.namespace}/{caller.pod} no longer exists")
    metadata = pod.get("metadata") or {}
    if metadata.get("uid") != caller.pod_uid:
        raise DeniedError(f"Pod {caller.namespace}/{caller.pod} was recreated: token is stale")
    policy = (metadata.get("annotations") or {}).get(POLICY_ANNOTATION)
    if not policy:
        raise DeniedError(
            f"Pod {caller.namespace}/{caller.pod} has no {POLICY_ANNOTATION} annotation"
        )
    return str(policy)


def authorise_policy(caller: Caller, pod_policy: str, requested_policy: str) -> None:
    if requested_policy != pod_policy:
        raise DeniedError(
            f"Pod {caller.namespace}/{caller.pod} runs under policy {pod_policy}, "
            f"not {requested_policy}"
        )


def grant_for(caller: Caller, policy_name: str, policy: Mapping[str, Any] | None) -> Grant:
    """The budget and team the caller may charge, from its policy's ``budgetRef``."""
    if policy is None:
        raise DeniedError(f"DPPolicy {caller.namespace}/{policy_name} does not exist", status=404)
    reference = (policy.get("spec") or {}).get("budgetRef") or {}
    budget, team = reference.get("name"), reference.get("team")
    if not budget or not team:
        raise DeniedError(f"DPPolicy {policy_name} has no budgetRef", status=409)
    return Grant(
        namespace=caller.namespace,
        pod=caller.pod,
        policy=policy_name,
        budget=str(budget),
        team=str(team),
    )


def check_route(policy_name: str, policy: Mapping[str, Any], route: str) -> Mapping[str, Any]:
    """The policy's declaration of ``route`` (its spec, as stored), or ``DeniedError``."""
    routes = (policy.get("spec") or {}).get("routes") or []
    declared = next(
        (item for item in routes if isinstance(item, Mapping) and item.get("path") == route),
        None,
    )
    if declared is None:
        raise DeniedError(f"Policy {policy_name} has no route {route}")
    return declared


def current_policy_hash(policy: Mapping[str, Any]) -> str | None:
    """The hash the operator computed for the policy's spec (None until it has)."""
    current = (policy.get("status") or {}).get("policyHash")
    return str(current) if current else None


def stale_policy_message(policy: Mapping[str, Any], baked_hash: str | None) -> str | None:
    """Why a pod that baked ``baked_hash`` runs a stale policy, or None when it does not.

    Not yet hashed (a policy the operator has not reconciled) counts as current: the
    operator hashes every policy it sees, and refusing then would fail every new pod.
    """
    current = current_policy_hash(policy)
    if baked_hash is None or current is None or current == baked_hash:
        return None
    return (
        f"Stale policy: this pod runs policy hash {baked_hash}, the DPPolicy is now "
        f"{current}; the pod must be replaced (rolled) before it may release again"
    )


def check_policy_hash(policy: Mapping[str, Any], baked_hash: str | None) -> None:
    """A pod running a stale policy may not release (invariant 6: all-or-nothing rollouts)."""
    message = stale_policy_message(policy, baked_hash)
    if message is not None:
        raise DeniedError(message, status=409)
