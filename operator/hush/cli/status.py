"""``hush status``: every PrivacyBudget, how fast it is spent, and the policies charging it.

Per budget (in one namespace, ``-n``, or all, ``-A``): the dataset's and each team's epsilon
total, spent and remaining (the operator's status), the burn rate and the time to exhaustion
at that rate, and the DPPolicies of the namespace that charge it with their Ready condition,
rollout state and stale or drifted pods (their status, written by the operator's rollout
controller).

The burn rate (``burn``, pure) is measured over the ledger's retained entries (the newest 24)
of the current renewal window: the charges after the oldest of them, over the time from it to
now, so that a budget nobody spends any more slows down instead of keeping its last rate. The
time to exhaustion (``seconds_to_exhaustion``, pure) is the longest time during which that
rate of cost units still fits the quota, judged by the budget's own accountant (epsilons add
under pure accounting, rho under zCDP, each Renyi order under RDP), so it is right for every
accounting mode, not only where epsilons add. The BURN column is the routes' declared epsilon
charged per hour: under zCDP and RDP the epsilon the budget counts as spent grows more slowly
than that sum, which is why the time to exhaustion is computed in the accountant's units.

Exit status: 0, or 1 when the cluster could not be read.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import sys
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import yaml

from hush.api import common, privacybudget
from hush.api import ledger as wire
from hush.cli import policy as policy_commands
from hush.privacy import accounting, amounts

# Beyond this, a budget "lasts": the search for the time to exhaustion stops here.
LONGEST_SECONDS = 100 * 365 * 86_400.0
# Entries that add to what is spent: ``charge``; ``reserve`` under the protocol before issue
# 14; ``lease``, whose whole grant counts as spent at once (docs/design/0021, in progress; a
# settled lease's refund is not subtracted, so the rate errs high, never low).
_SPENDING = frozenset({"charge", "reserve", "lease"})

_EXAMPLES = """\
examples:
  hush status                 # the budgets of the default namespace
  hush status -A -o json      # every namespace, as JSON
  hush status -n census -o yaml
"""


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "status",
        help="Budgets: spent and remaining per team, burn rate, time to exhaustion, policies.",
        description=(
            "Shows every PrivacyBudget with its dataset total and team quotas (spent and "
            "remaining epsilon), the current burn rate and the time to exhaustion at that "
            "rate, and the DPPolicies charging it with their rollout state and stale pods. "
            "Reads the cluster from KUBECONFIG."
        ),
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--namespace", "-n", default="default")
    where.add_argument(
        "--all-namespaces", "-A", action="store_true", help="Every namespace's budgets."
    )
    parser.add_argument(
        "--output",
        "-o",
        choices=("table", "wide", "json", "yaml"),
        default="table",
        help="wide adds the dataset's delta and each policy's hash to the table.",
    )
    parser.set_defaults(handler=run)


# -- pure: burn rate and exhaustion ------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class Burn:
    """Charges observed over ``seconds`` (from the oldest retained entry to now)."""

    since: datetime.datetime
    seconds: float
    charges: int  # after the oldest entry
    epsilon: Decimal  # the routes' declared epsilon of those charges
    cost: tuple[int, ...]  # their summed cost units

    @property
    def charges_per_hour(self) -> float:
        return self.charges * 3600.0 / self.seconds

    @property
    def epsilon_per_hour(self) -> Decimal:
        return self.epsilon * Decimal(3600) / Decimal(repr(self.seconds))


def _time(text: str) -> datetime.datetime | None:
    try:
        return privacybudget.parse_timestamp(text)
    except ValueError:
        return None


def burn(
    entries: Sequence[wire.Entry], now: datetime.datetime, *, team: str | None = None
) -> Burn | None:
    """The spending rate over ``entries`` (a ledger's retained ones, oldest first) of ``team``
    (or everyone); None with fewer than two charges or no time elapsed.

    Only the current window counts: entries up to the newest ``renew`` are dropped.
    """
    current: list[wire.Entry] = []
    for entry in entries:
        if entry.action == "renew":
            current = []
        elif entry.action in _SPENDING and (team is None or entry.consumer.team == team):
            current.append(entry)
    timed = [(moment, entry) for entry in current if (moment := _time(entry.time)) is not None]
    if len(timed) < 2:
        return None
    since = timed[0][0]
    seconds = (now - since).total_seconds()
    if seconds <= 0:
        return None
    later = [entry for _, entry in timed[1:]]
    width = max(len(entry.cost) for entry in later)
    cost = [0] * width
    epsilon = Decimal(0)
    for entry in later:
        for index, unit in enumerate(entry.cost):
            cost[index] += unit
        if entry.epsilon:
            epsilon += amounts.exact(entry.epsilon)
    return Burn(since=since, seconds=seconds, charges=len(later), epsilon=epsilon, cost=tuple(cost))


def seconds_to_exhaustion(
    accountant: accounting.Accountant,
    spent: accounting.Cost,
    capacity: accounting.Cost,
    rate: Burn,
) -> float | None:
    """Seconds until spending at ``rate`` no longer fits ``capacity``; None: not within
    ``LONGEST_SECONDS`` (or nothing is being spent). 0 when it does not fit already."""
    zero = accountant.zero()
    if len(rate.cost) != len(zero.units) or not any(rate.cost):
        return None

    def fits(seconds: float) -> bool:
        added = tuple(math.ceil(unit * seconds / rate.seconds) for unit in rate.cost)
        return accountant.fits(accountant.add(spent, accounting.Cost(added)), capacity)

    if not fits(0.0):
        return 0.0
    if fits(LONGEST_SECONDS):
        return None
    low, high = 0.0, LONGEST_SECONDS
    while high - low > 1.0:  # fits(low), not fits(high)
        middle = (low + high) / 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return low


def duration_text(seconds: float | None) -> str:
    """``3d4h``, ``2h5m``, ``40s``; ``-`` for None."""
    if seconds is None:
        return "-"
    whole = int(seconds)
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


# -- the document ----------------------------------------------------------------------------


def _spend(spend: privacybudget.Spend | None) -> dict[str, str] | None:
    if spend is None:
        return None
    return {"total": spend.total, "spent": spend.spent, "remaining": spend.remaining}


def _burn_entry(
    view: policy_commands.BudgetView,
    rate: Burn | None,
    spent: accounting.Cost,
    capacity: accounting.Cost | None,
    now: datetime.datetime,
) -> dict[str, Any] | None:
    if rate is None:
        return None
    seconds = (
        seconds_to_exhaustion(view.accountant, spent, capacity, rate)
        if capacity is not None
        else None
    )
    return {
        "since": rate.since.isoformat(),
        "charges": rate.charges,
        "chargesPerHour": round(rate.charges_per_hour, 6),
        "epsilonPerHour": amounts.display(
            amounts.quantise(rate.epsilon_per_hour, -9, amounts.Rounding.CHARGE)
        ),
        "secondsToExhaustion": None if seconds is None else round(seconds),
        "exhaustsAt": None
        if seconds is None
        else (now + datetime.timedelta(seconds=seconds)).isoformat(timespec="seconds"),
    }


def _condition(status: dict[str, Any], kind: str) -> dict[str, str] | None:
    for condition in status.get("conditions") or []:
        if condition.get("type") == kind:
            return {
                "status": str(condition.get("status", "")),
                "reason": str(condition.get("reason", "")),
            }
    return None


def _policy_entry(policy: dict[str, Any]) -> dict[str, Any]:
    metadata = policy.get("metadata") or {}
    status = policy.get("status") or {}
    rollout = status.get("rollout") or None
    drift = status.get("drift") or None
    workloads = (rollout or {}).get("workloads") or []
    if rollout is None:
        state = "Unknown"
    elif any(workload.get("state") == "Stalled" for workload in workloads):
        state = "Stalled"
    elif rollout.get("completeWorkloads", 0) < rollout.get("totalWorkloads", 0):
        state = "Progressing"
    else:
        state = "Complete"
    return {
        "name": metadata.get("name", ""),
        "team": ((policy.get("spec") or {}).get("budgetRef") or {}).get("team", ""),
        "ready": _condition(status, "Ready"),
        "policyHash": status.get("policyHash", ""),
        "rollout": {
            "state": state,
            "completeWorkloads": (rollout or {}).get("completeWorkloads", 0),
            "totalWorkloads": (rollout or {}).get("totalWorkloads", 0),
        },
        "stalePods": sum(int(workload.get("stalePods", 0)) for workload in workloads),
        "driftedPods": int((drift or {}).get("driftedPods", 0)),
    }


def budget_entry(
    budget: dict[str, Any], policies: Sequence[dict[str, Any]], now: datetime.datetime
) -> dict[str, Any]:
    """One budget's status line: totals, teams, burn, and the policies that charge it."""
    view = policy_commands.BudgetView(budget, now=now)
    status = view.status
    entries = [] if view.renewed else view.ledger.entries
    teams: list[dict[str, Any]] = []
    spent_by_team = {team.team: team for team in status.teams}
    for quota in view.spec.quotas:
        reported = spent_by_team.get(quota.team)
        teams.append(
            {
                "team": quota.team,
                "epsilon": _spend(reported.epsilon if reported else None)
                or {
                    "total": amounts.display(amounts.exact(quota.epsilon)),
                    "spent": "0",
                    "remaining": amounts.display(amounts.exact(quota.epsilon)),
                },
                "burn": _burn_entry(
                    view,
                    burn(entries, now, team=quota.team),
                    view.spent_by(quota.team),
                    view.limits.teams.get(quota.team),
                    now,
                ),
            }
        )
    name = view.name
    charging = [
        _policy_entry(policy)
        for policy in policies
        if ((policy.get("spec") or {}).get("budgetRef") or {}).get("name") == name
    ]
    return {
        "namespace": view.namespace,
        "name": name,
        "dataset": view.spec.dataset,
        "accounting": view.spec.accounting,
        "state": status.state,
        "renewal": view.spec.renewal.policy,
        "renewedAtNextCharge": view.renewed,
        "epsilon": _spend(status.epsilon),
        "delta": _spend(status.delta),
        "entries": view.ledger.sequence,
        "burn": _burn_entry(view, burn(entries, now), view.spent, view.limits.total, now),
        "teams": teams,
        "policies": sorted(charging, key=lambda item: str(item["name"])),
    }


def status_document(
    budgets: Sequence[dict[str, Any]],
    policies: Sequence[dict[str, Any]],
    now: datetime.datetime,
) -> dict[str, Any]:
    """Every budget, with the policies of its namespace that charge it."""
    by_namespace: dict[str, list[dict[str, Any]]] = {}
    for policy in policies:
        namespace = str((policy.get("metadata") or {}).get("namespace", ""))
        by_namespace.setdefault(namespace, []).append(policy)
    found: list[dict[str, Any]] = []
    for budget in sorted(
        budgets,
        key=lambda item: (
            str((item.get("metadata") or {}).get("namespace", "")),
            str((item.get("metadata") or {}).get("name", "")),
        ),
    ):
        namespace = str((budget.get("metadata") or {}).get("namespace", ""))
        try:
            found.append(budget_entry(budget, by_namespace.get(namespace, []), now))
        except policy_commands.ExplainError as error:
            metadata = budget.get("metadata") or {}
            found.append(
                {"namespace": namespace, "name": metadata.get("name", ""), "error": str(error)}
            )
    return {"time": now.isoformat(timespec="seconds"), "budgets": found}


# -- printing --------------------------------------------------------------------------------


def _spend_text(spend: dict[str, str] | None) -> tuple[str, str, str]:
    if spend is None:
        return ("-", "-", "-")
    return (spend["total"], spend["spent"], spend["remaining"])


def _burn_text(entry: dict[str, Any] | None, spend: dict[str, str] | None) -> tuple[str, str]:
    """The BURN and EXHAUSTED IN columns: epsilon an hour, and when it runs out."""
    spent_out = spend is not None and Decimal(spend["remaining"]) <= 0
    if entry is None:
        return ("-", "exhausted" if spent_out else "-")
    seconds = entry["secondsToExhaustion"]
    rate = f"{float(entry['epsilonPerHour']):.4g}/h"
    if spent_out or seconds == 0:
        return (rate, "exhausted")
    return (rate, duration_text(seconds))


def render_table(document: dict[str, Any], *, wide: bool = False) -> str:
    """The budgets as tables; ``wide`` adds the dataset's delta and each policy's hash."""
    budgets = document["budgets"]
    if not budgets:
        return "No PrivacyBudgets found."
    lines: list[str] = []
    for budget in budgets:
        if lines:
            lines.append("")
        title = f"{budget['namespace']}/{budget['name']}"
        if "error" in budget:
            lines.append(f"BUDGET {title}: {budget['error']}")
            continue
        lines.append(
            f"BUDGET {title}  dataset {budget['dataset']}  {budget['accounting']}  "
            f"{budget['state']}  renewal {budget['renewal']}  {budget['entries']} ledger entries"
            + (
                "  (new window: refilled at the next charge)"
                if budget["renewedAtNextCharge"]
                else ""
            )
        )
        rows: list[tuple[str, ...]] = [
            ("WHO", "EPSILON", "SPENT", "REMAINING", "BURN", "EXHAUSTED IN")
        ]
        rows.append(
            (
                "(dataset)",
                *_spend_text(budget["epsilon"]),
                *_burn_text(budget["burn"], budget["epsilon"]),
            )
        )
        for team in budget["teams"]:
            rows.append(
                (
                    f"team {team['team']}",
                    *_spend_text(team["epsilon"]),
                    *_burn_text(team["burn"], team["epsilon"]),
                )
            )
        lines += policy_commands.table_lines(rows)
        if wide:
            delta = _spend_text(budget["delta"])
            lines.append(f"  delta: total {delta[0]}, spent {delta[1]}, remaining {delta[2]}")
        if budget["policies"]:
            header = ("POLICY", "TEAM", "READY", "ROLLOUT", "WORKLOADS", "STALE PODS", "DRIFTED")
            rows = [(*header, "POLICY HASH") if wide else header]
            for item in budget["policies"]:
                ready = item["ready"]
                row: tuple[str, ...] = (
                    item["name"],
                    item["team"],
                    f"{ready['status']} ({ready['reason']})" if ready else "-",
                    item["rollout"]["state"],
                    f"{item['rollout']['completeWorkloads']}/{item['rollout']['totalWorkloads']}",
                    str(item["stalePods"]),
                    str(item["driftedPods"]),
                )
                rows.append((*row, item["policyHash"] or "-") if wide else row)
            lines += policy_commands.table_lines(rows)
        else:
            lines.append("  no DPPolicy charges it")
    return "\n".join(lines)


def now() -> datetime.datetime:
    """The time rates are measured to (a function, so that tests can fix it)."""
    return datetime.datetime.now(datetime.UTC)


def run(arguments: argparse.Namespace) -> int:
    from hush.kube import client  # imported here so other commands start fast

    namespace = None if arguments.all_namespaces else arguments.namespace
    try:
        budgets = client.list_objects(
            group=common.API_GROUP,
            version=common.API_VERSION,
            plural="privacybudgets",
            namespace=namespace,
        )
        policies = client.list_objects(
            group=common.API_GROUP,
            version=common.API_VERSION,
            plural="dppolicies",
            namespace=namespace,
        )
    except policy_commands.cluster_errors() as error:
        print(
            f"Could not read the cluster ({error}): check KUBECONFIG and "
            "that you may list privacybudgets and dppolicies",
            file=sys.stderr,
        )
        return 1
    document = status_document(budgets, policies, now())
    if arguments.output == "json":
        print(json.dumps(document, indent=2))
    elif arguments.output == "yaml":
        print(yaml.safe_dump(document, sort_keys=False).rstrip())
    else:
        print(render_table(document, wide=arguments.output == "wide"))
    return 0
