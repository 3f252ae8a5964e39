"""``hush status``: the burn rate and the time to exhaustion (pure), the document built from
budgets and policies, the table, and the command against a stubbed cluster."""

from __future__ import annotations

import datetime
import json
from decimal import Decimal
from typing import Any

import pytest
import yaml

from hush.api import ledger as wire
from hush.cli import main as cli_main
from hush.cli import status
from hush.privacy import accounting

NOW = datetime.datetime(2026, 12, 8, 12, 0, tzinfo=datetime.UTC)
EPSILON_UNIT = 1_000_000_000  # pure accounting's units of 1e-9


def _entry(
    sequence: int,
    minutes_ago: float,
    *,
    team: str = "analytics",
    epsilon: str = "0.1",
    action: str = "charge",
) -> wire.Entry:
    moment = NOW - datetime.timedelta(minutes=minutes_ago)
    units = int(Decimal(epsilon) * EPSILON_UNIT)
    return wire.Entry(
        sequence=sequence,
        time=moment.isoformat().replace("+00:00", "Z"),
        action=action,  # type: ignore[arg-type]
        request_id=f"r{sequence}",
        consumer=wire.Consumer(namespace="stats", policy="census", team=team),
        mechanism="laplace",
        epsilon=epsilon if action != "renew" else "",
        cost=[units, 0] if action != "renew" else [],
        previous_hash="0" * 64,
        hash="0" * 64,
    )


def test_burn_counts_the_charges_after_the_oldest_over_the_time_to_now() -> None:
    entries = [_entry(1, 60), _entry(2, 45), _entry(3, 30), _entry(4, 15)]
    rate = status.burn(entries, NOW)
    assert rate is not None
    assert rate.charges == 3
    assert rate.seconds == 3600
    assert rate.epsilon == Decimal("0.3")
    assert rate.cost == (3 * EPSILON_UNIT // 10, 0)
    assert rate.charges_per_hour == 3
    assert rate.epsilon_per_hour == Decimal("0.3")


def test_burn_per_team_and_after_the_last_renewal() -> None:
    entries = [
        _entry(1, 100, team="growth"),
        _entry(2, 90),
        _entry(3, 80, action="renew"),
        _entry(4, 60),
        _entry(5, 50, team="growth"),
        _entry(6, 30),
    ]
    rate = status.burn(entries, NOW, team="analytics")
    assert rate is not None
    assert (rate.charges, rate.seconds) == (1, 3600)  # entries 4 (the start) and 6
    assert status.burn(entries, NOW, team="growth") is None  # one charge since the renewal
    everyone = status.burn(entries, NOW)
    assert everyone is not None
    assert everyone.charges == 2


def test_no_rate_without_two_charges_or_time() -> None:
    assert status.burn([], NOW) is None
    assert status.burn([_entry(1, 10)], NOW) is None
    assert status.burn([_entry(1, 0), _entry(2, 0)], NOW) is None


def test_seconds_to_exhaustion_pure() -> None:
    accountant = accounting.accountant("pure")
    capacity = accountant.capacity(Decimal("1"), Decimal(0))
    spent = accounting.Cost((EPSILON_UNIT // 2, 0))  # 0.5 of 1.0 spent
    rate = status.Burn(
        since=NOW, seconds=3600, charges=2, epsilon=Decimal("0.2"), cost=(EPSILON_UNIT // 5, 0)
    )  # 0.2 an hour: 0.5 left lasts 2.5 hours
    seconds = status.seconds_to_exhaustion(accountant, spent, capacity, rate)
    assert seconds == pytest.approx(2.5 * 3600, abs=1.0)
    assert status.seconds_to_exhaustion(accountant, capacity, capacity, rate) == pytest.approx(
        0, abs=1.0
    )
    over = accounting.Cost((2 * EPSILON_UNIT, 0))
    assert status.seconds_to_exhaustion(accountant, over, capacity, rate) == 0.0
    slow = status.Burn(since=NOW, seconds=3600, charges=1, epsilon=Decimal(0), cost=(1, 0))
    assert status.seconds_to_exhaustion(accountant, spent, capacity, slow) is None  # centuries
    wrong = status.Burn(since=NOW, seconds=1, charges=1, epsilon=Decimal(0), cost=(1,))
    assert status.seconds_to_exhaustion(accountant, spent, capacity, wrong) is None


def test_seconds_to_exhaustion_zcdp_uses_rho() -> None:
    accountant = accounting.accountant("zcdp")
    capacity = accountant.capacity(Decimal("1"), Decimal("1e-6"))
    rho_capacity = capacity.units[0]
    rate = status.Burn(
        since=NOW, seconds=3600, charges=10, epsilon=Decimal(1), cost=(rho_capacity // 10,)
    )  # a tenth of the rho capacity an hour
    seconds = status.seconds_to_exhaustion(accountant, accountant.zero(), capacity, rate)
    assert seconds is not None
    assert 10 * 3600 - 2 <= seconds <= 10 * 3600 + 1


def test_duration_text() -> None:
    assert status.duration_text(None) == "-"
    assert status.duration_text(40) == "40s"
    assert status.duration_text(125) == "2m5s"
    assert status.duration_text(2 * 3600 + 300) == "2h5m"
    assert status.duration_text(3 * 86_400 + 4 * 3600) == "3d4h"


def _budget(namespace: str = "stats") -> dict[str, Any]:
    entries = [_entry(1, 60), _entry(2, 40), _entry(3, 20, team="growth"), _entry(4, 10)]
    return {
        "apiVersion": "hush.dev/v1alpha1",
        "kind": "PrivacyBudget",
        "metadata": {"name": "census-2020", "namespace": namespace},
        "spec": {
            "dataset": "census-2020",
            "epsilon": 4.0,
            "quotas": [
                {"team": "analytics", "epsilon": 2.5},
                {"team": "growth", "epsilon": 1.5},
            ],
        },
        "status": {
            "state": "Ready",
            "epsilon": {"total": "4", "spent": "0.4", "remaining": "3.6"},
            "teams": [
                {
                    "team": "analytics",
                    "epsilon": {"total": "2.5", "spent": "0.3", "remaining": "2.2"},
                },
            ],
            "ledger": {
                "accounting": "pure",
                "sequence": 4,
                "spent": [4 * EPSILON_UNIT // 10, 0],
                "teams": [
                    {"team": "analytics", "spent": [3 * EPSILON_UNIT // 10, 0]},
                    {"team": "growth", "spent": [EPSILON_UNIT // 10, 0]},
                ],
                "entries": [entry.model_dump(mode="json", by_alias=True) for entry in entries],
            },
        },
    }


def _policy(name: str, namespace: str = "stats", budget: str = "census-2020") -> dict[str, Any]:
    return {
        "apiVersion": "hush.dev/v1alpha1",
        "kind": "DPPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"budgetRef": {"name": budget, "team": "analytics"}},
        "status": {
            "policyHash": "sha256:abc",
            "conditions": [{"type": "Ready", "status": "True", "reason": "Accepted"}],
            "rollout": {
                "desiredHash": "sha256:abc",
                "totalWorkloads": 2,
                "completeWorkloads": 1,
                "workloads": [
                    {"kind": "Deployment", "name": "a", "stalePods": 0, "state": "Complete"},
                    {"kind": "Deployment", "name": "b", "stalePods": 3, "state": "Progressing"},
                ],
            },
            "drift": {"driftedPods": 1},
        },
    }


def test_the_document_per_budget_team_and_policy() -> None:
    policies = [
        _policy("census"),
        _policy("other-budget", budget="elsewhere"),
        _policy("other-namespace", namespace="else"),
    ]
    document = status.status_document([_budget()], policies, NOW)
    [budget] = document["budgets"]
    assert budget["epsilon"] == {"total": "4", "spent": "0.4", "remaining": "3.6"}
    # Dataset: 3 charges (0.3) in the hour after the oldest; 3.6 left lasts 12 hours.
    assert budget["burn"]["charges"] == 3
    assert budget["burn"]["epsilonPerHour"] == "0.3"
    assert budget["burn"]["secondsToExhaustion"] == pytest.approx(12 * 3600, abs=1)
    analytics, growth = budget["teams"]
    assert analytics["epsilon"]["remaining"] == "2.2"
    # analytics: 2 charges (0.2) over the hour; 2.2 left lasts 11 hours.
    assert analytics["burn"]["secondsToExhaustion"] == pytest.approx(11 * 3600, abs=1)
    exhausts = datetime.datetime.fromisoformat(analytics["burn"]["exhaustsAt"])
    assert abs((exhausts - (NOW + datetime.timedelta(hours=11))).total_seconds()) <= 1
    # growth has no status line yet: its quota, and no rate from a single charge.
    assert growth["epsilon"] == {"total": "1.5", "spent": "0", "remaining": "1.5"}
    assert growth["burn"] is None
    [charging] = budget["policies"]
    assert charging["name"] == "census"
    assert charging["ready"] == {"status": "True", "reason": "Accepted"}
    assert charging["rollout"] == {
        "state": "Progressing",
        "completeWorkloads": 1,
        "totalWorkloads": 2,
    }
    assert charging["stalePods"] == 3
    assert charging["driftedPods"] == 1


def test_an_invalid_budget_is_reported_not_fatal() -> None:
    broken = _budget()
    broken["spec"]["epsilon"] = "lots"
    document = status.status_document([broken, _budget("other")], [], NOW)
    assert "not valid" in document["budgets"][1]["error"]  # sorted: other/, then stats/
    assert document["budgets"][0]["namespace"] == "other"


def test_the_command_lists_budgets_and_policies(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from hush.kube import client

    listed: list[tuple[str, str | None]] = []

    def list_objects(**arguments: Any) -> list[dict[str, Any]]:
        listed.append((arguments["plural"], arguments["namespace"]))
        return [_budget()] if arguments["plural"] == "privacybudgets" else [_policy("census")]

    monkeypatch.setattr(client, "list_objects", list_objects)
    monkeypatch.setattr(status, "now", lambda: NOW)
    assert cli_main.main(["status", "-n", "stats", "-o", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["budgets"][0]["name"] == "census-2020"
    assert listed == [("privacybudgets", "stats"), ("dppolicies", "stats")]
    listed.clear()
    assert cli_main.main(["status", "-A", "-o", "yaml"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["budgets"][0]["policies"][0]["stalePods"] == 3
    assert listed == [("privacybudgets", None), ("dppolicies", None)]
    assert cli_main.main(["status", "-n", "stats"]) == 0
    table = capsys.readouterr().out
    assert "BUDGET stats/census-2020" in table
    assert "team analytics" in table
    assert "Progressing" in table
    assert "0.3/h" in table
    assert "11h0m" in table or "10h59m" in table  # analytics: 2.2 left at 0.2 an hour


def test_a_spent_quota_reads_exhausted() -> None:
    budget = _budget()
    budget["status"]["teams"][0]["epsilon"] = {"total": "2.5", "spent": "2.5", "remaining": "0"}
    table = status.render_table(status.status_document([budget], [], NOW))
    [analytics] = [line for line in table.splitlines() if "team analytics" in line]
    assert analytics.split()[-1] == "exhausted"


def test_the_command_fails_clearly_without_a_cluster(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kubernetes.client import exceptions

    from hush.kube import client

    def refused(**_: Any) -> list[dict[str, Any]]:
        raise exceptions.ApiException(status=403, reason="Forbidden")

    monkeypatch.setattr(client, "list_objects", refused)
    assert cli_main.main(["status"]) == 1
    assert "check KUBECONFIG" in capsys.readouterr().err


def test_no_budgets() -> None:
    assert status.render_table({"budgets": []}) == "No PrivacyBudgets found."


def test_wide_adds_the_datasets_delta_and_each_policys_hash() -> None:
    policy = _policy("census")
    policy.setdefault("status", {})["policyHash"] = "sha256:feedface"
    document = status.status_document([_budget()], [policy], NOW)
    narrow, wide = status.render_table(document), status.render_table(document, wide=True)
    assert "POLICY HASH" not in narrow
    assert "sha256:feedface" not in narrow
    assert "POLICY HASH" in wide
    assert "sha256:feedface" in wide
    assert "  delta: total " in wide
    assert "delta:" not in narrow
