"""PrivacyBudget evaluation: exact checks, conditions, totals."""

from __future__ import annotations

import datetime
import decimal
from typing import Any

from hush.api import ledger as wire
from hush.api import privacybudget as privacybudget_api
from hush.ledger import book, limits
from hush.privacy import accounting
from hush.reconcile import conditions, privacybudget


def _spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "dataset": "census",
        "epsilon": 1.0,
        "delta": 1e-6,
        "quotas": [{"team": "a", "epsilon": 0.4}, {"team": "b", "epsilon": 0.6}],
    }
    spec.update(overrides)
    return spec


def _ready(status: Any) -> Any:
    return conditions.find(status.conditions, "Ready")


def test_accepted_budget_is_ready_with_totals(now: datetime.datetime) -> None:
    status = privacybudget.evaluate(_spec(), generation=3, status={}, now=now)
    ready = _ready(status)
    assert (ready.status, ready.reason, ready.observed_generation) == ("True", "Accepted", 3)
    assert status.observed_generation == 3
    assert status.state == "Ready"
    assert status.epsilon is not None
    assert (status.epsilon.total, status.epsilon.spent, status.epsilon.remaining) == ("1", "0", "1")
    assert [team.team for team in status.teams] == ["a", "b"]
    assert status.team_count == 2


def test_quotas_that_sum_exactly_to_the_total_are_accepted(now: datetime.datetime) -> None:
    spec = _spec(epsilon=0.3, quotas=[{"team": "a", "epsilon": 0.1}, {"team": "b", "epsilon": 0.2}])
    assert _ready(privacybudget.evaluate(spec, generation=1, status={}, now=now)).status == "True"


def test_quotas_one_ulp_above_the_total_are_refused_in_a_condition(
    now: datetime.datetime,
) -> None:
    # CEL compares doubles with a 1e-9 relative slack; the operator's exact check decides.
    spec = _spec(quotas=[{"team": "a", "epsilon": 0.5}, {"team": "b", "epsilon": 0.5000000001}])
    status = privacybudget.evaluate(spec, generation=2, status={}, now=now)
    ready = _ready(status)
    assert (ready.status, ready.reason) == ("False", "QuotasExceedTotal")
    assert "1.0000000001" in ready.message
    assert "lower a quota" in ready.message
    assert status.state == "Invalid"


def test_unparsable_spec_is_reported_not_raised(now: datetime.datetime) -> None:
    status = privacybudget.evaluate({"dataset": "x"}, generation=1, status={}, now=now)
    ready = _ready(status)
    assert (ready.status, ready.reason) == ("False", "InvalidSpec")
    assert "spec.epsilon" in ready.message


def _spent_ledger(spec: dict[str, Any], charges: int, epsilon: str = "0.01") -> Any:
    """A ledger in which team ``a`` made ``charges`` releases of ``epsilon``."""
    working = book.Book(
        wire.Ledger(), limits.limits_for(privacybudget_api.PrivacyBudgetSpec.model_validate(spec))
    )
    for number in range(charges):
        working.charge(
            book.ChargeRequest(
                request_id=f"r{number}",
                consumer=wire.Consumer(namespace="ns", policy="p", team="a"),
                release=accounting.Release(
                    mechanism="laplace",
                    epsilon=decimal.Decimal(epsilon),
                    delta=decimal.Decimal(0),
                    sensitivity=decimal.Decimal(1),
                    scale=1 / decimal.Decimal(epsilon),
                ),
            ),
            datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
        )
    return working.snapshot()


def test_spent_amounts_come_from_the_ledger_and_alerts_fire(now: datetime.datetime) -> None:
    spec = _spec(quotas=[{"team": "a", "epsilon": 1.0}])
    ledger = _spent_ledger(spec, 85)
    status = privacybudget.evaluate(spec, generation=1, status={}, ledger=ledger, now=now)
    near = conditions.find(status.conditions, "NearExhaustion")
    assert near is not None
    assert near.status == "True"
    assert status.state == "NearExhaustion"
    assert status.epsilon is not None
    assert status.epsilon.spent == "0.85"
    assert status.epsilon.remaining == "0.15"
    assert status.teams[0].epsilon.spent == "0.85"
    assert status.ledger == ledger


def test_exhausted_budget(now: datetime.datetime) -> None:
    spec = _spec(quotas=[{"team": "a", "epsilon": 1.0}])
    ledger = _spent_ledger(spec, 100)
    status = privacybudget.evaluate(spec, generation=1, status={}, ledger=ledger, now=now)
    exhausted = conditions.find(status.conditions, "Exhausted")
    assert exhausted is not None
    assert exhausted.status == "True"
    assert status.state == "Exhausted"


def test_the_ledger_in_status_is_kept_when_none_is_given(now: datetime.datetime) -> None:
    spec = _spec(quotas=[{"team": "a", "epsilon": 1.0}])
    ledger = _spent_ledger(spec, 3)
    current = {"ledger": ledger.model_dump(mode="json", by_alias=True)}
    status = privacybudget.evaluate(spec, generation=2, status=current, now=now)
    assert status.ledger == ledger


def test_calendar_renewal_keeps_a_visible_warning(now: datetime.datetime) -> None:
    spec = _spec(
        renewal={
            "policy": "calendar",
            "period": "24h",
            "anchor": "2026-01-01T00:00:00Z",
            "acknowledgeUnboundedLoss": True,
        }
    )
    status = privacybudget.evaluate(spec, generation=1, status={}, now=now)
    warning = conditions.find(status.conditions, "UnboundedLifetimeLoss")
    assert warning is not None
    assert warning.status == "True"
    assert _ready(status).status == "True"
    anchored = conditions.find(status.conditions, "RenewalAnchored")
    assert anchored is not None
    assert (anchored.status, anchored.reason) == ("True", "DeclaredAnchor")
    assert "from 2026-01-01T00:00:00Z" in anchored.message


def test_renewal_without_an_anchor_says_to_move_to_an_anchored_budget(
    now: datetime.datetime,
) -> None:
    # Only an object stored before the apiserver required anchors looks like this.
    spec = _spec(renewal={"policy": "perDataBlock", "period": "720h"})
    status = privacybudget.evaluate(spec, generation=1, status={}, now=now)
    anchored = conditions.find(status.conditions, "RenewalAnchored")
    assert anchored is not None
    assert (anchored.status, anchored.reason) == ("False", "CreationTimestamp")
    assert "create a new PrivacyBudget with renewal.anchor" in anchored.message
    lifetime = privacybudget.evaluate(_spec(), generation=1, status={}, now=now)
    assert conditions.find(lifetime.conditions, "RenewalAnchored") is None


def test_a_renewal_period_under_an_hour_makes_the_budget_invalid(
    now: datetime.datetime,
) -> None:
    spec = _spec(
        renewal={"policy": "perDataBlock", "period": "1m", "anchor": "2026-01-01T00:00:00Z"}
    )
    status = privacybudget.evaluate(spec, generation=1, status={}, now=now)
    ready = _ready(status)
    assert (ready.status, ready.reason) == ("False", "InvalidSpec")
    assert "renewal.period must be at least 1h" in ready.message
    assert status.state == "Invalid"


def test_transition_time_changes_only_when_status_changes(now: datetime.datetime) -> None:
    first = privacybudget.evaluate(_spec(), generation=1, status={}, now=now)
    dumped = first.model_dump(mode="json", by_alias=True)
    later = now + datetime.timedelta(hours=1)
    second = privacybudget.evaluate(_spec(epsilon=2.0), generation=2, status=dumped, now=later)
    assert _ready(second).last_transition_time == _ready(first).last_transition_time
    assert _ready(second).observed_generation == 2
    bad = _spec(quotas=[{"team": "a", "epsilon": 3.0}])
    third = privacybudget.evaluate(
        bad, generation=3, status=second.model_dump(mode="json", by_alias=True), now=later
    )
    assert _ready(third).last_transition_time == conditions.format_time(later)


def test_summary_for_policies(now: datetime.datetime) -> None:
    summary = privacybudget.summarise(_spec())
    assert summary.accepted
    assert set(summary.quotas) == {"a", "b"}
    assert not privacybudget.summarise({"epsilon": "not a number"}).accepted
