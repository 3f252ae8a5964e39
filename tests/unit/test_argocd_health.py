"""The Argo CD health checks (Lua) map Hush's conditions to Healthy/Progressing/Degraded.

Objects here are shaped like the operator's status; e2e/test_argocd_health.py runs the same
scripts against objects read from the real cluster.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests import argocd_health


def _object(kind: str, conditions: list[dict[str, Any]] | None, *, observed: int = 1) -> Any:
    body: dict[str, Any] = {
        "apiVersion": "hush.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "survey", "generation": 1},
        "spec": {},
    }
    if conditions is not None:
        body["status"] = {"observedGeneration": observed, "conditions": conditions}
    return body


def _condition(kind: str, status: str, reason: str = "R", message: str = "m") -> dict[str, Any]:
    return {"type": kind, "status": status, "reason": reason, "message": message}


@pytest.mark.parametrize(
    ("kind", "conditions", "observed", "expected", "message_part"),
    [
        ("PrivacyBudget", None, 1, "Progressing", "Waiting"),
        ("PrivacyBudget", [_condition("Ready", "True")], 0, "Progressing", "generation 1"),
        ("PrivacyBudget", [_condition("Ready", "True", message="ok")], 1, "Healthy", "ok"),
        (
            "PrivacyBudget",
            [_condition("Ready", "True"), _condition("NearExhaustion", "True", message="80%")],
            1,
            "Healthy",
            "Near exhaustion: 80%",
        ),
        (
            "PrivacyBudget",
            [_condition("Ready", "True"), _condition("Exhausted", "True", message="spent")],
            1,
            "Degraded",
            "Exhausted: spent",
        ),
        (
            "PrivacyBudget",
            [_condition("Ready", "False", "QuotaOverflow", "too much")],
            1,
            "Degraded",
            "QuotaOverflow: too much",
        ),
        ("DPPolicy", None, 1, "Progressing", "Waiting"),
        (
            "DPPolicy",
            [_condition("Ready", "True"), _condition("RolloutComplete", "True")],
            1,
            "Healthy",
            "m",
        ),
        (
            "DPPolicy",
            [_condition("Ready", "True"), _condition("RolloutComplete", "False", message="2 left")],
            1,
            "Progressing",
            "Rolling out: 2 left",
        ),
        (
            "DPPolicy",
            [
                _condition("Ready", "True"),
                _condition("RolloutComplete", "False"),
                _condition("RolloutStalled", "True", message="Deployment web: quota"),
            ],
            1,
            "Degraded",
            "Rollout stalled: Deployment web: quota",
        ),
        (
            "DPPolicy",
            [_condition("Ready", "False", "BudgetNotFound", "create it")],
            1,
            "Degraded",
            "BudgetNotFound: create it",
        ),
    ],
)
def test_health(
    kind: str,
    conditions: list[dict[str, Any]] | None,
    observed: int,
    expected: str,
    message_part: str,
) -> None:
    status, message = argocd_health.health(
        "hush.dev", kind, _object(kind, conditions, observed=observed)
    )
    assert status == expected
    assert message_part in message


def test_lua_values_round_trip_strings_with_quotes_and_unicode() -> None:
    tricky = 'a "quoted" \\ back\nslash ε'
    status, message = argocd_health.health(
        "hush.dev",
        "PrivacyBudget",
        _object("PrivacyBudget", [_condition("Ready", "False", "Bad", tricky)]),
    )
    assert status == "Degraded"
    assert message == f"Bad: {tricky}"
