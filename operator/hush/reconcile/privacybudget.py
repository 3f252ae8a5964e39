"""Evaluate a ``PrivacyBudget``: is its spec acceptable, and what does its status say?

The apiserver's CEL rules refuse most nonsense, but they compare doubles with a slack
(see ``hush.api.privacybudget``). This module redoes the checks that matter in exact
decimals and reports a spec it cannot accept as ``Ready=False`` with a reason and a fix,
never by raising. It also derives the totals shown by ``kubectl get privacybudgets``.

Spending is not decided here: the spent amounts are carried over from the current status
(the ledger owns them); this module only recomputes what follows from them.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
from collections.abc import Mapping
from typing import Any

import pydantic

from hush.api import common, privacybudget
from hush.api import ledger as ledger_wire
from hush.ledger import limits
from hush.privacy import accounting, amounts
from hush.reconcile import conditions as conditions_module

READY = "Ready"
NEAR_EXHAUSTION = "NearExhaustion"
EXHAUSTED = "Exhausted"
UNBOUNDED_LOSS = "UnboundedLifetimeLoss"
RENEWAL_ANCHORED = "RenewalAnchored"


@dataclasses.dataclass(frozen=True, kw_only=True)
class TeamQuota:
    epsilon: decimal.Decimal
    delta: decimal.Decimal


@dataclasses.dataclass(frozen=True, kw_only=True)
class BudgetSummary:
    """What a DPPolicy needs to know about the budget it names."""

    accepted: bool
    reason: str
    accounting: str
    quotas: Mapping[str, TeamQuota]


def parse_spec(spec: Mapping[str, Any]) -> privacybudget.PrivacyBudgetSpec:
    """The typed spec; raises ``pydantic.ValidationError`` with every problem."""
    return privacybudget.PrivacyBudgetSpec.model_validate(dict(spec))


def spec_problems(spec: privacybudget.PrivacyBudgetSpec) -> list[str]:
    """Problems that the apiserver's double-precision CEL rules cannot see, in words."""
    problems = []
    total_epsilon = amounts.exact(spec.epsilon)
    total_delta = amounts.exact(spec.delta)
    quota_epsilon = amounts.total([amounts.exact(quota.epsilon) for quota in spec.quotas])
    quota_delta = amounts.total([amounts.exact(quota.delta) for quota in spec.quotas])
    if quota_epsilon > total_epsilon:
        problems.append(
            f"the quotas' epsilon add up to {amounts.display(quota_epsilon)}, more than "
            f"spec.epsilon {amounts.display(total_epsilon)}: lower a quota or raise the total"
        )
    if quota_delta > total_delta:
        problems.append(
            f"the quotas' delta add up to {amounts.display(quota_delta)}, more than "
            f"spec.delta {amounts.display(total_delta)}: lower a quota or raise the total"
        )
    return problems


def describe_validation_error(error: pydantic.ValidationError) -> str:
    parts = []
    for problem in error.errors():
        location = ".".join(str(part) for part in problem["loc"]) or "spec"
        parts.append(f"spec.{location}: {problem['msg']}")
    return "; ".join(parts)


def summarise(spec: Mapping[str, Any]) -> BudgetSummary:
    """The summary that policies referring to this budget are checked against."""
    try:
        parsed = parse_spec(spec)
    except pydantic.ValidationError:
        return BudgetSummary(accepted=False, reason="InvalidSpec", accounting="", quotas={})
    problems = spec_problems(parsed)
    return BudgetSummary(
        accepted=not problems,
        reason="QuotasExceedTotal" if problems else "Accepted",
        accounting=parsed.accounting,
        quotas={
            quota.team: TeamQuota(
                epsilon=amounts.exact(quota.epsilon), delta=amounts.exact(quota.delta)
            )
            for quota in parsed.quotas
        },
    )


def _spend(total: decimal.Decimal, spent: decimal.Decimal) -> privacybudget.Spend:
    remaining = max(total - spent, decimal.Decimal(0))
    return privacybudget.Spend(
        total=amounts.display(total),
        spent=amounts.display(spent),
        remaining=amounts.display(remaining),
    )


def _delta_spend(
    accountant: accounting.Accountant, total: decimal.Decimal, spent: accounting.Cost
) -> privacybudget.Spend | None:
    """Delta spent is meaningful under pure accounting only (zcdp and rdp fix delta)."""
    if not isinstance(accountant, accounting.PureAccountant):
        return None
    return _spend(total, accountant.delta_spent(spent))


def evaluate(
    spec: Mapping[str, Any],
    *,
    generation: int,
    status: Mapping[str, Any],
    ledger: ledger_wire.Ledger | None = None,
    now: datetime.datetime,
) -> privacybudget.PrivacyBudgetStatus:
    """The status ``PrivacyBudget`` should have, given its spec, status and ledger.

    ``ledger`` is the ledger to publish (the accountant passes the one it just updated);
    when omitted, the one in ``status`` is kept as it is.
    """
    if ledger is None:
        raw_ledger = status.get("ledger")
        ledger = ledger_wire.Ledger.model_validate(raw_ledger) if raw_ledger else None
    current = conditions_module.parse(status.get("conditions"))

    def condition(
        items: list[common.Condition],
        type_: str,
        state: common.ConditionStatus,
        reason: str,
        message: str,
    ) -> list[common.Condition]:
        return conditions_module.set_condition(
            items,
            condition_type=type_,
            status=state,
            reason=reason,
            message=message,
            observed_generation=generation,
            now=now,
        )

    try:
        parsed = parse_spec(spec)
    except pydantic.ValidationError as error:
        message = "The spec cannot be used: " + describe_validation_error(error)
        return privacybudget.PrivacyBudgetStatus(
            observed_generation=generation,
            conditions=condition(current, READY, "False", "InvalidSpec", message),
            state="Invalid",
            ledger=ledger,
        )

    problems = spec_problems(parsed)
    if problems:
        message = "The spec cannot be used: " + "; ".join(problems)
        updated = condition(current, READY, "False", "QuotasExceedTotal", message)
        state: privacybudget.BudgetState = "Invalid"
    else:
        updated = condition(
            current,
            READY,
            "True",
            "Accepted",
            f"Budget of dataset {parsed.dataset} accepted with {len(parsed.quotas)} team quota(s)",
        )
        state = "Ready"

    accountant = accounting.accountant(parsed.accounting)
    total_epsilon = amounts.exact(parsed.epsilon)
    total_delta = amounts.exact(parsed.delta)
    spent_units = accountant.from_json(list(ledger.spent)) if ledger else accountant.zero()
    spent_epsilon = accountant.epsilon_spent(spent_units, total_delta)
    # NearExhaustion looks at the dataset total and at every team quota: a team that has
    # spent 95% of its quota needs its owner's attention even if the dataset has room.
    team_units = {team.team: list(team.spent) for team in ledger.teams} if ledger else {}
    team_spent_units = {
        quota.team: accountant.from_json(team_units.get(quota.team, [])) for quota in parsed.quotas
    }
    team_spent_epsilon = {
        quota.team: accountant.epsilon_spent(
            team_spent_units[quota.team], limits.team_delta(parsed, quota)
        )
        for quota in parsed.quotas
    }
    usage = [("the dataset", spent_epsilon, total_epsilon)]
    usage += [
        (f"team {quota.team}", team_spent_epsilon[quota.team], amounts.exact(quota.epsilon))
        for quota in parsed.quotas
        if quota.epsilon > 0
    ]
    who, worst_spent, worst_total = max(usage, key=lambda item: item[1] / item[2])
    fraction = worst_spent / worst_total
    crossed = [alert for alert in sorted(parsed.alerts) if fraction >= amounts.exact(alert)]
    exhausted = not accountant.fits(spent_units, accountant.capacity(total_epsilon, total_delta))
    exhausted = exhausted or spent_epsilon >= total_epsilon

    if exhausted:
        updated = condition(
            updated,
            EXHAUSTED,
            "True",
            "BudgetSpent",
            f"Spent {amounts.display(spent_epsilon)} of epsilon {amounts.display(total_epsilon)}; "
            "further charges are refused",
        )
    else:
        updated = condition(updated, EXHAUSTED, "False", "BudgetAvailable", "")
    if crossed:
        updated = condition(
            updated,
            NEAR_EXHAUSTION,
            "True",
            "AlertThresholdCrossed",
            f"{who[0].upper()}{who[1:]} spent {amounts.display(worst_spent)} of epsilon "
            f"{amounts.display(worst_total)} (at least {crossed[-1]:.0%})",
        )
    else:
        updated = condition(updated, NEAR_EXHAUSTION, "False", "BelowAlertThresholds", "")
    lifetime_epsilon: decimal.Decimal | None = None
    if parsed.renewal.policy != "none":
        lifetime_units = (
            accountant.from_json(list(ledger.lifetime_spent)) if ledger else accountant.zero()
        )
        lifetime_epsilon = accountant.epsilon_spent(lifetime_units, total_delta)
    if parsed.renewal.policy == "calendar":
        updated = condition(
            updated,
            UNBOUNDED_LOSS,
            "True",
            "CalendarRenewal",
            f"The budget resets every {parsed.renewal.period} on the same data: the lifetime "
            "privacy loss grows without bound (spent over all windows so far: epsilon "
            f"{amounts.display(lifetime_epsilon or decimal.Decimal(0))}). Prefer "
            "renewal.policy perDataBlock",
        )

    if parsed.renewal.policy != "none":
        # The apiserver requires an anchor for renewal; only an object stored before that
        # rule lacks one, and its windows still count from its creation (ledger.windows).
        if parsed.renewal.anchor is not None:
            updated = condition(
                updated,
                RENEWAL_ANCHORED,
                "True",
                "DeclaredAnchor",
                f"Windows of {parsed.renewal.period} count from {parsed.renewal.anchor}",
            )
        else:
            updated = condition(
                updated,
                RENEWAL_ANCHORED,
                "False",
                "CreationTimestamp",
                f"Windows of {parsed.renewal.period} count from the object's creation, which no "
                "data block lines up with; the renewal cannot change once spent, so create a "
                "new PrivacyBudget with renewal.anchor set to the start of a data block",
            )

    if state == "Ready":
        if exhausted:
            state = "Exhausted"
        elif crossed:
            state = "NearExhaustion"

    teams = [
        privacybudget.TeamSpend(
            team=quota.team,
            epsilon=_spend(amounts.exact(quota.epsilon), team_spent_epsilon[quota.team]),
            delta=_delta_spend(
                accountant, amounts.exact(quota.delta), team_spent_units[quota.team]
            ),
        )
        for quota in parsed.quotas
    ]
    return privacybudget.PrivacyBudgetStatus(
        observed_generation=generation,
        conditions=updated,
        state=state,
        epsilon=_spend(total_epsilon, spent_epsilon),
        delta=_delta_spend(accountant, total_delta, spent_units),
        teams=teams,
        team_count=len(teams),
        lifetime_epsilon_spent=(
            amounts.display(lifetime_epsilon) if lifetime_epsilon is not None else None
        ),
        ledger=ledger,
    )
