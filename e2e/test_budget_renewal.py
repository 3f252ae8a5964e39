"""Renewal cannot refund spent budget (issue 14, finding 4), against the real apiserver.

Spending goes through the accountant's own status writer (``BudgetWriter``) with a store over
the test's API client: the ledger and status it writes are exactly what the operator writes,
through the status subresource, so the same writes also show that the transition rules let
the operator's status updates through. Its clock is injected, so windows are crossed by
moving the clock, not by waiting.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import json
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from hush.accountant import writer
from hush.api import ledger as wire
from hush.kube import client as kube_client
from hush.ledger import book
from hush.privacy import accounting

import hush_resources

ANCHOR = "2026-01-01T00:00:00Z"
REFUSED_RENEWAL = "spec.renewal (policy, period and anchor) cannot change once anything was spent"
CREATE_NEW = "Create a new PrivacyBudget"


@pytest.fixture(scope="module", autouse=True)
def crds_installed(api_client: client.ApiClient) -> None:
    hush_resources.install_crds(api_client)


class _ApiStore:
    """``writer.BudgetStore`` over the test's client: the operator's read and PUT /status."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self._custom = client.CustomObjectsApi(api_client)

    async def read(self, namespace: str, name: str) -> dict[str, Any] | None:
        found: dict[str, Any] = await asyncio.to_thread(
            self._custom.get_namespaced_custom_object,
            hush_resources.GROUP,
            hush_resources.VERSION,
            namespace,
            "privacybudgets",
            name,
        )
        return found

    async def write_status(self, body: dict[str, Any]) -> dict[str, Any]:
        metadata = body["metadata"]
        try:
            written: dict[str, Any] = await asyncio.to_thread(
                self._custom.replace_namespaced_custom_object_status,
                hush_resources.GROUP,
                hush_resources.VERSION,
                metadata["namespace"],
                "privacybudgets",
                metadata["name"],
                body,
            )
        except ApiException as error:
            if error.status == 409:
                raise kube_client.ConflictError(str(error)) from error
            raise
        return written


class _Spender:
    """Charges a budget through ``BudgetWriter`` at a clock the test sets."""

    def __init__(self, api_client: client.ApiClient, namespace: str, name: str) -> None:
        self.now = datetime.datetime(2026, 3, 10, 12, tzinfo=datetime.UTC)
        self._store = _ApiStore(api_client)
        self._namespace = namespace
        self._name = name
        self._count = 0

    def _run(self, operation: writer.Operation | None) -> book.Outcome | None:
        async def run() -> book.Outcome | None:
            budget_writer = writer.BudgetWriter(
                self._store, self._namespace, self._name, clock=lambda: self.now
            )
            budget_writer.start()
            try:
                if operation is None:
                    await budget_writer.refresh()
                    return None
                return await budget_writer.submit(operation)
            finally:
                await budget_writer.stop()

        return asyncio.run(run())

    def charge(self, epsilon: str) -> book.Outcome:
        self._count += 1
        request = book.ChargeRequest(
            request_id=f"charge-{self._count}",
            consumer=wire.Consumer(namespace=self._namespace, policy="stats", team="analytics"),
            release=accounting.Release(
                mechanism="laplace",
                epsilon=decimal.Decimal(epsilon),
                delta=decimal.Decimal(0),
                sensitivity=decimal.Decimal(1),
                scale=1 / decimal.Decimal(epsilon),
            ),
        )
        outcome = self._run(lambda working, now: working.charge(request, now))
        assert outcome is not None
        return outcome

    def refresh(self) -> None:
        """The status write kopf's reconciliation makes (no operation)."""
        self._run(None)


def _budget(name: str, renewal: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "dataset": name,
        "epsilon": 1.0,
        "quotas": [{"team": "analytics", "epsilon": 1.0}],
    }
    if renewal is not None:
        spec["renewal"] = renewal
    return {
        "apiVersion": "hush.dev/v1alpha1",
        "kind": "PrivacyBudget",
        "metadata": {"name": name},
        "spec": spec,
    }


def _refusal(
    api_client: client.ApiClient, namespace: str, name: str, change: dict[str, Any]
) -> str:
    with pytest.raises(ApiException) as refused:
        hush_resources.patch_spec(api_client, namespace, "PrivacyBudget", name, change)
    assert refused.value.status == 422, refused.value.body
    message: str = json.loads(refused.value.body)["message"]
    return message


@pytest.fixture
def spender(api_client: client.ApiClient, namespace: str) -> _Spender:
    return _Spender(api_client, namespace, "survey")


def test_an_exhausted_budget_cannot_be_renewed_by_patching_its_spec(
    api_client: client.ApiClient, namespace: str, spender: _Spender
) -> None:
    """The finding: Exhausted (spent 1 of 1) + renewal perDataBlock came back Ready."""
    hush_resources.create(api_client, namespace, _budget("survey"))
    assert spender.charge("1").ok
    assert not spender.charge("0.001").ok
    exhausted = hush_resources.get(api_client, namespace, "PrivacyBudget", "survey")
    assert exhausted["status"]["state"] == "Exhausted"

    for renewal in (
        {"policy": "perDataBlock", "period": "24h", "anchor": ANCHOR},
        {"policy": "calendar", "period": "1h", "anchor": ANCHOR, "acknowledgeUnboundedLoss": True},
    ):
        message = _refusal(api_client, namespace, "survey", {"renewal": renewal})
        assert REFUSED_RENEWAL in message, message
        assert "would hand spent budget back" in message
        assert CREATE_NEW in message
    # The finding's exact patch (period 1m) is refused too, for both reasons.
    message = _refusal(
        api_client,
        namespace,
        "survey",
        {"renewal": {"policy": "perDataBlock", "period": "1m", "anchor": ANCHOR}},
    )
    assert REFUSED_RENEWAL in message
    assert "renewal.period must be at least 1h" in message

    # Nothing moved: the operator's next status write still says Exhausted, spent 1.
    spender.refresh()
    after = hush_resources.get(api_client, namespace, "PrivacyBudget", "survey")
    assert after["metadata"]["generation"] == exhausted["metadata"]["generation"]
    assert after["status"]["state"] == "Exhausted"
    assert after["status"]["epsilon"]["spent"] == "1"
    assert not spender.charge("0.001").ok


def test_a_spent_budgets_period_anchor_and_policy_are_frozen(
    api_client: client.ApiClient, namespace: str, spender: _Spender
) -> None:
    renewal = {"policy": "perDataBlock", "period": "720h", "anchor": ANCHOR}
    hush_resources.create(api_client, namespace, _budget("survey", renewal))
    assert spender.charge("0.1").ok
    changes = {
        "shorter period": {"period": "24h"},
        "longer period": {"period": "1440h"},
        "moved anchor": {"anchor": "2026-03-10T00:00:00Z"},
        "no renewal": {"policy": "none"},
        "calendar": {"policy": "calendar", "acknowledgeUnboundedLoss": True},
    }
    for name, change in changes.items():
        message = _refusal(api_client, namespace, "survey", {"renewal": {**renewal, **change}})
        assert REFUSED_RENEWAL in message, f"{name}: {message}"
    # Removing the renewal block altogether (a merge patch with null) is a change too.
    message = _refusal(api_client, namespace, "survey", {"renewal": None})
    assert REFUSED_RENEWAL in message
    # What does not touch the renewal still changes: alerts, and raising the total.
    hush_resources.patch_spec(api_client, namespace, "PrivacyBudget", "survey", {"epsilon": 2.0})
    hush_resources.patch_spec(
        api_client, namespace, "PrivacyBudget", "survey", {"alerts": [0.5, 0.9]}
    )
    stored = hush_resources.get(api_client, namespace, "PrivacyBudget", "survey")
    assert stored["spec"]["renewal"] == {**renewal, "acknowledgeUnboundedLoss": False}


def test_renewal_periods_under_an_hour_and_unanchored_renewal_are_refused(
    api_client: client.ApiClient, namespace: str
) -> None:
    for number, period in enumerate(("1ms", "90s", "59m59s")):
        renewal = {"policy": "perDataBlock", "period": period, "anchor": ANCHOR}
        with pytest.raises(ApiException) as refused:
            hush_resources.create(api_client, namespace, _budget(f"short-{number}", renewal))
        assert refused.value.status == 422
        assert "renewal.period must be at least 1h" in json.loads(refused.value.body)["message"]
    with pytest.raises(ApiException) as refused:
        hush_resources.create(
            api_client, namespace, _budget("unanchored", {"policy": "perDataBlock", "period": "1h"})
        )
    assert "renewal.anchor is required" in json.loads(refused.value.body)["message"]
    with pytest.raises(ApiException) as refused:
        hush_resources.create(
            api_client,
            namespace,
            _budget("bad-anchor", {"policy": "perDataBlock", "period": "1h", "anchor": "monday"}),
        )
    assert refused.value.status == 422
    hush_resources.create(
        api_client,
        namespace,
        _budget("hourly", {"policy": "perDataBlock", "period": "1h", "anchor": ANCHOR}),
    )


def test_before_any_spend_the_renewal_may_change(
    api_client: client.ApiClient, namespace: str, spender: _Spender
) -> None:
    hush_resources.create(api_client, namespace, _budget("survey"))
    spender.refresh()  # the operator's status (an empty ledger) is not spending
    status = hush_resources.get(api_client, namespace, "PrivacyBudget", "survey")["status"]
    assert status["state"] == "Ready"
    for renewal in (
        {"policy": "perDataBlock", "period": "24h", "anchor": ANCHOR},
        {"policy": "perDataBlock", "period": "2h", "anchor": ANCHOR},
        {"policy": "perDataBlock", "period": "2h", "anchor": "2026-02-01T06:00:00+01:00"},
        {"policy": "none"},
    ):
        hush_resources.patch_spec(
            api_client, namespace, "PrivacyBudget", "survey", {"renewal": renewal}
        )
        spender.refresh()


def test_windows_renew_at_the_declared_anchor_and_stay_frozen_after(
    api_client: client.ApiClient, namespace: str, spender: _Spender
) -> None:
    renewal = {"policy": "perDataBlock", "period": "24h", "anchor": "2026-01-01T06:00:00Z"}
    hush_resources.create(api_client, namespace, _budget("survey", renewal))
    spender.now = datetime.datetime(2026, 3, 11, 5, 59, tzinfo=datetime.UTC)  # window 68
    assert spender.charge("0.6").ok
    assert not spender.charge("0.6").ok  # the window's budget is spent
    spender.now = datetime.datetime(2026, 3, 11, 6, 0, 1, tzinfo=datetime.UTC)  # window 69
    assert spender.charge("0.6").ok
    status = hush_resources.get(api_client, namespace, "PrivacyBudget", "survey")["status"]
    assert status["ledger"]["window"] == 69
    assert status["epsilon"]["spent"] == "0.6"
    assert status["lifetimeEpsilonSpent"] == "1.2"
    anchored = hush_resources.condition({"status": status}, "RenewalAnchored")
    assert anchored is not None
    assert anchored["status"] == "True"
    # Shortening the period would put "now" in a later window at once: refused.
    message = _refusal(api_client, namespace, "survey", {"renewal": {**renewal, "period": "1h"}})
    assert REFUSED_RENEWAL in message


def test_a_status_write_cannot_forget_the_ledger(
    api_client: client.ApiClient, namespace: str, spender: _Spender
) -> None:
    """ "Ever spent" stays true: the ledger's sequence never goes back, even through /status."""
    hush_resources.create(api_client, namespace, _budget("survey"))
    assert spender.charge("0.5").ok
    custom = client.CustomObjectsApi(api_client)
    for forget in (
        lambda status: status.pop("ledger"),
        lambda status: status["ledger"].update(
            sequence=0, spent=[], lifetimeSpent=[], epsilonSpent=0.0
        ),
    ):
        budget = hush_resources.get(api_client, namespace, "PrivacyBudget", "survey")
        forget(budget["status"])
        with pytest.raises(ApiException) as refused:
            custom.replace_namespaced_custom_object_status(
                hush_resources.GROUP,
                hush_resources.VERSION,
                namespace,
                "privacybudgets",
                "survey",
                budget,
            )
        assert refused.value.status == 422
        message = json.loads(refused.value.body)["message"]
        assert "its sequence cannot go back" in message
    message = _refusal(
        api_client,
        namespace,
        "survey",
        {"renewal": {"policy": "perDataBlock", "period": "24h", "anchor": ANCHOR}},
    )
    assert REFUSED_RENEWAL in message
