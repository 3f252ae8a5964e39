"""kopf handlers for ``DPPolicy``: validate it against its budget, keep its status true.

A policy's readiness depends on another object, its PrivacyBudget. Two paths keep it
true: the policy's own create/update/resume handler, and ``privacybudget_changed``, which
runs on every event of a budget and re-evaluates the policies that name it (found in an
in-memory index, so no list call). A kopf timer would also work but makes kopf put a
finalizer on every policy, so that deleting a policy would hang while Hush is not running.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
from collections.abc import Mapping
from typing import Any

import kopf

from hush.accountant import service
from hush.api import dppolicy as dppolicy_api
from hush.handlers import resources, status_patch
from hush.kube import client
from hush.reconcile import dppolicy as reconcile
from hush.reconcile import privacybudget as budget_reconcile
from hush.webhook import service as webhook_service

BudgetIndex = kopf.Index[tuple[str, str], budget_reconcile.BudgetSummary]


@dataclasses.dataclass(frozen=True, kw_only=True)
class PolicySnapshot:
    """What the policy index remembers of one DPPolicy."""

    name: str
    spec: Mapping[str, Any]
    generation: int
    status: Mapping[str, Any]


def _evaluate(
    namespace: str,
    spec: Mapping[str, Any],
    generation: int,
    current: Mapping[str, Any],
    budgets: BudgetIndex,
) -> dppolicy_api.DPPolicyStatus:
    def lookup(name: str) -> budget_reconcile.BudgetSummary | None:
        summaries = budgets.get((namespace, name))
        return next(iter(summaries), None) if summaries is not None else None

    injection = webhook_service.current().options.injection
    return reconcile.evaluate(
        spec,
        namespace=namespace,
        generation=generation,
        status=current,
        lookup_budget=lookup,
        now=datetime.datetime.now(datetime.UTC),
        sidecar_image=injection.image if injection is not None else "",
    )


@kopf.index(*resources.DP_POLICIES, id="dppolicy_by_budget")
def dppolicy_by_budget(
    namespace: str | None,
    name: str,
    spec: kopf.Spec,
    meta: kopf.Meta,
    status: kopf.Status,
    **_: Any,
) -> dict[tuple[str, str], PolicySnapshot]:
    budget_ref = spec.get("budgetRef")
    budget_name = budget_ref.get("name") if isinstance(budget_ref, Mapping) else None
    snapshot = PolicySnapshot(
        name=name,
        spec=dict(spec),
        generation=int(meta.get("generation", 0)),
        status=dict(status),
    )
    return {(namespace or "", str(budget_name)): snapshot}


@kopf.on.resume(*resources.DP_POLICIES, id="dppolicy_reconcile")
@kopf.on.create(*resources.DP_POLICIES, id="dppolicy_reconcile")
@kopf.on.update(*resources.DP_POLICIES, id="dppolicy_reconcile")
def dppolicy_reconcile(
    namespace: str | None,
    spec: kopf.Spec,
    meta: kopf.Meta,
    status: kopf.Status,
    patch: kopf.Patch,
    logger: kopf.Logger,
    **kwargs: Any,
) -> None:
    budgets: BudgetIndex = kwargs["privacybudget_by_name"]
    desired = _evaluate(namespace or "", spec, int(meta.get("generation", 0)), status, budgets)
    if status_patch.apply_status(patch, status, desired):
        _log_ready(logger, desired)


@kopf.on.event(*resources.PRIVACY_BUDGETS, id="privacybudget_changed")
async def privacybudget_changed(
    namespace: str | None,
    name: str,
    logger: kopf.Logger,
    **kwargs: Any,
) -> None:
    """Re-evaluate the policies that name this budget (created, changed or deleted).

    Async, and a no-op without dependent policies: it runs on every status write of a
    budget, i.e. on every group commit of the accountant.
    """
    budgets: BudgetIndex = kwargs["privacybudget_by_name"]
    policies: kopf.Index[tuple[str, str], PolicySnapshot] = kwargs["dppolicy_by_budget"]
    namespace = namespace or ""
    # A snapshot: the index changes while this handler awaits its patches (the patch itself
    # is an event of the policy), and iterating kopf's live store then fails.
    for policy in list(policies.get((namespace, name), [])):
        desired = _evaluate(namespace, policy.spec, policy.generation, policy.status, budgets)
        changes = status_patch.changed_fields(policy.status, desired)
        if not changes:
            continue
        try:
            await asyncio.to_thread(
                client.patch_custom_status,
                group=resources.DP_POLICIES[0],
                version=resources.DP_POLICIES[1],
                plural=resources.DP_POLICIES[2],
                namespace=namespace,
                name=policy.name,
                status=changes,
            )
        except client.ObjectGoneError:
            continue
        logger.info(f"Re-evaluated DPPolicy {policy.name} after PrivacyBudget {name} changed")


@kopf.on.event(*resources.DP_POLICIES, id="dppolicy_forget_cached")
def dppolicy_forget_cached(namespace: str | None, name: str, **_: Any) -> None:
    """Any change to a policy (spec or status hash) must reach the accountant's next check."""
    service.current().forget_policy(namespace or "", name)


def _log_ready(logger: kopf.Logger, desired: dppolicy_api.DPPolicyStatus) -> None:
    ready = next((c for c in desired.conditions if c.type == reconcile.READY), None)
    if ready is not None:
        logger.info(f"Reconciled DPPolicy: Ready={ready.status} ({ready.reason})")
