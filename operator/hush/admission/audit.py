"""The background audit: existing workloads that break the admission rules.

Admission only judges writes. A workload created before its namespace was enforced, or one
in an ``audit`` namespace, keeps running with whatever it lacks; this module finds those,
for ``hush audit`` and for the operator's periodic violation metric. It runs every rule of
``hush.admission.validation`` (the static ones and ``policy-exists``) over the workloads of
every namespace that carries a valid ``hush.dev/enforcement`` label, except the system
namespaces and Hush's own.

Objects owned by a controller (a Deployment's ReplicaSets, a ReplicaSet's or Job's Pods, a
CronJob's Jobs) are skipped: their owner is reported, once, and that is where the fix goes.

Pure: the caller passes the function that lists objects (``hush.kube.client.list_objects``
in production, a dict-backed fake in tests), so the same scan serves the CLI, the operator's
timer and the unit tests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, Final, Protocol

from hush.admission import validation
from hush.api import common


class ObjectLister(Protocol):
    """Lists one resource type (``group`` "" is the core group), as dicts with their kind."""

    def __call__(
        self,
        *,
        group: str,
        version: str,
        plural: str,
        namespace: str | None = None,
        label_selector: str | None = None,
    ) -> list[dict[str, Any]]: ...


# The rules an existing workload can break (exec decisions happen only at request time).
WORKLOAD_RULES: Final[tuple[validation.Rule, ...]] = tuple(
    rule for rule in validation.RULES if rule != "restricted-pod-access"
)
DPPOLICY_PLURAL: Final = "dppolicies"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Finding:
    """One violation of one existing workload, with its namespace's enforcement mode."""

    mode: validation.EnforcementMode
    violation: validation.Violation

    def as_dict(self) -> dict[str, str | None]:
        return {"mode": self.mode, **self.violation.as_dict()}


@dataclasses.dataclass(frozen=True, kw_only=True)
class AuditReport:
    """What a scan looked at (namespace -> mode) and what it found, in a stable order."""

    namespaces: Mapping[str, validation.EnforcementMode]
    findings: tuple[Finding, ...]


def audit_workloads(
    *,
    mode: validation.EnforcementMode,
    workloads: Iterable[Mapping[str, Any]],
    policy_names: Collection[str],
) -> list[Finding]:
    """The findings among ``workloads`` of one namespace whose DPPolicies are ``policy_names``.

    Each workload must carry its ``kind`` (list responses leave it out; the lister adds it).
    """
    findings: list[Finding] = []
    for workload in workloads:
        if validation.has_controller_owner(workload):
            continue
        for violation in validation.all_violations(
            workload, policy_exists=policy_names.__contains__
        ):
            findings.append(Finding(mode=mode, violation=violation))
    return findings


def scan(
    *, list_objects: ObjectLister, hush_namespace: str, only_namespace: str | None = None
) -> AuditReport:
    """Audit every enforced namespace (or just ``only_namespace``, if it is enforced)."""
    labelled = list_objects(
        group="", version="v1", plural="namespaces", label_selector=validation.ENFORCEMENT_LABEL
    )
    modes: dict[str, validation.EnforcementMode] = {}
    for namespace in labelled:
        name = str(namespace.get("metadata", {}).get("name", ""))
        mode = validation.enforcement_mode(namespace, hush_namespace=hush_namespace)
        if mode is not None and only_namespace in (None, name):
            modes[name] = mode

    findings: list[Finding] = []
    for name, mode in sorted(modes.items()):
        policies = list_objects(
            group=common.API_GROUP,
            version=common.API_VERSION,
            plural=DPPOLICY_PLURAL,
            namespace=name,
        )
        policy_names = {str(policy.get("metadata", {}).get("name")) for policy in policies}
        for kind in validation.WORKLOAD_KINDS:
            workloads = list_objects(
                group=kind.group, version=kind.version, plural=kind.plural, namespace=name
            )
            ordered = sorted(workloads, key=validation.object_name)
            findings += audit_workloads(mode=mode, workloads=ordered, policy_names=policy_names)
    return AuditReport(namespaces=modes, findings=tuple(findings))


ViolationCountKey = tuple[str, validation.EnforcementMode, validation.Rule]


def count_violations(report: AuditReport) -> dict[ViolationCountKey, int]:
    """(namespace, mode, rule) -> number of violations, zeros included.

    Every audited namespace gets a count for every workload rule, so a gauge set from this
    drops to 0 when the last violation is fixed instead of keeping its old value. A
    namespace that is no longer audited disappears: the caller removes its series.
    """
    counts: dict[ViolationCountKey, int] = {
        (namespace, mode, rule): 0
        for namespace, mode in sorted(report.namespaces.items())
        for rule in WORKLOAD_RULES
    }
    for finding in report.findings:
        key = (finding.violation.namespace, finding.mode, finding.violation.rule)
        counts[key] = counts.get(key, 0) + 1
    return counts


def count_by_rule(findings: Sequence[Finding]) -> dict[validation.Rule, int]:
    """Rule -> number of violations across all namespaces (rules without any left out)."""
    counts: dict[validation.Rule, int] = {}
    for finding in findings:
        counts[finding.violation.rule] = counts.get(finding.violation.rule, 0) + 1
    return counts


def violating_objects(findings: Sequence[Finding]) -> list[str]:
    """The distinct objects with at least one violation (``Deployment team-a/web``)."""
    return list(dict.fromkeys(finding.violation.object_reference for finding in findings))
