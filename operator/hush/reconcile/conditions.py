"""Kubernetes-style conditions: set one, keeping ``lastTransitionTime`` honest.

A condition's ``lastTransitionTime`` changes only when its ``status`` changes; a new
reason or message alone is not a transition. Conditions keep a stable order (the order in
which types were first set) so that a status write that changes nothing is byte-identical
and can be skipped.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

from hush.api import common


def format_time(moment: datetime.datetime) -> str:
    """RFC 3339 in UTC with second precision, as Kubernetes writes metav1.Time."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: Sequence[common.Condition],
    *,
    condition_type: str,
    status: common.ConditionStatus,
    reason: str,
    message: str,
    observed_generation: int,
    now: datetime.datetime,
) -> list[common.Condition]:
    """Return ``conditions`` with the condition of ``condition_type`` set as given."""
    previous = find(conditions, condition_type)
    updated = common.Condition(
        type=condition_type,
        status=status,
        reason=reason,
        message=message,
        observed_generation=observed_generation,
        last_transition_time=(
            previous.last_transition_time
            if previous is not None and previous.status == status
            else format_time(now)
        ),
    )
    if previous is None:
        return [*conditions, updated]
    return [updated if item.type == condition_type else item for item in conditions]


def find(conditions: Sequence[common.Condition], condition_type: str) -> common.Condition | None:
    """The condition of ``condition_type``, or None."""
    return next((item for item in conditions if item.type == condition_type), None)


def parse(raw: object) -> list[common.Condition]:
    """Conditions from a raw status list; entries that do not parse are dropped."""
    if not isinstance(raw, list):
        return []
    parsed = []
    for item in raw:
        try:
            parsed.append(common.Condition.model_validate(item))
        except ValueError:
            continue  # a hand-edited or foreign entry: we rewrite our own conditions anyway
    return parsed
