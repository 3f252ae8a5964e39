"""``hush status`` and ``hush policy explain`` against a real apiserver: a budget, a policy and
charges through the real accountant, then the numbers both commands report.

The objects, token and charges are test_accountant's (``_setup``, ``_session``, ``_post``, its
``accountant`` fixture) and spending's: what a sidecar would do, without a sidecar."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

from kubernetes import client

from hush.api import dppolicy
from hush.privacy import route_cost

import hush_resources
import spending
import waiting
from test_accountant import (  # the module's fixture and helpers: one set-up for both files
    RELEASE_EPSILON,
    _post,
    _session,
    _setup,
    accountant,
)

__all__ = ["accountant"]  # a fixture: imported to be used, not re-exported

CHARGES = 5


def _hush(kubeconfig: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hush", *arguments],
        capture_output=True,
        text=True,
        env={"KUBECONFIG": str(kubeconfig), "PATH": "/usr/bin:/bin"},
        check=False,
        timeout=120,
    )


def test_status_and_explain_report_the_ledgers_numbers(
    api_client: client.ApiClient,
    namespace: str,
    accountant: dict[str, Any],
    kubeconfig: Path,
) -> None:
    spender = _setup(api_client, namespace, team_epsilon=1.0)  # total 10, team 1.0

    async def charge() -> None:
        async with _session(accountant) as session:
            for number in range(CHARGES):
                status, _ = await _post(
                    session,
                    f"{accountant['url']}/v1/charge",
                    spender.token,
                    spender.body(f"s{number}"),
                )
                assert status == 200

    asyncio.run(charge())
    spent = Decimal(RELEASE_EPSILON) * CHARGES  # 0.005

    def summarised() -> bool:
        budget = hush_resources.get(api_client, namespace, "PrivacyBudget", "survey")
        summary = (budget.get("status") or {}).get("epsilon") or {}
        return bool(summary) and Decimal(summary.get("spent", "0")) == spent

    waiting.wait_for(summarised, timeout=60, description="the budget's status to show 0.005")

    shown = _hush(kubeconfig, "status", "-n", namespace, "-o", "json")
    assert shown.returncode == 0, shown.stderr
    [budget] = json.loads(shown.stdout)["budgets"]
    assert budget["name"] == "survey"
    assert budget["entries"] == CHARGES
    assert Decimal(budget["epsilon"]["spent"]) == spent
    assert Decimal(budget["epsilon"]["remaining"]) == Decimal(10) - spent
    [team] = budget["teams"]
    assert team["team"] == spending.TEAM
    assert Decimal(team["epsilon"]["remaining"]) == Decimal(1) - spent
    # Four charges after the oldest of five, each of 0.001, over the time since it.
    assert budget["burn"]["charges"] == CHARGES - 1
    assert team["burn"]["charges"] == CHARGES - 1
    assert team["burn"]["secondsToExhaustion"] > 0
    [policy] = budget["policies"]
    assert policy["name"] == "survey"
    assert policy["policyHash"] == spender.policy_hash
    assert policy["ready"]["status"] == "True"

    table = _hush(kubeconfig, "status", "-A")
    assert table.returncode == 0, table.stderr
    assert f"BUDGET {namespace}/survey" in table.stdout

    explained = _hush(kubeconfig, "policy", "explain", "survey", "-n", namespace, "-o", "json")
    assert explained.returncode == 0, explained.stderr
    document = json.loads(explained.stdout)
    [route] = document["routes"]
    stored = hush_resources.get(api_client, namespace, "DPPolicy", "survey")
    charged = route_cost.route_charge(dppolicy.Route.model_validate(stored["spec"]["routes"][0]))
    assert Decimal(route["cost"]["epsilon"]) == charged.epsilon == Decimal(RELEASE_EPSILON)
    # Laplace at the charged scale: P[|Z| >= b ln 20] = 5 %.
    [field] = route["fields"]
    assert math.isclose(field["halfWidth"], float(charged.scale) * math.log(20), rel_tol=1e-9)
    # (1.0 - 0.005) / 0.001 more in the team's quota, (10 - 0.005) / 0.001 in the total.
    assert route["releasesLeft"]["team"] == 995
    assert route["releasesLeft"]["total"] == 9995
    assert document["budget"]["teamQuota"]["epsilonRemaining"] == "0.995"

    missing = _hush(kubeconfig, "policy", "explain", "absent", "-n", namespace)
    assert missing.returncode == 1
    assert f"DPPolicy {namespace}/absent not found" in missing.stderr
