"""``hush ledger show|verify|export`` on a ledger with leases (the cluster read stubbed)."""

from __future__ import annotations

import argparse
import datetime
import json
from typing import Any

import pytest

from hush.api import ledger as wire
from hush.cli import ledger as ledger_cli
from hush.kube import client
from hush.ledger import book
from tests.unit import test_leases as leases

NOW = leases.NOW
POLICY_HASH = "sha256:0123456789ab" + "c" * 52


def _ledger() -> wire.Ledger:
    working = book.Book(wire.Ledger(), leases._limits())
    leases._grant(working, "open", 4, pod="app-1", policy_hash=POLICY_HASH)
    leases._report(working, "open", 1, 3, pod="app-1", policy_hash=POLICY_HASH)
    leases._grant(working, "gone", 2, pod="app-2", seconds=5)
    working.expire_leases(NOW + datetime.timedelta(seconds=6))
    return working.snapshot()


@pytest.fixture
def stored(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    budget: dict[str, Any] = {
        "status": {"ledger": _ledger().model_dump(mode="json", by_alias=True, exclude_none=True)}
    }
    monkeypatch.setattr(client, "read_custom", lambda **_: budget)
    return budget


def _run(action: str) -> int:
    arguments = argparse.Namespace(budget="census", namespace="stats")
    handler = {"show": ledger_cli.show, "verify": ledger_cli.verify, "export": ledger_cli.export}
    return handler[action](arguments)


def test_show_lists_open_leases_write_offs_and_reported_releases(
    stored: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run("show") == 0
    shown = capsys.readouterr().out
    assert "Open leases:   1; written off at expiry: 1 (units [100000000, 0])" in shown
    assert "lease open pod ns/app-1 route /count: granted [400000000, 0]" in shown
    assert "used [300000000, 0] by 3 release(s)" in shown
    report = next(line for line in shown.splitlines() if " report " in line)
    assert report.split()[:2] == ["2", "report"]
    assert report.split()[-2:] == ["3", "open:1"]  # three releases, lease open, batch 1
    assert any(line.split()[1] == "write-off" for line in shown.splitlines()[8:])
    # Each entry's policy hash, shortened; "-" where none was recorded (the second lease).
    rows = {line.split()[0]: line.split() for line in shown.splitlines() if line[:1].isdigit()}
    assert rows["1"][4] == rows["2"][4] == "0123456789ab"
    assert rows["3"][4] == "-"


def test_verify_and_export_understand_leases(
    stored: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run("verify") == 0
    assert "verified: 4 entries" in capsys.readouterr().out
    assert _run("export") == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [record["type"] for record in records] == ["entry"] * 4 + ["lease"]
    assert [record.get("action") for record in records[:4]] == [
        "lease",
        "report",
        "lease",
        "write-off",
    ]
    assert records[1]["releases"] == 3
    assert "releases" not in records[0]  # left out when unset, as in the hash
    assert [record.get("policyHash") for record in records[:4]] == [POLICY_HASH] * 2 + [None] * 2
    assert records[4]["leaseId"] == "open"
    # An edited open lease (more used than granted) fails verification.
    stored["status"]["ledger"]["leases"][0]["used"] = [900000000, 0]
    assert _run("verify") == 1
    assert "lease open: used more than it was granted" in capsys.readouterr().err
