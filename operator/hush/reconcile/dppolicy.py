"""Evaluate a ``DPPolicy`` against the budget it names; compute its policy hash.

A policy is ``Ready`` when its spec parses, the ``PrivacyBudget`` it names exists in the
same namespace and is accepted, that budget has a quota for the policy's team, one release
of every route fits in that quota, no field understates its sensitivity, every ``mean``
divides by a ``count`` field of its own route, and no field is a ``quantile`` (the sidecar
cannot release one soundly from an aggregate answer; see
docs/design/0010-sidecar-means-and-quantiles.md). Each failure is a ``Ready=False`` reason
with a message that says how to fix it.

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
from hush.privacy import amounts, sensitivity
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
    """(reason, message) when ``field`` cannot be released soundly, else None."""
    where = f"Field {field.path} of route {route.path}"
    if field.kind == "quantile":
        return (
            "QuantileUnsupported",
            f"{where} is a quantile, which the sidecar cannot release: it sees only the "
            "application's aggregate answer, and a differentially private quantile needs the "
            "data itself. Publish a histogram over fixed bins (kind histogram) and read the "
            "quantile from the noisy histogram, or a mean (kind mean with countPath)",
        )
    if sensitivity.understated(field):
        return (
            "SensitivityUnderstated",
            f"{where} declares sensitivity {field.sensitivity}, below the "
            f"{amounts.display(sensitivity.derived(field))} that its kind, bounds and "
            "contributionsPerIndividual imply: remove spec sensitivity or raise it",
        )
    if field.kind == "mean":
        problem = mean_count_problem(route, field)
        if problem is not None:
            return ("MeanCountNotCovered", problem)
    return None


def mean_count_field(route: dppolicy.Route, mean: dppolicy.Field) -> int | None:
    """The index in ``route.fields`` of the ``count`` field that ``mean`` divides by."""
    for index, other in enumerate(route.fields):
        if other.kind == "count" and other.path == mean.count_path:
            return index
    return None


def mean_count_problem(route: dppolicy.Route, mean: dppolicy.Field) -> str | None:
    """Why ``mean`` cannot be released from its route's answer, or None.

    A mean is released as noisy sum / noisy count, and the count is the route's own
    ``count`` field at ``countPath`` (noised once, released consistently with the mean).
    The sidecar refuses such a route with this same message.
    """
    where = f"Field {mean.path} of route {route.path}"
    if mean.bounds is None or mean.count_path is None:
        return f"{where} is a mean without bounds or countPath: set both"
    index = mean_count_field(route, mean)
    if index is None:
        return (
            f"{where} is a mean whose countPath {mean.count_path} is not a count field of "
            f"the same route: add {{path: {mean.count_path}, kind: count}} to the route's "
            "fields, so that the count is noised and the mean divides by the noisy count"
        )
    count = route.fields[index]
    if count.contributions_per_individual < mean.contributions_per_individual:
        return (
            f"{where} is a mean over rows of which one person contributes up to "
            f"{mean.contributions_per_individual}, but its count field {count.path} "
            f"declares only {count.contributions_per_individual}: the count counts the "
            "same rows, so raise the count's contributionsPerIndividual"
        )
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
        for field in route.fields:
            problem = _field_problem(route, field)
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
