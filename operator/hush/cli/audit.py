"""``hush audit``: list existing workloads that break the admission rules.

Admission judges only new writes; this command reports what is already running in every
namespace labelled ``hush.dev/enforcement`` (workloads created before enforcement was turned
on, and everything in ``audit`` namespaces), with the command or manifest change that fixes
each problem. The scan itself is ``hush.admission.audit.scan``, the same one the operator
runs for its violation metric. Exit status: 0 when nothing is found, 1 when something is
(so CI and scripts can gate on it), 2 when the cluster could not be read.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from hush.admission import audit


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "audit",
        help="List existing workloads in enforced namespaces that break the admission rules.",
        description=(
            "Checks Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs, CronJobs and bare "
            "Pods in every namespace labelled hush.dev/enforcement (enforce, warn or audit). "
            "Exits 1 when any violation is found."
        ),
    )
    parser.add_argument(
        "--namespace", "-n", default=None, help="Audit only this namespace (if it is enforced)."
    )
    parser.add_argument(
        "--output",
        "-o",
        choices=("table", "json"),
        default="table",
        help="table (default) or json: one document with the namespaces and the violations.",
    )
    parser.add_argument(
        "--hush-namespace",
        default=os.environ.get("POD_NAMESPACE") or "hush-system",
        help="Hush's own namespace, never audited. Default: $POD_NAMESPACE, else hush-system.",
    )
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    from kubernetes.client import exceptions  # imported here so other commands start fast

    from hush.kube import client

    try:
        report = audit.scan(
            list_objects=client.list_objects,
            hush_namespace=arguments.hush_namespace,
            only_namespace=arguments.namespace,
        )
    except exceptions.ApiException as error:
        print(
            f"Could not read the cluster ({error.status} {error.reason}): check KUBECONFIG and "
            "that your user may list namespaces, workloads and dppolicies",
            file=sys.stderr,
        )
        return 2
    if arguments.output == "json":
        print(json.dumps(_document(report), indent=2, sort_keys=True))
    else:
        _print_table(report, arguments.namespace)
    return 1 if report.findings else 0


def _document(report: audit.AuditReport) -> dict[str, Any]:
    return {
        "namespaces": [
            {"name": name, "mode": mode} for name, mode in sorted(report.namespaces.items())
        ],
        "violations": [finding.as_dict() for finding in report.findings],
        "countsByRule": audit.count_by_rule(report.findings),
    }


def _print_table(report: audit.AuditReport, only_namespace: str | None) -> None:
    if not report.namespaces:
        where = f"Namespace {only_namespace} is not" if only_namespace else "No namespace is"
        print(
            f"{where} labelled hush.dev/enforcement=enforce|warn|audit (system namespaces and "
            "Hush's own never are): nothing to audit",
            file=sys.stderr,
        )
        return
    if not report.findings:
        print(
            f"No violations in {len(report.namespaces)} enforced namespace(s): "
            + ", ".join(f"{name} ({mode})" for name, mode in sorted(report.namespaces.items()))
        )
        return
    rows = [
        (
            finding.violation.namespace,
            finding.mode,
            f"{finding.violation.kind}/{finding.violation.name}",
            finding.violation.rule,
            finding.violation.problem,
        )
        for finding in report.findings
    ]
    headers = ("NAMESPACE", "MODE", "OBJECT", "RULE", "PROBLEM")
    # Every column but the last is padded; the fix goes under the problem, on its own line.
    widths = [max(len(row[column]) for row in [headers, *rows]) for column in range(4)]
    indent = " " * (sum(widths) + 2 * len(widths))

    def line(values: tuple[str, ...]) -> str:
        padded = [value.ljust(width) for value, width in zip(values, widths, strict=False)]
        return "  ".join([*padded, values[-1]])

    print(line(headers))
    for row, finding in zip(rows, report.findings, strict=True):
        print(line(row))
        violation = finding.violation
        print(f"{indent}fix: {violation.command or violation.fix}")
    objects = audit.violating_objects(report.findings)
    print(
        f"{len(report.findings)} violation(s) in {len(objects)} object(s) across "
        f"{len({finding.violation.namespace for finding in report.findings})} namespace(s)",
        file=sys.stderr,
    )
