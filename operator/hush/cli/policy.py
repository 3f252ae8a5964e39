"""``hush policy explain NAME``: what a DPPolicy's answers are worth and what they cost.

For every route and field of the policy: the mechanism, the noise scale the sidecar uses, the
half-width of the ``--level`` interval of one released value (OpenDP's accuracy functions,
``hush.privacy.accuracy``), the suppression that ``minCohort`` implies, a mean's half-width at
a cohort size; per route the cost of one answer (``route_cost.route_charge``, what the
accountant charges) and how many more answers the team's quota and the dataset's total allow,
counted with the budget's own accountant (``accuracy.releases_left``); and warnings in plain
words. All of it follows from the policy and the budget's status, never from data.

The policy and its budget come from the cluster (``KUBECONFIG``, like ``hush ledger``), or from
files (``-f``, YAML or JSON, several documents each): the DPPolicy, and the PrivacyBudget it
names when one is given (a budget without status has spent nothing).

Exit status: 0 when every route was explained, 1 when the policy (or the cluster) could not be
read or a route cannot be released (its error is printed in place of its fields).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydantic
import yaml

from hush.api import common, dppolicy, privacybudget
from hush.api import ledger as wire
from hush.ledger import limits, windows
from hush.privacy import accounting, accuracy, amounts, route_cost

DAY_SECONDS = 86_400.0
DEFAULT_COHORT = 100

_EXAMPLES = """\
examples:
  hush policy explain census-stats -n census
  hush policy explain census-stats --level 0.99 --typical '$.count=500' -o wide
  hush policy explain -f samples/valid/dppolicy-census-stats.yaml \\
      -f samples/valid/privacybudget-census.yaml -o json
"""

_COUNTING = {
    "pure": (
        "pure accounting: epsilons (and deltas) add, so releases left = remaining epsilon / "
        "epsilon per release (and remaining delta / delta), rounded down"
    ),
    "zcdp": (
        "zCDP accounting: each release adds its rho; releases left = how many more rho fit "
        "the quota's rho, the largest with rho + 2 sqrt(rho ln(1/delta)) <= epsilon (more "
        "than remaining epsilon / epsilon when releases are many: zCDP composes sublinearly)"
    ),
    "rdp": (
        "RDP accounting: each release adds its Renyi curve at every order; releases left = "
        "how many more fit at some order, each converted at delta/46 (the budget's filter)"
    ),
}


class ExplainError(Exception):
    """The policy or its budget could not be read; the message says what to do."""


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "policy", help="Explain a DPPolicy: accuracy, suppression, cost and releases left."
    )
    actions = parser.add_subparsers(dest="policy_action", required=True, metavar="ACTION")
    explain = actions.add_parser(
        "explain",
        help="Per route and field: noise, accuracy, suppression, cost, releases left.",
        description=(
            "Explains what each route of a DPPolicy releases: the noise scale, the half-width "
            "of the interval that holds with probability --level for one released value "
            "(OpenDP's accuracy functions), the suppression minCohort implies, the cost of "
            "one answer and how many more answers the budget allows. Reads the policy and "
            "its PrivacyBudget from the cluster (KUBECONFIG), or from files with -f. Exits 1 "
            "when the policy cannot be read or a route cannot be released."
        ),
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    explain.add_argument("name", nargs="?", help="DPPolicy name (optional with -f).")
    explain.add_argument("--namespace", "-n", default="default")
    explain.add_argument(
        "--filename",
        "-f",
        action="append",
        default=[],
        type=Path,
        help="Read the DPPolicy (and its PrivacyBudget, if present) from this YAML/JSON file "
        "instead of the cluster; repeatable.",
    )
    explain.add_argument(
        "--level",
        type=float,
        default=accuracy.DEFAULT_LEVEL,
        help="Confidence of the intervals (default 0.95).",
    )
    explain.add_argument(
        "--cohort",
        type=int,
        default=DEFAULT_COHORT,
        help=f"Cohort size at which a mean's half-width is given (default {DEFAULT_COHORT}).",
    )
    explain.add_argument(
        "--typical",
        action="append",
        default=[],
        metavar="[PATH=]VALUE",
        help="A typical true value (of every field, or of the field at PATH); warns when the "
        "noise is larger. Repeatable.",
    )
    explain.add_argument(
        "--output", "-o", choices=("table", "wide", "json", "yaml"), default="table"
    )
    explain.set_defaults(handler=run_explain)


# -- reading -------------------------------------------------------------------------------


def _documents(files: Sequence[Path]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for path in files:
        try:
            text = path.read_text()
            loaded = list(yaml.safe_load_all(text))
        except (OSError, yaml.YAMLError) as error:
            raise ExplainError(f"Could not read {path}: {error}") from error
        for document in loaded:
            if isinstance(document, dict) and document.get("kind") == "List":
                found += [item for item in document.get("items", []) if isinstance(item, dict)]
            elif isinstance(document, dict):
                found.append(document)
    return found


def from_files(
    files: Sequence[Path], name: str | None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The DPPolicy (named ``name``, or the only one), and its PrivacyBudget if present."""
    documents = _documents(files)
    policies = [
        document
        for document in documents
        if document.get("kind") == "DPPolicy"
        and (name is None or (document.get("metadata") or {}).get("name") == name)
    ]
    shown = ", ".join(str(path) for path in files)
    if not policies:
        wanted = f"DPPolicy {name}" if name else "a DPPolicy"
        raise ExplainError(f"{wanted} not found in {shown}")
    if len(policies) > 1:
        raise ExplainError(f"{shown} hold several DPPolicies: name the one to explain")
    policy = policies[0]
    budget_name = ((policy.get("spec") or {}).get("budgetRef") or {}).get("name")
    budgets = [
        document
        for document in documents
        if document.get("kind") == "PrivacyBudget"
        and (document.get("metadata") or {}).get("name") == budget_name
    ]
    return policy, (budgets[0] if budgets else None)


def cluster_errors() -> tuple[type[Exception], ...]:
    """What reading the cluster raises when it cannot: refused, unreachable, no kubeconfig."""
    import kubernetes  # imported here so other commands start fast
    import urllib3

    return (
        kubernetes.client.exceptions.ApiException,
        kubernetes.config.ConfigException,
        urllib3.exceptions.HTTPError,
        OSError,
    )


def from_cluster(namespace: str, name: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The DPPolicy and its PrivacyBudget (None when it does not exist) from the cluster."""
    from hush.kube import client

    def read(plural: str, object_name: str) -> dict[str, Any] | None:
        try:
            return client.read_custom(
                group=common.API_GROUP,
                version=common.API_VERSION,
                plural=plural,
                namespace=namespace,
                name=object_name,
            )
        except cluster_errors() as error:
            raise ExplainError(
                f"Could not read {plural}/{object_name} in {namespace} ({error}): check "
                f"KUBECONFIG and that you may get {plural}"
            ) from error

    policy = read("dppolicies", name)
    if policy is None:
        raise ExplainError(f"DPPolicy {namespace}/{name} not found")
    budget_name = ((policy.get("spec") or {}).get("budgetRef") or {}).get("name")
    budget = read("privacybudgets", budget_name) if budget_name else None
    return policy, budget


# -- the budget as the accountant sees it ----------------------------------------------------


class BudgetView:
    """A PrivacyBudget's limits and what its ledger has spent, in the accountant's units."""

    def __init__(self, budget: dict[str, Any], *, now: datetime.datetime | None = None) -> None:
        metadata = budget.get("metadata") or {}
        self.name = str(metadata.get("name", ""))
        self.namespace = str(metadata.get("namespace", ""))
        try:
            self.spec = privacybudget.PrivacyBudgetSpec.model_validate(budget.get("spec") or {})
            status = privacybudget.PrivacyBudgetStatus.model_validate(budget.get("status") or {})
        except pydantic.ValidationError as error:
            raise ExplainError(f"PrivacyBudget {self.name} is not valid: {error}") from error
        self.status = status
        self.limits = limits.limits_for(self.spec)
        self.accountant = self.limits.accountant
        ledger = status.ledger or wire.Ledger()
        self.ledger = ledger
        # A renewing budget whose window has passed is refilled at its next charge.
        current = windows.current_window(
            self.spec.renewal,
            created=metadata.get("creationTimestamp"),
            now=now or datetime.datetime.now(datetime.UTC),
        )
        self.renewed = current is not None and current > ledger.window and ledger.sequence > 0
        zero = self.accountant.zero()
        if self.renewed or ledger.accounting not in ("", self.spec.accounting):
            self.spent, self.team_spent = zero, {}
        else:
            self.spent = self.accountant.from_json(list(ledger.spent))
            self.team_spent = {
                team.team: self.accountant.from_json(list(team.spent)) for team in ledger.teams
            }

    def spent_by(self, team: str) -> accounting.Cost:
        return self.team_spent.get(team, self.accountant.zero())

    def epsilon_left(self, team: str | None) -> str | None:
        """Remaining epsilon of the team's quota (or the total), as the accountant counts it."""
        if team is None:
            total, delta = amounts.exact(self.spec.epsilon), self.limits.delta
            spent = self.accountant.epsilon_spent(self.spent, delta)
        else:
            if team not in self.limits.teams:
                return None
            total = self.limits.team_epsilons[team]
            delta = self.limits.team_deltas[team]
            spent = self.accountant.epsilon_spent(self.spent_by(team), delta)
        return amounts.display(max(total - spent, amounts.exact(0)))

    def releases_left(self, cost: accounting.Cost) -> int:
        """More charges of ``cost`` that fit the dataset's total."""
        return accuracy.releases_left(self.accountant, self.spent, self.limits.total, cost)

    def team_releases_left(self, cost: accounting.Cost, team: str) -> int | None:
        """More charges of ``cost`` that fit the team's quota; None: the team has none."""
        capacity = self.limits.teams.get(team)
        if capacity is None:
            return None
        return accuracy.releases_left(self.accountant, self.spent_by(team), capacity, cost)


# -- the explanation -----------------------------------------------------------------------


def parse_typical(values: Sequence[str]) -> dict[str | None, float]:
    """``--typical`` values: ``PATH=VALUE`` for one field, ``VALUE`` for all (key None)."""
    typical: dict[str | None, float] = {}
    for text in values:
        path, _, number = text.rpartition("=")
        try:
            value = float(number)
        except ValueError:
            raise ExplainError(f"--typical {text!r}: expected VALUE or PATH=VALUE") from None
        if not (math.isfinite(value) and value > 0):
            raise ExplainError(f"--typical {text!r}: a typical value is a positive number")
        typical[path or None] = value
    return typical


def _short(value: float) -> str:
    return f"{value:.4g}"


def _percent(level: float) -> str:
    return f"{level * 100:.6g}%"


def _field_entry(
    field: accuracy.FieldAccuracy,
    route: dppolicy.Route,
    *,
    level: float,
    cohort: int,
    typical: dict[str | None, float],
) -> tuple[dict[str, Any], list[str]]:
    warnings: list[str] = []
    entry: dict[str, Any] = {
        "path": field.path,
        "kind": field.kind,
        "mechanism": field.mechanism,
        "scale": field.scale,
        "sensitivity": field.sensitivity,
        "values": field.values,
        "level": level,
        "halfWidth": field.half_width,
    }
    width = field.half_width
    if field.kind == "mean" and field.count_scale is not None:
        declared = next(item for item in route.fields if item.path == field.path)
        if declared.bounds is not None:
            width = accuracy.mean_half_width(
                field.mechanism,
                sum_scale=field.scale,
                count_scale=field.count_scale,
                bounds=declared.bounds,
                cohort=cohort,
                level=level,
            )
            entry["mean"] = {"cohort": cohort, "halfWidth": width, "countPath": field.count_path}
            if width >= field.half_width:
                warnings.append(
                    f"{field.path}: at a cohort of {cohort}, the mean is not narrower than its "
                    f"bounds ({_short(field.half_width)}): the noise swamps it; raise epsilon "
                    "or release it for larger cohorts only"
                )
    if field.suppression is not None:
        held = field.suppression
        entry["suppression"] = {
            "minCohort": held.min_cohort,
            "halfSuppressedUpTo": held.half_suppressed_up_to,
            "mostlySuppressedUpTo": held.mostly_suppressed_up_to,
            "mostlyReleasedFrom": held.mostly_released_from,
        }
        if held.mostly_suppressed_up_to is None:
            warnings.append(
                f"{field.path}: even an empty cohort passes minCohort {held.min_cohort} more "
                "than 5 % of the time (the noise is wide compared to minCohort)"
            )
        if held.mostly_released_from > 2 * held.min_cohort:
            warnings.append(
                f"{field.path}: with this noise, a cohort needs {held.mostly_released_from} "
                f"people to be released 95 % of the time, more than twice minCohort "
                f"{held.min_cohort}"
            )
    if field.selection_threshold is not None:
        entry["selectionThreshold"] = field.selection_threshold
    value = typical.get(field.path, typical.get(None))
    if value is not None:
        entry["typical"] = value
        entry["relativeError"] = width / value
        if width > value:
            warnings.append(
                f"{field.path}: the noise (+-{_short(width)} at {_percent(level)}) is larger "
                f"than a typical value ({_short(value)}): most answers will be mostly noise"
            )
    return entry, warnings


def explain(
    policy: dict[str, Any],
    budget: dict[str, Any] | None,
    *,
    level: float = accuracy.DEFAULT_LEVEL,
    cohort: int = DEFAULT_COHORT,
    typical: dict[str | None, float] | None = None,
    now: datetime.datetime | None = None,
) -> dict[str, Any]:
    """The explanation of ``policy`` (a DPPolicy object) under ``budget`` (its PrivacyBudget)."""
    metadata = policy.get("metadata") or {}
    try:
        spec = dppolicy.DPPolicySpec.model_validate(policy.get("spec") or {})
    except pydantic.ValidationError as error:
        raise ExplainError(f"DPPolicy {metadata.get('name', '')} is not valid: {error}") from error
    if not 0 < level < 1:
        raise ExplainError(f"--level {level}: a confidence level is between 0 and 1 (e.g. 0.95)")
    if cohort < 1:
        raise ExplainError(f"--cohort {cohort}: a cohort has at least one person")
    team = spec.budget_ref.team
    view = BudgetView(budget, now=now) if budget is not None else None
    document: dict[str, Any] = {
        "policy": {"name": metadata.get("name", ""), "namespace": metadata.get("namespace", "")},
        "level": level,
        "budget": _budget_entry(spec, view),
        "routes": [],
    }
    for route in spec.routes:
        document["routes"].append(
            _route_entry(route, view, team, level=level, cohort=cohort, typical=typical or {})
        )
    return document


def _budget_entry(spec: dppolicy.DPPolicySpec, view: BudgetView | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": spec.budget_ref.name, "team": spec.budget_ref.team}
    if view is None:
        entry["found"] = False
        return entry
    budget_spec = view.spec
    entry.update(
        {
            "found": True,
            "dataset": budget_spec.dataset,
            "accounting": budget_spec.accounting,
            "counting": _COUNTING[budget_spec.accounting],
            "renewal": budget_spec.renewal.policy,
            "renewalPeriod": budget_spec.renewal.period,
            "renewedAtNextCharge": view.renewed,
            "total": {
                "epsilon": amounts.display(amounts.exact(budget_spec.epsilon)),
                "delta": amounts.display(amounts.exact(budget_spec.delta)),
                "epsilonRemaining": view.epsilon_left(None),
            },
        }
    )
    quota = next((q for q in budget_spec.quotas if q.team == spec.budget_ref.team), None)
    entry["teamQuota"] = (
        None
        if quota is None
        else {
            "epsilon": amounts.display(amounts.exact(quota.epsilon)),
            "delta": amounts.display(amounts.exact(quota.delta)),
            "epsilonRemaining": view.epsilon_left(quota.team),
        }
    )
    return entry


def _route_entry(
    route: dppolicy.Route,
    view: BudgetView | None,
    team: str,
    *,
    level: float,
    cohort: int,
    typical: dict[str | None, float],
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "path": route.path,
        "mechanism": route.mechanism,
        "epsilon": amounts.display(amounts.exact(route.epsilon)),
        "delta": amounts.display(amounts.exact(route.delta)),
        "minCohort": route.min_cohort,
        "cacheTTL": route.cache_ttl,
    }
    warnings: list[str] = []
    try:
        plan = route_cost.route_plan(route)
        explained = accuracy.route_accuracy(route, level=level, plan=plan)
    except (route_cost.RouteError, ValueError, ArithmeticError) as error:
        entry["error"] = str(error)
        entry["fields"] = []
        entry["warnings"] = []
        return entry
    charge = plan.charge
    entry["cost"] = {
        "epsilon": amounts.display(charge.epsilon),
        "delta": amounts.display(charge.delta),
        "mechanism": charge.mechanism,
        "sensitivity": amounts.display(charge.sensitivity),
        "scale": amounts.display(charge.scale),
    }
    fields: list[dict[str, Any]] = []
    for field in explained.fields:
        field_entry, field_warnings = _field_entry(
            field, route, level=level, cohort=cohort, typical=typical
        )
        fields.append(field_entry)
        warnings += field_warnings
    entry["fields"] = fields
    entry["releasesLeft"] = _releases_left(route, plan, view, team, warnings)
    entry["warnings"] = warnings
    return entry


def _releases_left(
    route: dppolicy.Route,
    plan: route_cost.RoutePlan,
    view: BudgetView | None,
    team: str,
    warnings: list[str],
) -> dict[str, Any] | None:
    if view is None:
        return None
    mode = view.spec.accounting
    if plan.selections and mode != "pure":
        warnings.append(
            f"{route.path} selects partitions, which {mode} accounting cannot record: the "
            "accountant refuses its charges (use pure accounting)"
        )
        return {"team": 0, "total": 0, "refused": True}
    try:
        cost = view.accountant.release_cost(plan.charge)
    except accounting.UnderNoisedError as error:  # pragma: no cover - route_plan calibrates
        warnings.append(f"{route.path}: the accountant would refuse its charge: {error}")
        return {"team": 0, "total": 0, "refused": True}
    team_left = view.team_releases_left(cost, team)
    total_left = view.releases_left(cost)
    result: dict[str, Any] = {"team": team_left, "total": total_left}
    if team_left is None:
        warnings.append(f"Budget {view.name} has no quota for team {team}: every charge is refused")
    usable = min(total_left, team_left if team_left is not None else 0)
    ttl = _seconds(route.cache_ttl)
    if ttl > 0:
        needed = math.ceil(DAY_SECONDS / ttl)
        result["dashboardReleasesPerDay"] = needed
        if usable < needed:
            warnings.append(
                f"{route.path}: a dashboard refreshing it every cacheTTL ({route.cache_ttl}) "
                f"needs {needed} releases a day for one query; the budget allows {usable} more"
                + (
                    f" (renewed every {view.spec.renewal.period})"
                    if view.spec.renewal.period
                    else ""
                )
            )
    return result


def _seconds(duration: str) -> float:
    try:
        return privacybudget.parse_duration(duration).total_seconds()
    except ValueError:
        return 0.0


# -- printing ------------------------------------------------------------------------------


def table_lines(rows: list[tuple[str, ...]], indent: str = "  ") -> list[str]:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return [
        indent
        + "  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _or_dash(value: object) -> str:
    return "-" if value is None else str(value)


def _at_most(suppression: dict[str, Any], key: str) -> str:
    """``<=c`` for a suppression bound; ``none`` when not even an empty cohort is nulled that
    often; ``-`` when the field is not suppressed by its count."""
    if not suppression:
        return "-"
    value = suppression.get(key)
    return "none" if value is None else f"<={value}"


def render_table(document: dict[str, Any], *, wide: bool = False) -> str:
    """The explanation as text: a header per budget and route, a row per field."""
    lines: list[str] = []
    policy = document["policy"]
    budget = document["budget"]
    level = document["level"]
    where = f"{policy['namespace']}/{policy['name']}" if policy["namespace"] else policy["name"]
    lines.append(f"DPPolicy {where}: intervals hold with probability {_percent(level)} per value")
    if not budget.get("found"):
        lines.append(
            f"Budget {budget['name']} (team {budget['team']}): not found, releases left unknown"
        )
    else:
        quota = budget.get("teamQuota")
        team = (
            f"team {budget['team']} quota epsilon {quota['epsilon']}, "
            f"{quota['epsilonRemaining']} left"
            if quota
            else f"team {budget['team']} has no quota"
        )
        total = budget["total"]
        lines.append(
            f"Budget {budget['name']} ({budget['accounting']}, dataset {budget['dataset']}): "
            f"{team}; dataset epsilon {total['epsilon']}, {total['epsilonRemaining']} left"
        )
        if budget.get("renewalPeriod"):
            renewal = f"Renewal {budget['renewal']} every {budget['renewalPeriod']}"
            if budget.get("renewedAtNextCharge"):
                renewal += " (a new window has begun: refilled at the next charge)"
            lines.append(renewal)
        lines.append(textwrap.fill(f"Counting: {budget['counting']}", width=100))
    for route in document["routes"]:
        lines.append("")
        lines.append(
            f"ROUTE {route['path']}  {route['mechanism']}  epsilon {route['epsilon']} delta "
            f"{route['delta']} per answer  cacheTTL {route['cacheTTL']}  minCohort "
            f"{route['minCohort']}"
        )
        if "error" in route:
            lines.append(f"  cannot be released: {route['error']}")
            continue
        left = route.get("releasesLeft")
        if left is not None:
            lines.append(
                f"  releases left: {_or_dash(left['team'])} (team quota), "
                f"{_or_dash(left['total'])} (dataset)"
                + (
                    f"; a dashboard at cacheTTL needs {left['dashboardReleasesPerDay']}/day"
                    if "dashboardReleasesPerDay" in left
                    else ""
                )
            )
        if wide:
            cost = route["cost"]
            lines.append(
                f"  charged: {cost['mechanism']} sensitivity {cost['sensitivity']} scale "
                f"{cost['scale']} -> ({cost['epsilon']}, {cost['delta']})"
            )
        percent = f"+-{_percent(level)}"
        header = ["FIELD", "KIND", "VALUES", "SCALE", percent, "NULLED>=50%", "NULLED>=95%"]
        header += ["RELEASED>=95%"]
        if wide:
            header += ["SENSITIVITY", "THRESHOLD", "TYPICAL"]
        rows: list[tuple[str, ...]] = [tuple(header)]
        for field in route["fields"]:
            held = field.get("suppression") or {}
            width = _short(field["halfWidth"])
            if "mean" in field:
                width = f"{_short(field['mean']['halfWidth'])} (n={field['mean']['cohort']})"
            row = [
                field["path"],
                field["kind"],
                str(field["values"]),
                _short(field["scale"]),
                width,
                _at_most(held, "halfSuppressedUpTo"),
                _at_most(held, "mostlySuppressedUpTo"),
                f">={held['mostlyReleasedFrom']}" if held else "-",
            ]
            if wide:
                row += [
                    field["sensitivity"][:12],
                    _or_dash(field.get("selectionThreshold")),
                    _or_dash(field.get("typical")),
                ]
            rows.append(tuple(row))
        lines += table_lines(rows)
        for field in route["fields"]:
            if field.get("selectionThreshold") is not None:
                lines.append(
                    f"  {field['path']}: a key is released only when its noisy count reaches "
                    f"{field['selectionThreshold']} (partition selection)"
                )
        for warning in route["warnings"]:
            lines += textwrap.wrap(
                warning, width=100, initial_indent="  ! ", subsequent_indent="    "
            )
    return "\n".join(lines)


def render(document: dict[str, Any], output: str) -> str:
    if output == "json":
        return json.dumps(document, indent=2)
    if output == "yaml":
        return yaml.safe_dump(document, sort_keys=False).rstrip()
    return render_table(document, wide=output == "wide")


def run_explain(arguments: argparse.Namespace) -> int:
    try:
        if arguments.filename:
            policy, budget = from_files(arguments.filename, arguments.name)
        elif arguments.name:
            policy, budget = from_cluster(arguments.namespace, arguments.name)
        else:
            raise ExplainError("Name a DPPolicy, or give its file with -f")
        document = explain(
            policy,
            budget,
            level=arguments.level,
            cohort=arguments.cohort,
            typical=parse_typical(arguments.typical),
        )
    except ExplainError as error:
        print(str(error), file=sys.stderr)
        return 1
    print(render(document, arguments.output))
    failed = [route["path"] for route in document["routes"] if "error" in route]
    if failed:
        print(f"Route(s) that cannot be released: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
