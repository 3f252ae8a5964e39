"""Which status changes deserve an Event."""

from __future__ import annotations

from hush.accountant import alerts


def _status(near: str, exhausted: str, message: str = "at least 80%") -> dict[str, object]:
    return {
        "conditions": [
            {"type": "NearExhaustion", "status": near, "message": message},
            {"type": "Exhausted", "status": exhausted, "message": "spent"},
        ]
    }


def test_crossing_a_threshold_and_exhaustion_are_alerted_once() -> None:
    assert alerts.alerts(_status("False", "False"), _status("False", "False")) == []
    crossed = alerts.alerts(_status("False", "False"), _status("True", "False"))
    assert [alert.reason for alert in crossed] == ["NearExhaustion"]
    assert alerts.alerts(_status("True", "False"), _status("True", "False")) == []
    higher = alerts.alerts(_status("True", "False"), _status("True", "False", "at least 95%"))
    assert [alert.message for alert in higher] == ["at least 95%"]
    exhausted = alerts.alerts(_status("True", "False"), _status("True", "True"))
    assert [alert.reason for alert in exhausted] == ["BudgetExhausted"]
    assert alerts.alerts({}, {}) == []
