"""kopf handlers for ``PrivacyBudget``: keep its status true to its spec and ledger.

The status is never patched from here: every status write, from a spec change or from a
charge, goes through the budget's writer in ``hush.accountant`` (one queue, one
compare-and-swap), so that a reconciliation can never overwrite a charge.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import kopf

from hush.accountant import service
from hush.handlers import resources
from hush.reconcile import privacybudget as reconcile


@kopf.index(*resources.PRIVACY_BUDGETS, id="privacybudget_by_name")
def privacybudget_by_name(
    namespace: str | None, name: str, spec: kopf.Spec, **_: Any
) -> dict[tuple[str, str], reconcile.BudgetSummary]:
    """Summaries of every budget, keyed by (namespace, name), for policy checks."""
    return {(namespace or "", name): _summarise(json.dumps(dict(spec), sort_keys=True))}


@functools.lru_cache(maxsize=1024)
def _summarise(spec_json: str) -> reconcile.BudgetSummary:
    # kopf re-indexes on every event, i.e. on every status write of the ledger; the spec
    # rarely changes, so the parse is memoised on its canonical JSON.
    return reconcile.summarise(json.loads(spec_json))


@kopf.on.resume(*resources.PRIVACY_BUDGETS, id="privacybudget_reconcile")
@kopf.on.create(*resources.PRIVACY_BUDGETS, id="privacybudget_reconcile")
@kopf.on.update(*resources.PRIVACY_BUDGETS, id="privacybudget_reconcile")
async def privacybudget_reconcile(
    namespace: str | None, name: str, logger: kopf.Logger, **_: Any
) -> None:
    writer = service.current().writers.writer(namespace or "", name)
    try:
        await writer.refresh()
    except Exception as error:
        raise kopf.TemporaryError(f"Could not write the status: {error}", delay=5) from error
    logger.info("Reconciled PrivacyBudget")


@kopf.on.delete(*resources.PRIVACY_BUDGETS, id="privacybudget_forget", optional=True)
async def privacybudget_forget(namespace: str | None, name: str, **_: Any) -> None:
    await service.current().writers.forget(namespace or "", name)
