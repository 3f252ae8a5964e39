"""``hush policy explain``: from files and from a (stubbed) cluster, every output format, the
releases left under each accounting mode, the warnings, and the exit codes."""

from __future__ import annotations

import copy
import datetime
import json
import math
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from hush.api import dppolicy
from hush.cli import main as cli_main
from hush.cli import policy
from hush.privacy import accounting, accuracy, route_cost
from tests.conftest import REPO_ROOT

POLICY_FILE = REPO_ROOT / "samples/valid/dppolicy-census-stats.yaml"
BUDGET_FILE = REPO_ROOT / "samples/valid/privacybudget-census.yaml"
NOW = datetime.datetime(2026, 12, 8, tzinfo=datetime.UTC)


def _load(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def _route(document: dict[str, Any], path: str) -> dict[str, Any]:
    [route] = [route for route in document["routes"] if route["path"] == path]
    return route


def _field(route: dict[str, Any], path: str) -> dict[str, Any]:
    [field] = [field for field in route["fields"] if field["path"] == path]
    return field


def _budget(**spec_changes: Any) -> dict[str, Any]:
    budget = _load(BUDGET_FILE)
    budget["spec"]["renewal"] = {"policy": "none"}
    budget["spec"].update(spec_changes)
    return budget


def _spent(budget: dict[str, Any], team: dict[str, list[int]], total: list[int]) -> None:
    budget["status"] = {
        "ledger": {
            "accounting": budget["spec"].get("accounting", "pure"),
            "sequence": 3,
            "spent": total,
            "teams": [{"team": name, "spent": units} for name, units in team.items()],
        }
    }


def test_the_demo_policy_is_explained_from_its_files(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main.main(
        ["policy", "explain", "-f", str(POLICY_FILE), "-f", str(BUDGET_FILE), "-o", "json"]
    )
    assert code == 0
    document = json.loads(capsys.readouterr().out)
    assert document["policy"]["name"] == "census-stats"
    assert document["budget"]["accounting"] == "pure"
    population = _route(document, "/stats/{region}/population")
    count = _field(population, "$.count")
    # discreteLaplace at epsilon 0.1, sensitivity 1: scale 10; 95 % from the geometric tail.
    assert count["scale"] == 10.0
    r = math.exp(-0.1)
    assert count["halfWidth"] == pytest.approx(10 * math.log(2 / (0.05 * (1 + r))), rel=1e-9)
    assert count["suppression"] == {
        "minCohort": 20,
        "halfSuppressedUpTo": 19,
        "mostlySuppressedUpTo": None,
        "mostlyReleasedFrom": 43,
    }
    assert population["cost"]["epsilon"] == "0.1"
    # Nothing spent: the team's 2.5 and the dataset's 4 over epsilon 0.1.
    assert population["releasesLeft"]["team"] == 25
    assert population["releasesLeft"]["total"] == 40
    assert population["releasesLeft"]["dashboardReleasesPerDay"] == 144  # a day at 10m
    assert any("144 releases a day" in warning for warning in population["warnings"])
    # The occupations route spends delta 1e-7 per answer: the team's 5e-7 allows 5 (its
    # epsilon 2.5 / 0.5 would allow 5 too); the dataset's epsilon 4 / 0.5 allows 8 (delta 10).
    occupations = _route(document, "/stats/{region}/top-occupations")
    assert occupations["releasesLeft"]["team"] == 5
    assert occupations["releasesLeft"]["total"] == 8
    assert _field(occupations, "$.occupations.*.count")["selectionThreshold"] > 0
    # Each route's cost is the accountant's charge.
    spec = dppolicy.DPPolicySpec.model_validate(_load(POLICY_FILE)["spec"])
    for route in spec.routes:
        charge = route_cost.route_charge(route)
        cost = _route(document, route.path)["cost"]
        assert (Decimal(cost["scale"]), Decimal(cost["epsilon"])) == (charge.scale, charge.epsilon)


def test_a_mean_gets_a_half_width_at_the_cohort(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main.main(["policy", "explain", "-f", str(POLICY_FILE), "--cohort", "5000"])
    assert code == 0
    capsys.readouterr()
    document = policy.explain(_load(POLICY_FILE), None, cohort=5000, now=NOW)
    income = _route(document, "/stats/{region}/income")
    average = _field(income, "$.average")
    people = _field(income, "$.people")
    expected = accuracy.mean_half_width(
        "gaussian",
        sum_scale=average["scale"],
        count_scale=people["scale"],
        bounds=dppolicy.Bounds(lower=0, upper=250000),
        cohort=5000,
    )
    assert average["mean"] == {"cohort": 5000, "halfWidth": expected, "countPath": "$.people"}
    assert expected < 250000
    assert income["releasesLeft"] is None  # no budget given
    assert document["budget"] == {"name": "census-2020", "team": "analytics", "found": False}


def test_spent_budget_leaves_fewer_releases() -> None:
    budget = _budget()
    unit = 1_000_000_000  # epsilon units of 1e-9
    _spent(budget, {"analytics": [2 * unit, 0]}, [3 * unit, 0])
    document = policy.explain(_load(POLICY_FILE), budget, now=NOW)
    population = _route(document, "/stats/{region}/population")
    assert population["releasesLeft"]["team"] == 5  # (2.5 - 2) / 0.1
    assert population["releasesLeft"]["total"] == 10  # (4 - 3) / 0.1
    assert document["budget"]["teamQuota"]["epsilonRemaining"] == "0.5"
    assert document["budget"]["total"]["epsilonRemaining"] == "1"


def test_a_window_that_has_passed_is_counted_as_refilled() -> None:
    budget = _load(BUDGET_FILE)  # perDataBlock, 720h from 2020-04-01
    unit = 1_000_000_000
    _spent(budget, {"analytics": [2 * unit, 0]}, [2 * unit, 0])
    document = policy.explain(_load(POLICY_FILE), budget, now=NOW)
    assert document["budget"]["renewedAtNextCharge"] is True
    assert _route(document, "/stats/{region}/population")["releasesLeft"]["team"] == 25


def _gaussian_policy() -> dict[str, Any]:
    return {
        "apiVersion": "hush.dev/v1alpha1",
        "kind": "DPPolicy",
        "metadata": {"name": "g", "namespace": "stats"},
        "spec": {
            "budgetRef": {"name": "census-2020", "team": "analytics"},
            "upstream": {"port": 8080},
            "routes": [
                {
                    "path": "/count",
                    "mechanism": "gaussian",
                    "epsilon": 0.1,
                    "delta": 1e-9,
                    "fields": [{"path": "$.count", "kind": "count"}],
                }
            ],
        },
    }


@pytest.mark.parametrize("mode", ["zcdp", "rdp"])
def test_zcdp_and_rdp_count_with_their_accountant(mode: str) -> None:
    budget = _budget(accounting=mode)
    document = policy.explain(_gaussian_policy(), budget, now=NOW)
    route = document["routes"][0]
    spec = dppolicy.DPPolicySpec.model_validate(_gaussian_policy()["spec"])
    charge = route_cost.route_charge(spec.routes[0])
    accountant = accounting.accountant(mode)  # type: ignore[arg-type]
    cost = accountant.release_cost(charge)
    capacity = accountant.capacity(Decimal("2.5"), Decimal("5e-7"))
    spent, expected = accountant.zero(), 0
    while accountant.fits(spent := accountant.add(spent, cost), capacity):
        expected += 1
    assert route["releasesLeft"]["team"] == expected
    assert expected > 25  # composition is sublinear: more than 2.5 / 0.1
    assert document["budget"]["counting"].lower().startswith(mode)


def test_partition_selection_under_zcdp_is_refused() -> None:
    budget = _budget(accounting="zcdp")
    document = policy.explain(_load(POLICY_FILE), budget, now=NOW)
    occupations = _route(document, "/stats/{region}/top-occupations")
    assert occupations["releasesLeft"] == {"team": 0, "total": 0, "refused": True}
    assert any("cannot record" in warning for warning in occupations["warnings"])


def test_a_team_without_quota_is_warned_about() -> None:
    budget = _budget(quotas=[{"team": "growth", "epsilon": 1.5}])
    document = policy.explain(_load(POLICY_FILE), budget, now=NOW)
    population = _route(document, "/stats/{region}/population")
    assert population["releasesLeft"]["team"] is None
    assert document["budget"]["teamQuota"] is None
    assert any("no quota for team analytics" in w for w in population["warnings"])


def test_typical_values_warn_when_the_noise_is_larger() -> None:
    typical = policy.parse_typical(["$.count=25", "1000000"])
    document = policy.explain(_load(POLICY_FILE), None, typical=typical, now=NOW)
    population = _route(document, "/stats/{region}/population")
    count = _field(population, "$.count")
    assert count["typical"] == 25
    assert count["relativeError"] == pytest.approx(count["halfWidth"] / 25)
    assert any("larger than a typical value" in w for w in population["warnings"])
    income = _route(document, "/stats/{region}/income")
    total = _field(income, "$.total")
    assert total["typical"] == 1000000  # the default for every other field
    assert any("$.total: the noise" in w for w in income["warnings"])  # +-2.4e7 > 1e6
    assert not any("$.people: the noise" in w for w in income["warnings"])  # +-80 < 1e6
    for bad in ("x", "$.count=-1", "$.count=nan"):
        with pytest.raises(policy.ExplainError):
            policy.parse_typical([bad])


def test_the_level_changes_the_intervals() -> None:
    at_95 = policy.explain(_load(POLICY_FILE), None, now=NOW)
    at_99 = policy.explain(_load(POLICY_FILE), None, level=0.99, now=NOW)
    route = "/stats/{region}/top-occupations"
    width_95 = _field(_route(at_95, route), "$.occupations.*.count")["halfWidth"]
    width_99 = _field(_route(at_99, route), "$.occupations.*.count")["halfWidth"]
    assert width_99 / width_95 == pytest.approx(math.log(100) / math.log(20), rel=1e-9)
    with pytest.raises(policy.ExplainError, match="between 0 and 1"):
        policy.explain(_load(POLICY_FILE), None, level=1.0)


def test_table_wide_and_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    arguments = ["policy", "explain", "-f", str(POLICY_FILE), "-f", str(BUDGET_FILE)]
    assert cli_main.main(arguments) == 0
    table = capsys.readouterr().out
    assert "ROUTE /stats/{region}/population" in table
    assert "$.count" in table
    assert "30.44" in table
    assert "releases left: 25 (team quota), 40 (dataset)" in table
    assert cli_main.main([*arguments, "-o", "wide"]) == 0
    wide = capsys.readouterr().out
    assert "THRESHOLD" in wide
    assert "charged: discreteLaplace sensitivity 1 scale 10" in wide
    assert cli_main.main([*arguments, "-o", "yaml"]) == 0
    loaded = yaml.safe_load(capsys.readouterr().out)
    assert loaded["routes"][0]["releasesLeft"]["team"] == 25


def test_errors_exit_1_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main.main(["policy", "explain", "-f", str(tmp_path / "missing.yaml")]) == 1
    assert "Could not read" in capsys.readouterr().err
    assert cli_main.main(["policy", "explain", "other", "-f", str(POLICY_FILE)]) == 1
    assert "DPPolicy other not found" in capsys.readouterr().err
    assert cli_main.main(["policy", "explain"]) == 1
    assert "Name a DPPolicy" in capsys.readouterr().err
    # A route that cannot be released is shown with its error, and the exit code says so.
    broken = _load(POLICY_FILE)
    broken["spec"]["routes"][0]["fields"] = [
        {"path": "$.q", "kind": "quantile", "quantile": 0.5, "bounds": {"lower": 0, "upper": 1}}
    ]
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken))
    assert cli_main.main(["policy", "explain", "-f", str(path), "-o", "json"]) == 1
    captured = capsys.readouterr()
    assert "cannot be released" in captured.err
    assert "quantile" in json.loads(captured.out)["routes"][0]["error"].lower()
    two = tmp_path / "two.yaml"
    second = copy.deepcopy(broken)
    second["metadata"]["name"] = "second"
    two.write_text(yaml.safe_dump_all([broken, second]))
    assert cli_main.main(["policy", "explain", "-f", str(two)]) == 1
    assert "several DPPolicies" in capsys.readouterr().err


def test_from_the_cluster(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kubernetes.client import exceptions

    from hush.kube import client

    objects = {
        ("dppolicies", "census-stats"): _load(POLICY_FILE),
        ("privacybudgets", "census-2020"): _budget(),
    }
    reads: list[tuple[str, str, str]] = []

    def read_custom(**arguments: str) -> dict[str, Any] | None:
        reads.append((arguments["namespace"], arguments["plural"], arguments["name"]))
        return objects.get((arguments["plural"], arguments["name"]))

    monkeypatch.setattr(client, "read_custom", read_custom)
    code = cli_main.main(["policy", "explain", "census-stats", "-n", "census", "-o", "json"])
    assert code == 0
    document = json.loads(capsys.readouterr().out)
    assert document["budget"]["found"] is True
    assert reads == [
        ("census", "dppolicies", "census-stats"),
        ("census", "privacybudgets", "census-2020"),
    ]
    assert cli_main.main(["policy", "explain", "absent", "-n", "census"]) == 1
    assert "DPPolicy census/absent not found" in capsys.readouterr().err

    def forbidden(**_: str) -> None:
        raise exceptions.ApiException(status=403, reason="Forbidden")

    monkeypatch.setattr(client, "read_custom", forbidden)
    assert cli_main.main(["policy", "explain", "census-stats"]) == 1
    assert "check KUBECONFIG" in capsys.readouterr().err
