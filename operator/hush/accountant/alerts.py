"""Which Events a status change deserves: crossing an alert threshold, exhaustion.

Pure: compares the status before and after a write. An Event is due when
``NearExhaustion`` becomes True or its message changes while True (a higher ``alerts``
fraction was crossed), and when ``Exhausted`` becomes True.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class Alert:
    reason: str
    message: str


def _condition(status: Mapping[str, Any], condition_type: str) -> Mapping[str, Any]:
    for condition in status.get("conditions") or []:
        if condition.get("type") == condition_type:
            found: Mapping[str, Any] = condition
            return found
    return {}


def alerts(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[Alert]:
    due = []
    for condition_type, reason in (
        ("NearExhaustion", "NearExhaustion"),
        ("Exhausted", "BudgetExhausted"),
    ):
        old, new = _condition(before, condition_type), _condition(after, condition_type)
        if new.get("status") != "True":
            continue
        if old.get("status") != "True" or old.get("message") != new.get("message"):
            due.append(Alert(reason=reason, message=str(new.get("message", ""))))
    return due
