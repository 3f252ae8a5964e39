"""kopf handlers for ``PrivacyBudget``: keep its status true to its spec."""

from __future__ import annotations

import datetime
from typing import Any

import kopf

from hush.handlers import resources, status_patch
from hush.reconcile import privacybudget as reconcile


@kopf.index(*resources.PRIVACY_BUDGETS, id="privacybudget_by_name")
def privacybudget_by_name(
    namespace: str | None, name: str, spec: kopf.Spec, **_: Any
) -> dict[tuple[str, str], reconcile.BudgetSummary]:
    """Summaries of every budget, keyed by (namespace, name), for policy checks."""
    return {(namespace or "", name): reconcile.summarise(spec)}


@kopf.on.resume(*resources.PRIVACY_BUDGETS, id="privacybudget_reconcile")
@kopf.on.create(*resources.PRIVACY_BUDGETS, id="privacybudget_reconcile")
@kopf.on.update(*resources.PRIVACY_BUDGETS, id="privacybudget_reconcile")
def privacybudget_reconcile(
    spec: kopf.Spec,
    meta: kopf.Meta,
    status: kopf.Status,
    patch: kopf.Patch,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    desired = reconcile.evaluate(
        spec,
        generation=int(meta.get("generation", 0)),
        status=status,
        now=datetime.datetime.now(datetime.UTC),
    )
    if status_patch.apply_status(patch, status, desired):
        ready = next((c for c in desired.conditions if c.type == reconcile.READY), None)
        if ready is not None:
            logger.info(f"Reconciled PrivacyBudget: Ready={ready.status} ({ready.reason})")
