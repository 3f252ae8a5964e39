"""Evaluate a ``DPPolicy`` against the budget it names; compute its policy hash.

A policy is ``Ready`` when its spec parses, the ``PrivacyBudget`` it names exists in the
same namespace and is accepted, that budget has a quota for the policy's team, one release
of every route fits in that quota, no field understates its sensitivity, every ``mean``
divides by a ``count`` field of its own route, no field is a ``quantile`` (the sidecar
cannot release one soundly from an aggregate answer; see
docs/design/0010-sidecar-means-and-quantiles.md), and the route declares the shape of what
it releases (docs/design/0018-release-built-from-the-policy.md): every wildcard of a field
path has exactly one domain, every domain is used, no two constant or field paths collide,
partition selection has a count to select by (and pure accounting, which records its delta).
Each failure is a ``Ready=False`` reason with a message that says how to fix it.

The policy hash is SHA-256 over the canonical JSON of the *normalised* spec (defaults
filled in, keys sorted), so that spelling a default out, or reordering YAML keys, does not
change it and does not roll workloads.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

import pydantic

from hush.api import dppolicy
from hush.privacy import amounts, route_cost, sensitivity
from hush.reconcile import conditions as conditions_module
from hush.reconcile import privacybudget as budget_module

READY = "Ready"

BudgetLookup = Callable[[str], "budget_module.BudgetSummary | None"]


def parse_spec(spec: Mapping[str, Any]) -> dppolicy.DPPolicySpec:
    return dppolicy.DPPolicySpec.model_validate(dict(spec))


def policy_hash(spec: dppolicy.DPPolicySpec, sidecar_image: str = "") -> str:
    """``sha256:<hex>`` of the normalised spec and, when given, the sidecar image.

    The image (pinned by digest) is part of what a pod runs under: a new sidecar build is a
    change of the code that noises answers, so it rolls workloads like a policy change does
    (issue 6). Without an image (no injection configured) the hash covers the spec alone.
    """
    normalised: object = spec.model_dump(mode="json", by_alias=True)
    if sidecar_image:
        normalised = {"spec": normalised, "sidecarImage": sidecar_image}
    canonical = json.dumps(
        normalised,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return "sha256:" + hashlib.sha256(canonical.encode("ascii")).hexdigest()


def _field_problem(route: dppolicy.Route, field: dppolicy.Field) -> tuple[str, str] | None:
    """(reason, message) when ``field`` understates its sensitivity, else None."""
    if sensitivity.understated(field):
        return (
            "SensitivityUnderstated",
            f"Field {field.path} of route {route.path} declares sensitivity "
            f"{field.sensitivity}, below the {amounts.display(sensitivity.derived(field))} "
            "that its kind, bounds and contributionsPerIndividual imply: remove spec "
            "sensitivity or raise it",
        )
    return None


# Moved to hush.privacy.route_cost (the sidecar and the accountant need them below this
# layer); kept here under their old names for callers of this module.
mean_count_field = route_cost.mean_count_field
mean_count_problem = route_cost.mean_count_problem


def route_problem(route: dppolicy.Route, accounting: str) -> tuple[str, str] | None:
    """The first reason no answer of ``route`` can be released soundly, or None.

    The shape checks (every wildcard has exactly one domain, no domain is unused, no two
    paths collide, a mean divides by a count of the same shape, partition selection has a
    count to select by; ``route_cost.route_problems``), the sensitivity check, and partition
    selection only under pure accounting (zCDP and RDP convert the noise alone and would drop
    the threshold's delta).
    """
    problems = route_cost.route_problems(route)
    if problems:
        return problems[0]
    for field in route.fields:
        problem = _field_problem(route, field)
        if problem is not None:
            return problem
    if accounting != "pure" and route_cost.threshold_delta(route) > 0:
        return (
            "PartitionSelectionNeedsPureAccounting",
            f"Route {route.path} uses partitionSelection, whose threshold spends delta that "
            f"{accounting} accounting does not record: use fixed keys (domains[].keys), or a "
            "PrivacyBudget with accounting: pure",
        )
    try:
        route_cost.route_plan(route)
    except route_cost.RouteError as error:
        return (error.reason, str(error))
    return None


def _readiness(
    spec: dppolicy.DPPolicySpec, budget: budget_module.BudgetSummary | None, namespace: str
) -> tuple[bool, str, str]:
    reference = spec.budget_ref
    if budget is None:
        return (
            False,
            "BudgetNotFound",
            f"PrivacyBudget {reference.name} does not exist in namespace {namespace}: "
            "create it, or fix spec.budgetRef.name",
        )
    if not budget.accepted:
        return (
            False,
            "BudgetNotReady",
            f"PrivacyBudget {reference.name} is not Ready ({budget.reason}): fix that budget",
        )
    quota = budget.quotas.get(reference.team)
    if quota is None:
        teams = ", ".join(sorted(budget.quotas)) or "none"
        return (
            False,
            "TeamNotInBudget",
            f"PrivacyBudget {reference.name} has no quota for team {reference.team} "
            f"(teams: {teams}): add one to the budget, or fix spec.budgetRef.team",
        )
    for route in spec.routes:
        epsilon = amounts.exact(route.epsilon)
        delta = amounts.exact(route.delta)
        if epsilon > quota.epsilon or delta > quota.delta:
            return (
                False,
                "ReleaseExceedsQuota",
                f"One release of route {route.path} costs epsilon {amounts.display(epsilon)}, "
                f"delta {amounts.display(delta)}, more than team {reference.team}'s whole "
                f"quota (epsilon {amounts.display(quota.epsilon)}, delta "
                f"{amounts.display(quota.delta)}): lower the route's cost or raise the quota",
            )
        problem = route_problem(route, budget.accounting)
        if problem is not None:
            return (False, *problem)
    return (
        True,
        "Accepted",
        f"Policy accepted: {len(spec.routes)} route(s) charged to PrivacyBudget "
        f"{reference.name}, team {reference.team}",
    )


def evaluate(
    spec: Mapping[str, Any],
    *,
    namespace: str,
    generation: int,
    status: Mapping[str, Any],
    lookup_budget: BudgetLookup,
    now: datetime.datetime,
    sidecar_image: str = "",
) -> dppolicy.DPPolicyStatus:
    """The status the ``DPPolicy`` should have, given its spec and its budget."""
    current = conditions_module.parse(status.get("conditions"))
    try:
        parsed = parse_spec(spec)
    except pydantic.ValidationError as error:
        message = "The spec cannot be used: " + budget_module.describe_validation_error(error)
        return dppolicy.DPPolicyStatus(
            observed_generation=generation,
            conditions=conditions_module.set_condition(
                current,
                condition_type=READY,
                status="False",
                reason="InvalidSpec",
                message=message,
                observed_generation=generation,
                now=now,
            ),
        )
    ready, reason, message = _readiness(parsed, lookup_budget(parsed.budget_ref.name), namespace)
    return dppolicy.DPPolicyStatus(
        observed_generation=generation,
        conditions=conditions_module.set_condition(
            current,
            condition_type=READY,
            status="True" if ready else "False",
            reason=reason,
            message=message,
            observed_generation=generation,
            now=now,
        ),
        policy_hash=policy_hash(parsed, sidecar_image),
    )
