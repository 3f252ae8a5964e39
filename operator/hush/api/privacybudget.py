"""The ``PrivacyBudget`` resource: one protected dataset's privacy budget and its team quotas.

Owns the wire shape (spec and status) and the CEL rules that the apiserver enforces on
``kubectl apply``. It does not decide anything at run time: ``hush.reconcile.privacybudget``
evaluates a spec, and the ledger (a later layer) spends it.

Why quotas *and* a total: per-team budgets alone are unsound, because two teams querying
the same people compose (Big Bird, SOSP'25). Every charge must fit both the team's quota
and the dataset's total, so the quotas are carved out of the total and may not exceed it.

Numbers are JSON numbers on the wire for convenience; every comparison that matters is
redone in exact decimal arithmetic by the operator (CEL sums are doubles, so CEL allows
a relative slack of 1e-9 and the operator's exact check has the last word).
"""

from __future__ import annotations

from typing import Literal

import pydantic

from hush.api import common
from hush.api import ledger as ledger_wire

Accounting = Literal["pure", "zcdp", "rdp"]
RenewalPolicy = Literal["none", "perDataBlock", "calendar"]
Enforcement = Literal["block", "warn"]
BudgetState = Literal["Pending", "Ready", "NearExhaustion", "Exhausted", "Invalid"]

_EPSILON_RULES = common.cel(("self > 0.0", "epsilon must be greater than 0"))
_DELTA_RULES = common.cel(
    ("self >= 0.0 && self < 1.0", "delta must be at least 0 and less than 1 (e.g. 1e-6)")
)


class TeamQuota(common.ResourceModel):
    """The part of the dataset's total that one team may spend."""

    team: str = pydantic.Field(
        max_length=63,
        pattern=common.DNS_LABEL_PATTERN,
        description="Team name, as in the hush.dev/team label of its workloads.",
    )
    epsilon: float = pydantic.Field(
        description="The team's epsilon quota.", json_schema_extra=_EPSILON_RULES
    )
    delta: float = pydantic.Field(
        default=0.0, description="The team's delta quota.", json_schema_extra=_DELTA_RULES
    )


class Renewal(common.ResourceModel):
    """When, if ever, spent budget becomes available again."""

    model_config = pydantic.ConfigDict(
        json_schema_extra=common.cel(
            (
                "self.policy == 'none' || has(self.period)",
                "renewal.period is required for perDataBlock and calendar renewal (e.g. 720h)",
            ),
            (
                "self.policy != 'calendar' || "
                "(has(self.acknowledgeUnboundedLoss) && self.acknowledgeUnboundedLoss)",
                "calendar renewal re-spends the same people's privacy every period, so the "
                "lifetime loss grows without bound; set acknowledgeUnboundedLoss: true to "
                "accept that, or use perDataBlock for time-partitioned data",
            ),
        )
    )

    policy: RenewalPolicy = pydantic.Field(
        default="none",
        description=(
            "none: a lifetime budget (default). perDataBlock: each period's new data gets its "
            "own budget (sound for time-partitioned data). calendar: the same data's budget "
            "is reset every period (unsound; needs acknowledgeUnboundedLoss)."
        ),
    )
    period: str | None = pydantic.Field(
        default=None,
        pattern=common.DURATION_PATTERN,
        max_length=32,
        description="Length of a data block or calendar period, e.g. 24h or 720h.",
    )
    acknowledge_unbounded_loss: bool = pydantic.Field(
        default=False,
        description="Must be true for calendar renewal: the lifetime loss is unbounded.",
    )


class PrivacyBudgetSpec(common.ResourceModel):
    """What the privacy owner declares."""

    model_config = pydantic.ConfigDict(
        json_schema_extra=common.cel(
            (
                "!has(self.quotas) || "
                "self.quotas.map(q, q.epsilon).sum() <= self.epsilon * (1.0 + 1e-9)",
                "the sum of the quotas' epsilon may not exceed spec.epsilon, the dataset's total",
            ),
            (
                "!has(self.quotas) || "
                "self.quotas.map(q, q.delta).sum() <= self.delta * (1.0 + 1e-9)",
                "the sum of the quotas' delta may not exceed spec.delta, the dataset's total",
            ),
            (
                "self.accounting == 'pure' || self.delta > 0.0",
                "zcdp and rdp accounting convert to (epsilon, delta) and need spec.delta > 0",
            ),
        )
    )

    dataset: str = pydantic.Field(
        min_length=1, max_length=253, description="Name of the protected dataset."
    )
    epsilon: float = pydantic.Field(
        description="The dataset's total epsilon, shared by all teams.",
        json_schema_extra=_EPSILON_RULES,
    )
    delta: float = pydantic.Field(
        default=0.0, description="The dataset's total delta.", json_schema_extra=_DELTA_RULES
    )
    quotas: list[TeamQuota] = pydantic.Field(
        default_factory=list,
        max_length=64,
        description="Per-team quotas carved out of the total; a charge must fit both.",
        json_schema_extra=common.list_map("team"),
    )
    accounting: Accounting = pydantic.Field(
        default="pure",
        description=(
            "How losses compose: pure (epsilon sums), zcdp (rho sums), rdp (Renyi DP over a "
            "fixed grid of orders)."
        ),
    )
    renewal: Renewal = pydantic.Field(
        default_factory=Renewal, description="Whether and how the budget renews."
    )
    alerts: list[float] = pydantic.Field(
        default_factory=lambda: [0.8, 0.95],
        max_length=8,
        description="Fractions of the total at which NearExhaustion is raised, with an Event.",
        json_schema_extra={
            "items": {
                "type": "number",
                **common.cel(
                    ("self > 0.0 && self < 1.0", "alert thresholds are fractions between 0 and 1")
                ),
            }
        },
    )
    enforcement: Enforcement = pydantic.Field(
        default="block",
        description="block: refuse charges past the budget. warn: allow them and raise alerts.",
    )


class Spend(common.ResourceModel):
    """Total, spent and remaining amounts, as exact decimal strings."""

    total: str = pydantic.Field(max_length=64)
    spent: str = pydantic.Field(max_length=64)
    remaining: str = pydantic.Field(max_length=64)


class TeamSpend(common.ResourceModel):
    """One team's ledger summary."""

    team: str = pydantic.Field(max_length=63)
    epsilon: Spend
    delta: Spend | None = pydantic.Field(default=None, description="Pure accounting only.")


class PrivacyBudgetStatus(common.ResourceModel):
    """What the operator observed and decided; only the operator writes it."""

    observed_generation: int = pydantic.Field(default=0, ge=0)
    conditions: list[common.Condition] = common.conditions_field()
    state: BudgetState = pydantic.Field(
        default="Pending", description="One-word summary for kubectl get."
    )
    epsilon: Spend | None = pydantic.Field(default=None, description="The dataset's epsilon.")
    delta: Spend | None = pydantic.Field(
        default=None,
        description="The dataset's delta (pure accounting; zcdp and rdp spend epsilon at a "
        "fixed delta).",
    )
    lifetime_epsilon_spent: str | None = pydantic.Field(
        default=None,
        max_length=64,
        description="Epsilon spent over every renewal window (shown for calendar renewal).",
    )
    teams: list[TeamSpend] = pydantic.Field(
        default_factory=list, max_length=64, json_schema_extra=common.list_map("team")
    )
    team_count: int = pydantic.Field(default=0, ge=0, description="Number of team quotas.")
    ledger: ledger_wire.Ledger | None = pydantic.Field(
        default=None,
        description="Hash-chained record of every charge; only the operator writes it.",
    )
