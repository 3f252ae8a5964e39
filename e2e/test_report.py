"""``hush report`` against a real apiserver: a budget charged through the real accountant, then
the HTML and PDF the command writes, whose numbers must be those of ``hush ledger export``; and
the same budget after its ledger was edited through the API, which the report must call
tampered at the top.

The objects, token and charges are test_accountant's (``_setup``, ``_session``, ``_post``, its
``accountant`` fixture), as in test_cli_status."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests import report_pages

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
from test_cli_status import _hush

__all__ = ["accountant"]  # a fixture: imported to be used, not re-exported

CHARGES = 4
_DATA = re.compile(r'<script type="application/json" id="hush-report-data">(.*?)</script>', re.S)


def _data(page: Path) -> dict[str, Any]:
    found = _DATA.search(page.read_text(encoding="utf-8"))
    assert found is not None
    data: dict[str, Any] = json.loads(found.group(1))
    return data


def test_report_numbers_match_ledger_export(
    api_client: client.ApiClient,
    namespace: str,
    accountant: dict[str, Any],
    kubeconfig: Path,
    tmp_path: Path,
) -> None:
    spender = _setup(api_client, namespace, team_epsilon=1.0)  # total 10, team 1.0

    async def charge() -> None:
        async with _session(accountant) as session:
            for number in range(CHARGES):
                status, _ = await _post(
                    session,
                    f"{accountant['url']}/v1/charge",
                    spender.token,
                    spender.body(f"r{number}"),
                )
                assert status == 200

    asyncio.run(charge())
    spent = Decimal(RELEASE_EPSILON) * CHARGES

    def summarised() -> bool:
        budget = hush_resources.get(api_client, namespace, "PrivacyBudget", "survey")
        summary = (budget.get("status") or {}).get("epsilon") or {}
        return bool(summary) and Decimal(summary.get("spent", "0")) == spent

    waiting.wait_for(summarised, timeout=60, description="the budget's status to show the charges")

    exported = _hush(kubeconfig, "ledger", "export", "survey", "-n", namespace)
    assert exported.returncode == 0, exported.stderr
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    page, document = tmp_path / "survey.html", tmp_path / "survey.pdf"
    written = _hush(
        kubeconfig, "report", "survey", "-n", namespace, "-o", str(page), "--pdf", str(document)
    )
    assert written.returncode == 0, written.stderr
    assert "Ledger verified" in written.stdout

    data = _data(page)
    assert data["verification"]["verified"] is True
    entries = data["entries"]
    assert [entry["sequence"] for entry in entries] == [line["sequence"] for line in lines]
    for entry, line in zip(entries, lines, strict=True):
        assert entry["hash"] == line["hash"]
        assert entry["requestId"] == line["requestId"]
        assert entry["time"] == line["time"]
        assert entry["epsilon"] == line["epsilon"] == RELEASE_EPSILON
        assert entry["cost"] == line["cost"]
        assert entry["team"] == line["consumer"]["team"] == spending.TEAM
        assert entry["route"] == spending.COUNT_ROUTE
    assert data["verification"]["headHash"] == lines[-1]["hash"]
    assert Decimal(data["epsilon"]["spent"]) == spent
    [consumer] = data["consumers"]
    assert (consumer["policy"], consumer["entries"], Decimal(consumer["epsilon"])) == (
        "survey",
        CHARGES,
        spent,
    )
    [released] = data["releases"]
    assert released["releases"] == CHARGES
    [history] = data["policies"]
    assert history["currentHash"] == spender.policy_hash
    assert [period["current"] for period in history["periods"]] == [True]
    # The period's hash is the one the ledger recorded: the pod's baked hash, sent with each
    # charge and checked by the accountant.
    assert [period["policyHash"] for period in history["periods"]] == [spender.policy_hash]
    assert {line["policyHash"] for line in lines} == {spender.policy_hash}
    # What the page shows is those numbers, and it loads nothing from outside.
    text = page.read_text(encoding="utf-8")
    for line in lines:
        assert f'<code class="hash">{line["hash"]}</code>' in text
    assert report_pages.external_references(text) == []
    assert document.read_bytes().startswith(b"%PDF-")
    if shutil.which("pdftoppm") is None:
        pytest.skip("pdftoppm not installed (Debian poppler-utils; make report-tools)")
    png = report_pages.first_page_png(document)
    assert png.stat().st_size > 20_000

    # Someone with write access to status lowers a charge: the report says so first.
    stored = hush_resources.get(api_client, namespace, "PrivacyBudget", "survey")
    edited = stored["status"]["ledger"]["entries"]
    edited[1]["cost"][0] = 1
    client.CustomObjectsApi(api_client).patch_namespaced_custom_object_status(
        "hush.dev",
        "v1alpha1",
        namespace,
        "privacybudgets",
        "survey",
        {"status": {"ledger": {"entries": edited}}},  # a merge patch: the list is replaced
    )
    tampered = _hush(kubeconfig, "report", "survey", "-n", namespace, "-o", str(page))
    assert tampered.returncode == 3, tampered.stderr
    assert "TAMPERED entry 2" in tampered.stderr
    body = page.read_text(encoding="utf-8").split("<body>", 1)[1]
    assert "LEDGER FAILED VERIFICATION" in body[: body.index("<h1>")]
    assert _data(page)["verification"]["verified"] is False
    verified = _hush(kubeconfig, "ledger", "verify", "survey", "-n", namespace)
    assert verified.returncode == 1  # the report agrees with hush ledger verify
