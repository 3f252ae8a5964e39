"""Who may charge what: pure decisions over TokenReview answers, pods and policies."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from hush.accountant import authorization, protocol

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
POD = {"metadata": {"uid": "uid-1", "annotations": {"hush.dev/policy": "census-stats"}}}
POLICY = {
    "spec": {
        "budgetRef": {"name": "census", "team": "analytics"},
        "routes": [{"path": "/count", "mechanism": "laplace", "epsilon": 0.1}],
    }
}


def test_a_pod_bound_token_of_an_annotated_pod_is_granted_its_policys_budget() -> None:
    caller = authorization.caller_from_review(REVIEW)
    assert (caller.namespace, caller.service_account, caller.pod) == ("stats", "app", "app-1")
    policy = authorization.policy_of_pod(caller, POD)
    authorization.authorise_policy(caller, policy, "census-stats")
    grant = authorization.grant_for(caller, policy, POLICY)
    assert (grant.budget, grant.team, grant.namespace) == ("census", "analytics", "stats")
    assert authorization.check_route("census-stats", POLICY, "/count") == {
        "path": "/count",
        "mechanism": "laplace",
        "epsilon": 0.1,
    }


@pytest.mark.parametrize(
    ("review", "status", "message"),
    [
        ({"authenticated": False, "error": "token expired"}, 401, "token expired"),
        ({"authenticated": True, "user": {"username": "alice"}}, 403, "not a ServiceAccount"),
        (
            {"authenticated": True, "user": {"username": "system:serviceaccount:a:b"}},
            403,
            "not bound to a pod",
        ),
    ],
)
def test_unusable_tokens_are_refused(review: dict[str, Any], status: int, message: str) -> None:
    with pytest.raises(authorization.DeniedError, match=message) as refused:
        authorization.caller_from_review(review)
    assert refused.value.status == status


def test_a_recreated_pod_or_one_without_a_policy_is_refused() -> None:
    caller = authorization.caller_from_review(REVIEW)
    with pytest.raises(authorization.DeniedError, match="recreated"):
        authorization.policy_of_pod(caller, {"metadata": {"uid": "uid-2"}})
    with pytest.raises(authorization.DeniedError, match=r"no hush\.dev/policy"):
        authorization.policy_of_pod(caller, {"metadata": {"uid": "uid-1"}})
    with pytest.raises(authorization.DeniedError, match="no longer exists"):
        authorization.policy_of_pod(caller, None)


def test_another_policy_or_an_undeclared_route_is_refused() -> None:
    caller = authorization.caller_from_review(REVIEW)
    with pytest.raises(authorization.DeniedError, match="runs under policy census-stats"):
        authorization.authorise_policy(caller, "census-stats", "other")
    with pytest.raises(authorization.DeniedError, match="census-stats has no route /other"):
        authorization.check_route("census-stats", POLICY, "/other")
    with pytest.raises(authorization.DeniedError, match="has no route /count"):
        authorization.check_route("census-stats", {"spec": {}}, "/count")


def test_a_charge_names_no_cost_and_a_body_that_does_is_malformed() -> None:
    body = {"requestId": "r-1", "policy": "census-stats", "route": "/count", "policyHash": "h"}
    assert protocol.SpendRequest.model_validate(body).policy_hash == "h"
    for cost in ("mechanism", "epsilon", "delta", "sensitivity", "scale"):
        with pytest.raises(pydantic.ValidationError, match="Extra inputs are not permitted"):
            protocol.SpendRequest.model_validate({**body, cost: "1"})
    for bad in ({"requestId": "a b"}, {"policyHash": ""}, {"route": ""}):
        with pytest.raises(pydantic.ValidationError):
            protocol.SpendRequest.model_validate({**body, **bad})
    without_hash = {key: value for key, value in body.items() if key != "policyHash"}
    with pytest.raises(pydantic.ValidationError, match="policyHash"):
        protocol.SpendRequest.model_validate(without_hash)


def test_a_stale_policy_hash_is_refused() -> None:
    policy = {**POLICY, "status": {"policyHash": "sha256:new"}}
    authorization.check_policy_hash(policy, None)
    authorization.check_policy_hash(policy, "sha256:new")
    authorization.check_policy_hash(POLICY, "sha256:old")  # no hash computed yet
    with pytest.raises(authorization.DeniedError, match="Stale policy") as refused:
        authorization.check_policy_hash(policy, "sha256:old")
    assert refused.value.status == 409
