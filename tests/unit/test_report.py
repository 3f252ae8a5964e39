"""``hush report``: the pure model against ``hush ledger export`` of the same budget, a tampered
ledger made prominent, the policy-hash history and alerts, the self-contained page, the PDF
(rendered to PNG by poppler's pdftoppm), the page in headless Chromium, and the command against
a stubbed cluster."""

from __future__ import annotations

import copy
import datetime
import json
import re
import shutil
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from hush.api import dppolicy, privacybudget
from hush.api import ledger as wire
from hush.cli import main as cli_main
from hush.cli import report as report_command
from hush.ledger import book, chain, limits
from hush.privacy import route_cost
from hush.reconcile import privacybudget as reconcile_budget
from hush.report import model, page, pdf
from tests import report_pages

REPO = Path(__file__).resolve().parents[2]
NOW = datetime.datetime(2026, 12, 8, 12, 0, tzinfo=datetime.UTC)
NAMESPACE = "census"
SPEC: dict[str, Any] = {
    "dataset": "census-2020",
    "epsilon": 4.0,
    "delta": 1e-6,
    "quotas": [
        {"team": "analytics", "epsilon": 2.5, "delta": 5e-7},
        {"team": "growth", "epsilon": 1.5, "delta": 5e-7},
    ],
    "accounting": "pure",
}


def _sample_policy() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(
        (REPO / "samples/valid/dppolicy-census-stats.yaml").read_text()
    )
    document["spec"]["budgetRef"]["name"] = "census"
    return document


def _policy(name: str, team: str, *, hash_: str, epsilon: float | None = None) -> dict[str, Any]:
    document = _sample_policy()
    document["metadata"] = {"name": name, "namespace": NAMESPACE}
    document["spec"]["budgetRef"]["team"] = team
    if epsilon is not None:
        document["spec"]["routes"][0]["epsilon"] = epsilon
    document["status"] = {
        "policyHash": hash_,
        "conditions": [{"type": "Ready", "status": "True", "reason": "Accepted"}],
    }
    return document


def _routes(policy: dict[str, Any]) -> list[dppolicy.Route]:
    return dppolicy.DPPolicySpec.model_validate(policy["spec"]).routes


class Charger:
    """A real ledger (``hush.ledger.book``) charged with the releases the policies' routes
    cost, as the accountant charges them, and the budget object the operator would publish."""

    def __init__(self, accounting: str = "pure") -> None:
        self.spec = {**copy.deepcopy(SPEC), "accounting": accounting}
        self.ledger = wire.Ledger()
        self.budget_limits = limits.limits_for(
            privacybudget.PrivacyBudgetSpec.model_validate(self.spec)
        )
        self.count = 0

    def charge(
        self,
        policy: dict[str, Any],
        route: int,
        minutes: float,
        *,
        times: int = 1,
        policy_hash: str | None = None,
    ) -> None:
        working = book.Book(self.ledger, self.budget_limits)
        release = route_cost.route_charge(_routes(policy)[route])
        team = policy["spec"]["budgetRef"]["team"]
        for _ in range(times):
            self.count += 1
            outcome = working.charge(
                book.ChargeRequest(
                    request_id=f"req-{self.count}",
                    consumer=wire.Consumer(
                        namespace=NAMESPACE,
                        pod="app-1",
                        policy=policy["metadata"]["name"],
                        team=team,
                    ),
                    release=release,
                    policy_hash=policy_hash,
                ),
                NOW - datetime.timedelta(minutes=minutes),
            )
            assert outcome.ok, outcome.message
        self.ledger = working.snapshot()

    def budget(self) -> dict[str, Any]:
        status = reconcile_budget.evaluate(
            self.spec, generation=1, status={}, ledger=self.ledger, now=NOW
        )
        return {
            "apiVersion": "hush.dev/v1alpha1",
            "kind": "PrivacyBudget",
            "metadata": {"name": "census", "namespace": NAMESPACE},
            "spec": self.spec,
            "status": status.model_dump(mode="json", by_alias=True, exclude_none=True),
        }


@pytest.fixture
def policies() -> list[dict[str, Any]]:
    return [
        _policy("census-stats", "analytics", hash_="h-analytics-2"),
        _policy("growth-stats", "growth", hash_="h-growth-1"),
        # Another budget's policy: not in this report.
        {**_policy("elsewhere", "analytics", hash_="x"), "spec": {"budgetRef": {"name": "x"}}},
    ]


@pytest.fixture
def charged(policies: list[dict[str, Any]]) -> Charger:
    charger = Charger()
    charger.charge(policies[0], 0, 50, times=3)  # population: discreteLaplace 0.1
    charger.charge(policies[0], 1, 40, times=2)  # income: gaussian 0.2
    charger.charge(policies[1], 0, 30, times=4)
    return charger


def _export(monkeypatch: pytest.MonkeyPatch, capsys: Any, budget: dict[str, Any]) -> list[Any]:
    """What ``hush ledger export`` prints for ``budget`` (the real command, stubbed cluster)."""
    from hush.kube import client

    monkeypatch.setattr(client, "read_custom", lambda **_: budget)
    capsys.readouterr()
    assert cli_main.main(["ledger", "export", "census", "-n", NAMESPACE]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_entries_and_totals_match_ledger_export(
    monkeypatch: pytest.MonkeyPatch, capsys: Any, charged: Charger, policies: list[Any]
) -> None:
    budget = charged.budget()
    exported = _export(monkeypatch, capsys, budget)
    report = model.build(budget, policies, [], NOW)
    assert report.verification.verified
    assert report.verification.head_hash == charged.ledger.head_hash
    entries = [line for line in exported if line["type"] == "entry"]
    assert len(entries) == len(report.entries) == 9
    for line, row in zip(entries, report.entries, strict=True):
        assert (row.sequence, row.time, row.action, row.request_id, row.hash) == (
            line["sequence"],
            line["time"],
            line["action"],
            line["requestId"],
            line["hash"],
        )
        assert (row.team, row.policy, row.mechanism, row.epsilon, row.delta) == (
            line["consumer"]["team"],
            line["consumer"]["policy"],
            line["mechanism"],
            line["epsilon"],
            line["delta"],
        )
        assert list(row.cost) == line["cost"]
    # Routes recognised from the policy, and releases counted by route and mechanism.
    assert [row.route for row in report.entries[:5]] == ["/stats/{region}/population"] * 3 + [
        "/stats/{region}/income"
    ] * 2
    by_route = {(row.policy, row.route): row.releases for row in report.releases}
    assert by_route == {
        ("census-stats", "/stats/{region}/population"): 3,
        ("census-stats", "/stats/{region}/income"): 2,
        ("growth-stats", "/stats/{region}/population"): 4,
    }
    # Consumers add up to the ledger's totals; epsilons are the budget's status.
    summed: list[int] = []
    for consumer in report.consumers:
        summed = chain.add_units(summed, consumer.cost)
    assert summed == charged.ledger.spent
    assert report.epsilon is not None
    assert report.epsilon.spent == budget["status"]["epsilon"]["spent"]
    assert Decimal(report.epsilon.spent) == Decimal("0.1") * 7 + Decimal("0.2") * 2
    assert {team.team: team.epsilon.spent for team in report.teams if team.epsilon} == {
        "analytics": "0.7",
        "growth": "0.4",
    }
    # The plot's dataset line ends at what was spent.
    [dataset] = [series for series in report.series if series.label == "dataset total"]
    assert dataset.points[-1][1] == pytest.approx(1.1)
    # Every line starts at the first retained entry: growth from nothing, 0.4 at its end.
    [growth] = [series for series in report.series if series.policy == "growth-stats"]
    assert growth.points[0] == (NOW - datetime.timedelta(minutes=50), 0.0)
    assert growth.points[-1][1] == pytest.approx(0.4)
    text = page.render(report)
    assert '<div class="banner ok" id="verification">' in text
    assert "LEDGER FAILED VERIFICATION" not in text


@pytest.mark.parametrize("accounting", ["pure", "zcdp", "rdp"])
def test_each_policys_epsilon_is_its_teams_as_the_status_counts_it(
    accounting: str, policies: list[Any]
) -> None:
    # One policy per team: what the report converts per consumer is what the operator's
    # status shows per team, in every accounting mode (zcdp and rdp do not add epsilons).
    charger = Charger(accounting)
    charger.charge(policies[0], 0, 50, times=3)
    charger.charge(policies[0], 1, 40, times=2)
    charger.charge(policies[1], 0, 30, times=4)
    budget = charger.budget()
    report = model.build(budget, policies, [], NOW)
    assert report.verification.verified
    assert report.accounting == accounting
    shown = {team["team"]: team["epsilon"]["spent"] for team in budget["status"]["teams"]}
    by_team = {row.team: row.epsilon for row in report.consumers}
    assert by_team == shown
    [dataset] = [series for series in report.series if not series.team]
    assert dataset.points[-1][1] == pytest.approx(float(budget["status"]["epsilon"]["spent"]))


def test_a_compacted_ledger_starts_from_its_checkpoint(
    monkeypatch: pytest.MonkeyPatch, capsys: Any, policies: list[Any]
) -> None:
    charger = Charger()
    charger.charge(policies[0], 0, 100, times=20)
    charger.charge(policies[1], 0, 10, times=10)
    assert charger.ledger.checkpoint is not None  # 30 entries: the oldest were folded
    budget = charger.budget()
    exported = _export(monkeypatch, capsys, budget)
    report = model.build(budget, policies, [], NOW)
    assert report.verification.verified
    [checkpoint] = [line for line in exported if line["type"] == "checkpoint"]
    assert report.verification.checkpoint == (
        checkpoint["firstSequence"],
        checkpoint["lastSequence"],
    )
    counts = {(row.policy, row.team): row.entries for row in report.consumers}
    assert counts == {("census-stats", "analytics"): 20, ("growth-stats", "growth"): 10}
    assert {row.policy: row.epsilon for row in report.consumers} == {
        "census-stats": "2",
        "growth-stats": "1",
    }
    [line] = [item for item in report.series if item.policy == "census-stats"]
    folded = checkpoint["consumers"][0]["cost"][0] / 1e9
    assert line.points[0][1] == pytest.approx(folded)  # starts at the checkpoint's amount
    assert line.points[-1][1] == pytest.approx(2.0)


def test_a_tampered_ledger_is_said_first_and_loudly(charged: Charger, policies: list[Any]) -> None:
    budget = charged.budget()
    budget["status"]["ledger"]["entries"][2]["cost"][0] -= 1  # someone lowered a charge
    report = model.build(budget, policies, [], NOW)
    assert not report.verification.verified
    assert any(
        "entry 3" in problem and "edited" in problem for problem in report.verification.problems
    )
    text = page.render(report)
    body = text.split("<body>", 1)[1]
    assert body.lstrip().startswith('<div class="banner tampered" id="verification">')
    assert "LEDGER FAILED VERIFICATION" in body[: body.index("<h1>")]
    assert "entry 3" in body[: body.index("<h1>")]
    assert "Ledger verified" not in text


def test_an_unparseable_ledger_fails_verification(charged: Charger, policies: list[Any]) -> None:
    budget = charged.budget()
    budget["status"]["ledger"]["headHash"] = "not a hash"
    budget["status"]["ledger"]["entries"][0]["hash"] = "zz"
    report = model.build(budget, policies, [], NOW)
    assert not report.verification.verified
    assert "not a valid ledger" in report.verification.problems[0]
    assert "LEDGER FAILED VERIFICATION" in page.render(report)


def test_policy_hash_history_splits_on_a_changed_spec(policies: list[Any]) -> None:
    charger = Charger()
    old = _policy("census-stats", "analytics", hash_="h-analytics-1", epsilon=0.05)
    charger.charge(old, 0, 60, times=2)
    charger.charge(policies[0], 0, 20, times=3)  # the current spec: epsilon 0.1
    report = model.build(charger.budget(), policies, [], NOW)
    [history] = [item for item in report.policies if item.name == "census-stats"]
    assert history.current_hash == "h-analytics-2"
    earlier, current = history.periods
    assert (earlier.epsilon, earlier.current, earlier.entries) == ("0.05", False, 2)
    assert (earlier.first_sequence, earlier.last_sequence) == (1, 2)
    assert (current.epsilon, current.current, current.entries) == ("0.1", True, 3)
    assert current.routes == ("/stats/{region}/population",)
    assert [row.route for row in report.entries[:2]] == ["", ""]  # no current route matches
    text = page.render(report)
    assert "an earlier spec" in text
    assert "current spec (h-analytics-2)" in text
    # A policy that charged and is gone still has its history.
    gone = model.build(charger.budget(), [], [], NOW)
    assert [(item.name, item.exists) for item in gone.policies] == [("census-stats", False)]


def test_policy_hash_history_follows_the_recorded_hashes(policies: list[Any]) -> None:
    # The same release charged under two specs (say, a changed upstream port): only the
    # recorded hash can tell the periods apart.
    charger = Charger()
    charger.charge(policies[0], 0, 60, times=2, policy_hash="h-analytics-1")
    charger.charge(policies[0], 0, 20, policy_hash="h-analytics-2")
    budget = charger.budget()
    report = model.build(budget, policies, [], NOW)
    [history] = [item for item in report.policies if item.name == "census-stats"]
    earlier, current = history.periods
    assert (earlier.policy_hash, earlier.current, earlier.entries) == ("h-analytics-1", False, 2)
    assert (earlier.first_sequence, earlier.last_sequence) == (1, 2)
    assert (earlier.first_time, earlier.last_time) == (
        budget["status"]["ledger"]["entries"][0]["time"],
    ) * 2
    assert (current.policy_hash, current.current, current.entries) == ("h-analytics-2", True, 1)
    assert current.first_sequence == current.last_sequence == 3
    assert current.first_time == budget["status"]["ledger"]["entries"][2]["time"]
    assert [row.policy_hash for row in report.entries] == ["h-analytics-1"] * 2 + ["h-analytics-2"]
    text = page.render(report)
    assert '<code class="hash">h-analytics-1</code>' in text
    assert '<span class="muted">not recorded</span>' not in text
    # Once the policy changes again, neither period is current.
    changed = copy.deepcopy(policies)
    changed[0]["status"]["policyHash"] = "h-analytics-3"
    [later] = [
        item
        for item in model.build(budget, changed, [], NOW).policies
        if item.name == "census-stats"
    ]
    assert [period.current for period in later.periods] == [False, False]
    # Entries written before hashes were recorded form their own period, matched by release.
    charger.charge(policies[0], 0, 10)
    mixed = model.build(charger.budget(), policies, [], NOW)
    [history] = [item for item in mixed.policies if item.name == "census-stats"]
    assert [(period.policy_hash, period.current) for period in history.periods] == [
        ("h-analytics-1", False),
        ("h-analytics-2", True),
        ("", True),
    ]
    assert '<span class="muted">not recorded</span>' in page.render(mixed)


def test_alerts_from_conditions_and_warning_events(charged: Charger, policies: list[Any]) -> None:
    budget = charged.budget()
    budget["status"]["conditions"] = [
        {"type": "Ready", "status": "True", "reason": "Accepted"},
        {
            "type": "NearExhaustion",
            "status": "True",
            "reason": "AlertThreshold",
            "message": "80% of epsilon spent",
            "lastTransitionTime": "2026-12-08T11:00:00Z",
        },
        {"type": "Exhausted", "status": "False", "reason": "Within"},
    ]
    not_ready = copy.deepcopy(policies[1])
    not_ready["status"]["conditions"] = [
        {"type": "Ready", "status": "False", "reason": "RouteRefused", "message": "quantile"}
    ]

    def event(kind: str, name: str, kind_of_event: str, reason: str) -> dict[str, Any]:
        return {
            "involvedObject": {"kind": kind, "name": name},
            "type": kind_of_event,
            "reason": reason,
            "message": f"{reason} happened",
            "lastTimestamp": "2026-12-08T11:30:00Z",
            "count": 2,
        }

    events = [
        event("PrivacyBudget", "census", "Warning", "NearExhaustion"),
        event("PrivacyBudget", "census", "Normal", "Renewed"),  # not an alert
        event("DPPolicy", "census-stats", "Warning", "RolloutStalled"),
        event("PrivacyBudget", "other", "Warning", "NearExhaustion"),  # another budget
        event("Pod", "census-stats", "Warning", "BackOff"),  # same name, another kind
    ]
    report = model.build(budget, [policies[0], not_ready], events, NOW)
    found = {(alert.source, alert.subject, alert.reason) for alert in report.alerts}
    assert found == {
        ("condition", "PrivacyBudget census", "NearExhaustion=True (AlertThreshold)"),
        ("condition", "DPPolicy growth-stats", "Ready=False (RouteRefused)"),
        ("event", "PrivacyBudget census", "NearExhaustion"),
        ("event", "DPPolicy census-stats", "RolloutStalled"),
    }
    assert "RolloutStalled happened" in page.render(report)


def test_unknown_entry_kinds_are_listed_by_their_action(
    charged: Charger, policies: list[Any]
) -> None:
    budget = charged.budget()
    report = model.build(budget, policies, [], NOW)
    assert {row.action for row in report.entries} == {"charge"}
    settle = wire.Entry.model_validate(budget["status"]["ledger"]["entries"][-1])
    settle = settle.model_copy(update={"action": "write-off", "mechanism": "", "epsilon": ""})
    budget["status"]["ledger"]["entries"][-1] = settle.model_dump(mode="json", by_alias=True)
    shown = model.build(budget, policies, [], NOW)
    assert shown.entries[-1].action == "write-off"
    assert shown.entries[-1].releases == 0
    assert not shown.verification.verified  # the entry was rewritten: its hash no longer holds


# -- the page ----------------------------------------------------------------------------------


def test_the_checker_finds_external_references() -> None:
    assert report_pages.external_references(
        '<img src="https://x.example/a.png"><link href="s.css">'
        '<svg><image xlink:href="http://y/z"/></svg><style>@import "q.css"; '
        "a{background:url(http://e/x)}</style><div style=\"background:url('f.png')\"></div>"
    ) == [
        "img src=https://x.example/a.png",
        "link href=s.css",
        "image xlink:href=http://y/z",
        "css url(http://e/x)",
        "css @import",
        "css url(f.png)",
    ]
    assert (
        report_pages.external_references('<link rel="icon" href="data:,"><a href="#top">x</a>')
        == []
    )


def test_the_page_is_self_contained_and_carries_its_data(
    charged: Charger, policies: list[Any]
) -> None:
    report = model.build(charged.budget(), policies, [], NOW)
    text = page.render(report)
    assert report_pages.external_references(text) == []
    assert "<svg" in text  # the plot, inline
    assert "<?xml" not in text
    assert "<!DOCTYPE svg" not in text
    embedded = re.search(
        r'<script type="application/json" id="hush-report-data">(.*?)</script>', text, re.S
    )
    assert embedded is not None
    assert json.loads(embedded.group(1)) == json.loads(json.dumps(report.as_json()))
    # The visible entry rows carry the ledger's numbers.
    for row in report.entries:
        assert f'<code class="hash">{row.hash}</code>' in text
    assert report.guarantee in text.replace("&#x27;", "'")
    assert "(4, 0.000001)-differentially private" in report.guarantee


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The page and PDF of a charged budget, written once for the tests that open them."""
    policies = [
        _policy("census-stats", "analytics", hash_="h-analytics-2"),
        _policy("growth-stats", "growth", hash_="h-growth-1"),
    ]
    charger = Charger()
    charger.charge(policies[0], 0, 50, times=3)
    charger.charge(policies[0], 1, 40, times=2)
    charger.charge(policies[1], 0, 30, times=4)
    report = model.build(charger.budget(), policies, [], NOW)
    directory = tmp_path_factory.mktemp("report")
    text = page.render(report)
    (directory / "report.html").write_text(text, encoding="utf-8")
    (directory / "report.pdf").write_bytes(pdf.render(text))
    return directory / "report.html", directory / "report.pdf"


def test_the_pdf_renders_to_a_png(rendered: tuple[Path, Path]) -> None:
    pdftoppm = shutil.which("pdftoppm")
    if pdftoppm is None:
        pytest.skip("pdftoppm not installed (Debian poppler-utils; make report-tools)")
    _, document = rendered
    assert document.read_bytes().startswith(b"%PDF-")
    png = report_pages.first_page_png(document)
    assert png.read_bytes().startswith(b"\x89PNG")
    assert png.stat().st_size > 20_000  # a page of text, tables and a plot, not a blank page


def test_the_page_opens_in_headless_chromium_without_console_errors(
    rendered: tuple[Path, Path], tmp_path: Path
) -> None:
    if shutil.which("chromium") is None:
        pytest.skip("chromium not installed (Debian chromium; make report-tools)")
    # The check sees errors: a page that throws is caught.
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><script>undefinedFunction();</script></body></html>")
    assert report_pages.chromium_console(broken, tmp_path / "broken.png")
    page_file, _ = rendered
    screenshot = page_file.with_name("report-screenshot.png")
    assert report_pages.chromium_console(page_file, screenshot) == []
    assert screenshot.stat().st_size > 50_000  # text, tables and the plot were drawn


# -- the command -------------------------------------------------------------------------------


def _stub_cluster(
    monkeypatch: pytest.MonkeyPatch, budget: dict[str, Any] | None, policies: list[Any]
) -> list[tuple[str, str]]:
    from hush.kube import client

    listed: list[tuple[str, str]] = []

    def list_objects(**arguments: Any) -> list[dict[str, Any]]:
        listed.append((arguments["plural"], arguments["namespace"]))
        return policies if arguments["plural"] == "dppolicies" else []

    monkeypatch.setattr(client, "read_custom", lambda **_: budget)
    monkeypatch.setattr(client, "list_objects", list_objects)
    monkeypatch.setattr(report_command, "now", lambda: NOW)
    return listed


def test_the_command_writes_the_page(
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
    tmp_path: Path,
    charged: Charger,
    policies: list[Any],
) -> None:
    listed = _stub_cluster(monkeypatch, charged.budget(), policies)
    output = tmp_path / "r.html"
    assert cli_main.main(["report", "census", "-n", NAMESPACE, "-o", str(output)]) == 0
    assert listed == [("dppolicies", NAMESPACE), ("events", NAMESPACE)]
    assert "Ledger verified: 9 entries" in capsys.readouterr().out
    assert "census-2020" in output.read_text()
    tampered = charged.budget()
    tampered["status"]["ledger"]["spent"][0] += 5
    _stub_cluster(monkeypatch, tampered, policies)
    code = cli_main.main(["report", "census", "-n", NAMESPACE, "-o", str(output)])
    assert code == report_command.EXIT_TAMPERED
    assert "TAMPERED ledger: spent disagrees" in capsys.readouterr().err
    assert "LEDGER FAILED VERIFICATION" in output.read_text()


def test_the_command_without_the_budget_or_the_cluster(
    monkeypatch: pytest.MonkeyPatch, capsys: Any, tmp_path: Path
) -> None:
    _stub_cluster(monkeypatch, None, [])
    output = tmp_path / "r.html"
    assert cli_main.main(["report", "nope", "-o", str(output)]) == 1
    assert "PrivacyBudget default/nope not found" in capsys.readouterr().err
    assert not output.exists()

    from kubernetes.client import exceptions

    from hush.kube import client

    def refused(**_: Any) -> dict[str, Any]:
        raise exceptions.ApiException(status=403, reason="Forbidden")

    monkeypatch.setattr(client, "read_custom", refused)
    assert cli_main.main(["report", "census", "-o", str(output)]) == 1
    assert "check KUBECONFIG" in capsys.readouterr().err


def test_the_command_without_the_report_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: Any, tmp_path: Path, charged: Charger
) -> None:
    # The operator's image has the CLI but not matplotlib: every other command still starts
    # (nothing imports hush.report until `hush report` runs), and this one says what to install.
    import sys

    import hush.report

    # As if matplotlib were missing: importing the page module raises ImportError.
    monkeypatch.setitem(sys.modules, "hush.report.page", None)
    monkeypatch.delattr(hush.report, "page")
    _stub_cluster(monkeypatch, charged.budget(), [])
    assert cli_main.main(["report", "census", "-o", str(tmp_path / "r.html")]) == 1
    assert "pip install 'hush[report]'" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()
