"""Log lines are JSON objects with the fields a pipeline needs, and no kopf noise."""

from __future__ import annotations

import json
import logging

import pytest

from hush.observability import logging as structured_logging


def test_records_become_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    structured_logging.configure(log_format="json")
    logging.getLogger("hush.test").info(
        "Committed operations to PrivacyBudget",
        extra={"budget": "ns/b", "settings": "huge", "k8s_ref": {"kind": "K", "name": "n"}},
    )
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["event"] == "Committed operations to PrivacyBudget"
    assert line["budget"] == "ns/b"
    assert line["level"] == "info"
    assert "settings" not in line
    assert line["object"] == "K//n"
    logging.getLogger().handlers.clear()
