"""The chart's alerts and dashboard, checked by Prometheus's and Grafana's own code.

``hack/chartcheck.sh`` builds ``hush-chartcheck`` (hack/chartcheck) from pinned Go modules,
cached outside the repository like the control plane: the alert expressions go through
Prometheus's PromQL parser and its rule-file validation (what ``promtool check rules`` runs),
the dashboard through the Grafana Foundation SDK's strict dashboard model, and every
dashboard query through the PromQL parser once Grafana's variables are substituted. The
first build compiles the Prometheus parser and the SDK (about a minute and a half on two
cores); later runs find the binary by its key.

Each check is also shown to fail: a mangled expression, template or dashboard must be named
in the checker's report, so a checker that accepts everything cannot pass here.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from hush.dev import binaries
from tests.conftest import REPO_ROOT
from tests.unit.test_chart import CHART, DIGEST, PROMETHEUS_OPERATOR, Document, render_result

BUILD_SCRIPT = REPO_ROOT / "hack" / "chartcheck.sh"
DASHBOARD = CHART / "dashboards" / "hush.json"
# A per-budget burn-rate plan renders the second HushBudgetBurnRateHigh and the default's
# `unless` clause; alert labels render in every rule.
BUDGET_PLANS = [{"namespace": "census", "budget": "census-2020", "plannedEpsilonPerDay": 0.2}]


@pytest.fixture(scope="module")
def helm() -> Path:
    return binaries.locate(os.environ).path("helm")


@pytest.fixture(scope="module")
def chartcheck() -> Path:
    built = subprocess.run(
        [str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=1200, check=False
    )
    assert built.returncode == 0, built.stderr
    return Path(built.stdout.splitlines()[-1])


def _rendered(helm: Path, *, api_versions: tuple[str, ...] = (PROMETHEUS_OPERATOR,)) -> str:
    result = render_result(
        helm,
        f"image.digest={DIGEST}",
        "monitoring.prometheusRule.alertLabels.team=privacy",
        api_versions=api_versions,
        json_values=(f"monitoring.prometheusRule.burnRate.budgets={json.dumps(BUDGET_PLANS)}",),
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _check(chartcheck: Path, *arguments: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(chartcheck), *arguments],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _with_rule(rendered: str, alert: str, **changes: Any) -> str:
    """The rendered stream with the first rule named ``alert`` changed."""
    documents: list[Document] = [d for d in yaml.safe_load_all(rendered) if d]
    (rule_object,) = [d for d in documents if d["kind"] == "PrometheusRule"]
    rule = next(
        rule
        for group in rule_object["spec"]["groups"]
        for rule in group["rules"]
        if rule["alert"] == alert
    )
    for key, value in changes.items():
        if isinstance(value, dict):
            rule[key].update(value)
        else:
            rule[key] = value
    return yaml.safe_dump_all(documents)


def test_the_alerts_and_the_dashboard_pass_prometheus_and_grafana(
    helm: Path, chartcheck: Path
) -> None:
    result = _check(
        chartcheck, "-rendered", "-", "-dashboard", str(DASHBOARD), stdin=_rendered(helm)
    )
    assert result.returncode == 0, result.stderr
    # Five alerts; the dashboard twice (the file and the rendered ConfigMap), 22 queries each.
    assert "Checked 5 rule expression(s), 2 dashboard(s) and their 44 PromQL" in result.stdout


def test_a_broken_alert_expression_is_named_with_the_parsers_error(
    helm: Path, chartcheck: Path
) -> None:
    broken = _with_rule(
        _rendered(helm),
        "HushWebhookCertificateNearExpiry",
        expr="hush_webhook_certificate_expiry_timestamp_seconds - time( < 21 * 86400\n",
    )
    result = _check(chartcheck, "-rendered", "-", stdin=broken)
    assert result.returncode == 1
    assert (
        'group "hush.admission", rule 2, "HushWebhookCertificateNearExpiry": invalid PromQL: '
        "1:59: parse error: unexpected <op:<>" in result.stderr
    )
    assert "1 problem(s)" in result.stderr  # the other four alerts still pass


def test_what_promtool_check_rules_refuses_beyond_promql_is_refused(
    helm: Path, chartcheck: Path
) -> None:
    rendered = _rendered(helm)
    template = _with_rule(
        rendered,
        "HushBudgetNearExhaustion",
        annotations={"summary": "{{ $labels.budget } is nearly exhausted"},
    )
    result = _check(chartcheck, "-rendered", "-", stdin=template)
    assert result.returncode == 1
    assert (
        'group "hush.budgets", rule 1, "HushBudgetNearExhaustion": annotation "summary": '
        'template: __alert_HushBudgetNearExhaustion:1: unexpected "}" in operand'
    ) in result.stderr
    duration = _with_rule(rendered, "HushAdmissionWebhookErrors", **{"for": "ten minutes"})
    result = _check(chartcheck, "-rendered", "-", stdin=duration)
    assert result.returncode == 1
    assert 'rule file: not a valid duration string: "ten minutes"' in result.stderr


def test_a_chart_rendered_without_the_prometheus_operator_api_is_not_a_pass(
    helm: Path, chartcheck: Path
) -> None:
    result = _check(chartcheck, "-rendered", "-", stdin=_rendered(helm, api_versions=()))
    assert result.returncode == 1
    assert "no alerting or recording rule found" in result.stderr


def test_a_broken_dashboard_is_reported_field_by_field(chartcheck: Path, tmp_path: Path) -> None:
    dashboard: Document = json.loads(DASHBOARD.read_text())
    broken = copy.deepcopy(dashboard)
    budget_spent = broken["panels"][1]
    budget_spent["targets"][0]["expr"] += " by"
    budget_spent["targets"][0]["expr"] = budget_spent["targets"][0]["expr"].replace(
        "$budget", "${budgets}"
    )
    broken["panels"][2]["type"] = "no-such-panel"
    broken["panels"][3]["options"]["legend"]["showLegend"] = "yes"
    broken["refresh_rate"] = "1m"
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))

    result = _check(chartcheck, "-dashboard", str(path))
    assert result.returncode == 1
    problems = [line for line in result.stderr.splitlines() if not line.startswith("  ")]
    assert problems == [
        f"{path}: not a valid Grafana dashboard: panels[3].options.legend.showLegend: "
        "json: cannot unmarshal string into Go value of type bool",
        f"{path}: not a valid Grafana dashboard: Dashboard: unexpected field 'refresh_rate'",
        f'{path}: panel "Budget spent (fraction)", target 0: $budgets is not a variable of '
        "the dashboard",
        f'{path}: panel "Budget spent (fraction)", target 0: invalid PromQL: 1:247: '
        "parse error: unexpected <by>",
        f'{path}: panel "Epsilon remaining": unknown panel type "no-such-panel"',
        "5 problem(s)",
    ]
