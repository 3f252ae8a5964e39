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

Spent budget is never handed back by editing the spec (issue 14, finding 4). The root
``TRANSITION_RULES`` freeze what gives spent amounts their meaning once anything was spent:
the accounting mode, the totals (they may only grow), and the renewal (policy, period,
anchor): a new period or anchor would start a new window at once and refund the old one.
Renewal windows are counted from a declared ``renewal.anchor`` (the start of the first data
block), never from the object's creation, and a period is at least ``MINIMUM_RENEWAL_PERIOD``.
"""

from __future__ import annotations

import datetime
import re
from typing import Literal

import pydantic

from hush.api import common
from hush.api import ledger as ledger_wire

Accounting = Literal["pure", "zcdp", "rdp"]
RenewalPolicy = Literal["none", "perDataBlock", "calendar"]
Enforcement = Literal["block", "warn"]
BudgetState = Literal["Pending", "Ready", "NearExhaustion", "Exhausted", "Invalid"]

# One hour: the finest partition of real time-partitioned data (hourly tables), and a cap on
# how fast calendar renewal re-spends the same people (at most 24 windows a day). A period of
# milliseconds made perDataBlock's "new data" share its people with the previous window's and
# calendar renewal an endless refund; both were accepted before (issue 14, finding 4).
MINIMUM_RENEWAL_PERIOD = datetime.timedelta(hours=1)
_MINIMUM_RENEWAL_PERIOD_TEXT = "1h"

# RFC 3339 with an explicit offset (what kubectl and Kubernetes timestamps look like).
ANCHOR_PATTERN = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})$"
)

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> datetime.timedelta:
    """A Go-style duration such as ``720h``, ``1h30m`` or ``500ms`` (what CEL's ``duration``
    reads too)."""
    position, seconds = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            break
        seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position != len(text) or not text or seconds <= 0:
        raise ValueError(f"not a positive duration: {text!r} (use e.g. 24h, 30m, 90s)")
    return datetime.timedelta(seconds=seconds)


def parse_timestamp(text: str) -> datetime.datetime:
    """An RFC 3339 timestamp with an offset (``2026-11-22T12:00:00Z``), timezone-aware."""
    if not re.match(ANCHOR_PATTERN, text):
        raise ValueError(f"not an RFC 3339 timestamp with an offset: {text!r}")
    # fromisoformat takes at most 6 fractional digits; Kubernetes may write 9.
    whole, _, rest = text.partition(".")
    if rest:
        digits = re.match(r"[0-9]+", rest)
        fraction = digits.group(0) if digits else ""
        text = f"{whole}.{fraction[:6].ljust(6, '0')}{rest[len(fraction) :]}"
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


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
    """When, if ever, spent budget becomes available again.

    Window k covers [anchor + k·period, anchor + (k+1)·period). The whole renewal is frozen
    once anything was spent (``TRANSITION_RULES``).
    """

    model_config = pydantic.ConfigDict(
        json_schema_extra=common.cel(
            (
                "self.policy == 'none' || has(self.period)",
                "renewal.period is required for perDataBlock and calendar renewal (e.g. 720h)",
            ),
            (
                "self.policy == 'none' || has(self.anchor)",
                "renewal.anchor is required for perDataBlock and calendar renewal: the RFC 3339 "
                "time at which the first window starts, e.g. the start of the first data block "
                "(2026-01-01T00:00:00Z); windows are counted from it",
            ),
            (
                f"!has(self.period) || duration(self.period) >= "
                f"duration('{_MINIMUM_RENEWAL_PERIOD_TEXT}')",
                f"renewal.period must be at least {_MINIMUM_RENEWAL_PERIOD_TEXT}: shorter "
                "windows renew the budget faster than data blocks change (use e.g. 24h or 720h)",
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
        description="Length of a data block or calendar period, at least 1h, e.g. 24h or 720h.",
    )
    anchor: str | None = pydantic.Field(
        default=None,
        pattern=ANCHOR_PATTERN,
        max_length=40,
        description=(
            "RFC 3339 time at which window 0 starts, e.g. the start of the first data block "
            "(2026-01-01T00:00:00Z). Required for perDataBlock and calendar renewal."
        ),
        json_schema_extra={"format": "date-time"},
    )
    acknowledge_unbounded_loss: bool = pydantic.Field(
        default=False,
        description="Must be true for calendar renewal: the lifetime loss is unbounded.",
    )

    @pydantic.field_validator("period")
    @classmethod
    def _period_is_long_enough(cls, period: str | None) -> str | None:
        # The apiserver refuses these too; an object stored before the rule existed is
        # refused here, so the operator reports it Invalid instead of renewing every 1ms.
        if period is not None and parse_duration(period) < MINIMUM_RENEWAL_PERIOD:
            raise ValueError(f"renewal.period must be at least {_MINIMUM_RENEWAL_PERIOD_TEXT}")
        return period

    @pydantic.field_validator("anchor")
    @classmethod
    def _anchor_is_a_timestamp(cls, anchor: str | None) -> str | None:
        if anchor is not None:
            parse_timestamp(anchor)
        return anchor


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


# -- transition rules (root level: they read the stored status) ------------------------------

# On an update of the main resource the apiserver keeps the stored status in ``self``, so
# these rules see what was spent; a write to /status leaves spec unchanged and every rule
# below passes on its "unchanged" side (CEL's || ignores an error on the other side).
# "Anything was ever spent", however the status shows it: a ledger entry (sequence counts
# every charge and renewal and never goes back), lifetime or current units, or the epsilon
# the status displays. Renewal resets ``spent`` but never ``lifetimeSpent`` or ``sequence``.
_EVER_SPENT = (
    "(has(self.status) && has(self.status.ledger) && ("
    "(has(self.status.ledger.sequence) && self.status.ledger.sequence > 0)"
    " || (has(self.status.ledger.lifetimeSpent)"
    " && self.status.ledger.lifetimeSpent.exists(unit, unit != 0))"
    " || (has(self.status.ledger.spent) && self.status.ledger.spent.exists(unit, unit != 0))"
    " || (has(self.status.ledger.epsilonSpent) && self.status.ledger.epsilonSpent > 0.0)))"
    " || (has(self.status) && has(self.status.lifetimeEpsilonSpent)"
    " && double(self.status.lifetimeEpsilonSpent) > 0.0)"
    " || (has(self.status) && has(self.status.epsilon)"
    " && double(self.status.epsilon.spent) > 0.0)"
)


def _renewal_value(obj: str, field: str, absent: str) -> str:
    return (
        f"(has({obj}.spec.renewal) && has({obj}.spec.renewal.{field})"
        f" ? {obj}.spec.renewal.{field} : '{absent}')"
    )


def _has_anchor(obj: str) -> str:
    return f"(has({obj}.spec.renewal) && has({obj}.spec.renewal.anchor))"


# The anchor is a CEL timestamp (format date-time): equal when it is the same instant, so
# 01:00:00+01:00 for 00:00:00Z is not a change.
_RENEWAL_UNCHANGED = " && ".join(
    [
        f"{_renewal_value('self', field, absent)} == {_renewal_value('oldSelf', field, absent)}"
        for field, absent in (("policy", "none"), ("period", ""))
    ]
    + [
        f"{_has_anchor('self')} == {_has_anchor('oldSelf')}",
        f"(!{_has_anchor('self')} || self.spec.renewal.anchor == oldSelf.spec.renewal.anchor)",
    ]
)

TRANSITION_RULES: tuple[tuple[str, str], ...] = (
    (
        "!has(self.status) || !has(self.status.ledger) || self.status.ledger.sequence == 0"
        " || self.spec.accounting == oldSelf.spec.accounting",
        "spec.accounting cannot change after the first charge: the ledger's amounts are "
        "in the units of the old mode; create a new PrivacyBudget instead",
    ),
    (
        "self.spec.epsilon >= oldSelf.spec.epsilon || !has(self.status)"
        " || !has(self.status.ledger)"
        " || self.spec.epsilon >= self.status.ledger.epsilonSpent",
        "spec.epsilon cannot be lowered below the epsilon already spent "
        "(status.ledger.epsilonSpent)",
    ),
    (
        "self.spec.delta >= oldSelf.spec.delta || !has(self.status)"
        " || !has(self.status.ledger) || self.status.ledger.sequence == 0",
        "spec.delta cannot be lowered after the first charge",
    ),
    (
        # What makes "ever spent" permanent: the ledger never loses entries. Spec writes keep
        # the stored status, so this binds writes to /status, which only the operator makes.
        "!has(oldSelf.status) || !has(oldSelf.status.ledger)"
        " || !has(oldSelf.status.ledger.sequence)"
        " || (has(self.status) && has(self.status.ledger) && has(self.status.ledger.sequence)"
        " && self.status.ledger.sequence >= oldSelf.status.ledger.sequence)",
        "status.ledger cannot be removed and its sequence cannot go back: the ledger is "
        "append-only, and one that forgot its charges would hand them back",
    ),
    (
        f"({_RENEWAL_UNCHANGED}) || !({_EVER_SPENT})",
        "spec.renewal (policy, period and anchor) cannot change once anything was spent from "
        "this budget: a new policy, a shorter period or a moved anchor starts a new window and "
        "would hand spent budget back. Create a new PrivacyBudget with the renewal you want "
        "(its people's loss still adds to what this one spent)",
    ),
)
