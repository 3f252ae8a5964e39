"""The background audit loop sets, and clears, the violation gauge."""

from __future__ import annotations

import asyncio

import prometheus_client

from hush.admission import audit, validation
from hush.controllers import audit as audit_controller


def _report(
    namespaces: dict[str, validation.EnforcementMode], violations: int
) -> audit.AuditReport:
    findings = tuple(
        audit.Finding(
            mode="enforce",
            violation=validation.Violation(
                kind="Deployment",
                namespace="team-a",
                name=f"web-{index}",
                rule="team-label",
                problem="label hush.dev/team is missing",
                fix="add it",
            ),
        )
        for index in range(violations)
    )
    return audit.AuditReport(namespaces=namespaces, findings=findings)


def _value(namespace: str, rule: str) -> float | None:
    return prometheus_client.REGISTRY.get_sample_value(
        "hush_audit_violations", {"namespace": namespace, "mode": "enforce", "rule": rule}
    )


def test_the_gauge_counts_violations_and_forgets_unenforced_namespaces() -> None:
    reports = [_report({"team-a": "enforce"}, 2), _report({"team-a": "enforce"}, 0), _report({}, 0)]
    loop = audit_controller.AuditLoop(hush_namespace="hush-system", scan=lambda: reports.pop(0))
    asyncio.run(loop.run_once())
    assert _value("team-a", "team-label") == 2
    assert _value("team-a", "image-digest") == 0
    asyncio.run(loop.run_once())
    assert _value("team-a", "team-label") == 0
    asyncio.run(loop.run_once())
    assert _value("team-a", "team-label") is None
