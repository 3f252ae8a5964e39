"""The background audit over a fake cluster, its counts for the metric, and ``hush audit``."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hush.admission import audit
from hush.cli import main as cli
from hush.kube import client

DIGEST = "sha256:" + "cd" * 32


def namespace(name: str, mode: str | None) -> dict[str, Any]:
    labels = {} if mode is None else {"hush.dev/enforcement": mode}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def deployment(
    namespace_name: str,
    name: str,
    labels: dict[str, str],
    *,
    policy: str | None = None,
    image: str = "nginx:1.27",
) -> dict[str, Any]:
    template_metadata: dict[str, Any] = {"labels": dict(labels)}
    if policy is not None:
        template_metadata["annotations"] = {"hush.dev/policy": policy}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace_name, "labels": dict(labels)},
        "spec": {
            "template": {
                "metadata": template_metadata,
                "spec": {"containers": [{"name": "app", "image": image}]},
            }
        },
    }


def owned_pod(namespace_name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web-abc",
            "namespace": namespace_name,
            "ownerReferences": [{"kind": "ReplicaSet", "name": "web-1", "controller": True}],
        },
        "spec": {"containers": [{"name": "app", "image": "nginx"}]},
    }


GOOD = {"hush.dev/team": "payments", "hush.dev/sensitivity": "internal"}


class FakeCluster:
    """``ObjectLister`` over a dict of (plural, namespace) -> objects; records each call."""

    def __init__(self, objects: dict[tuple[str, str | None], list[dict[str, Any]]]) -> None:
        self.objects = objects
        self.calls: list[tuple[str, str | None, str | None]] = []

    def __call__(
        self,
        *,
        group: str,
        version: str,
        plural: str,
        namespace: str | None = None,
        label_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        self.calls.append((plural, namespace, label_selector))
        found = self.objects.get((plural, namespace), [])
        if label_selector:
            found = [o for o in found if label_selector in o["metadata"].get("labels", {})]
        return found


@pytest.fixture
def cluster() -> FakeCluster:
    return FakeCluster(
        {
            ("namespaces", None): [
                namespace("team-a", "enforce"),
                namespace("team-b", "audit"),
                namespace("team-c", None),
                namespace("team-d", "bogus"),
                namespace("kube-system", "enforce"),
                namespace("hush-system", "enforce"),
            ],
            ("deployments", "team-a"): [
                deployment("team-a", "web", {}),
                deployment("team-a", "api", GOOD, policy="census"),
                deployment("team-a", "ok", GOOD),
            ],
            ("dppolicies", "team-a"): [{"metadata": {"name": "census"}}],
            ("pods", "team-a"): [owned_pod("team-a")],
            ("deployments", "team-b"): [
                deployment(
                    "team-b",
                    "vault",
                    {**GOOD, "hush.dev/sensitivity": "restricted"},
                    policy="missing",
                    image=f"vault@{DIGEST}",
                )
            ],
            ("deployments", "team-c"): [deployment("team-c", "ignored", {})],
            ("deployments", "kube-system"): [deployment("kube-system", "coredns", {})],
        }
    )


def test_scan_reports_only_enforced_namespaces_and_uncontrolled_workloads(
    cluster: FakeCluster,
) -> None:
    report = audit.scan(list_objects=cluster, hush_namespace="hush-system")
    assert dict(report.namespaces) == {"team-a": "enforce", "team-b": "audit"}
    assert [
        (f.violation.namespace, f.mode, f.violation.name, f.violation.rule) for f in report.findings
    ] == [
        ("team-a", "enforce", "web", "team-label"),
        ("team-a", "enforce", "web", "sensitivity-label"),
        ("team-a", "enforce", "web", "team-label"),
        ("team-a", "enforce", "web", "sensitivity-label"),
        ("team-b", "audit", "vault", "policy-exists"),
    ]
    assert ("namespaces", None, "hush.dev/enforcement") in cluster.calls
    assert not any(call[1] in ("team-c", "kube-system", "hush-system") for call in cluster.calls)


def test_scan_of_one_namespace(cluster: FakeCluster) -> None:
    report = audit.scan(list_objects=cluster, hush_namespace="hush-system", only_namespace="team-b")
    assert dict(report.namespaces) == {"team-b": "audit"}
    assert [f.violation.rule for f in report.findings] == ["policy-exists"]
    empty = audit.scan(list_objects=cluster, hush_namespace="hush-system", only_namespace="team-c")
    assert empty == audit.AuditReport(namespaces={}, findings=())


def test_counts_for_the_metric_include_zeros(cluster: FakeCluster) -> None:
    report = audit.scan(list_objects=cluster, hush_namespace="hush-system")
    counts = audit.count_violations(report)
    assert counts[("team-a", "enforce", "team-label")] == 2
    assert counts[("team-a", "enforce", "sensitivity-label")] == 2
    assert counts[("team-a", "enforce", "image-digest")] == 0
    assert counts[("team-b", "audit", "policy-exists")] == 1
    assert len(counts) == 2 * len(audit.WORKLOAD_RULES)
    assert "restricted-pod-access" not in audit.WORKLOAD_RULES
    assert audit.count_by_rule(report.findings) == {
        "team-label": 2,
        "sensitivity-label": 2,
        "policy-exists": 1,
    }
    assert audit.violating_objects(report.findings) == [
        "Deployment team-a/web",
        "Deployment team-b/vault",
    ]


def test_hush_audit_prints_json_and_exits_1_on_violations(
    cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(client, "list_objects", cluster)
    exit_code = cli.main(["audit", "--output", "json", "--hush-namespace", "hush-system"])
    assert exit_code == 1
    document = json.loads(capsys.readouterr().out)
    assert document["namespaces"] == [
        {"name": "team-a", "mode": "enforce"},
        {"name": "team-b", "mode": "audit"},
    ]
    assert document["countsByRule"] == {"team-label": 2, "sensitivity-label": 2, "policy-exists": 1}
    first = document["violations"][0]
    assert first == {
        "mode": "enforce",
        "kind": "Deployment",
        "namespace": "team-a",
        "name": "web",
        "rule": "team-label",
        "problem": "label hush.dev/team is missing from metadata.labels",
        "fix": "add `hush.dev/team: <team>` to metadata.labels",
        "command": "kubectl label --overwrite -n team-a deployment/web hush.dev/team=<team>",
    }


def test_hush_audit_table_shows_each_problem_with_its_fix(
    cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(client, "list_objects", cluster)
    assert cli.main(["audit", "-n", "team-b", "--hush-namespace", "hush-system"]) == 1
    output = capsys.readouterr()
    lines = output.out.splitlines()
    assert lines[0].split() == ["NAMESPACE", "MODE", "OBJECT", "RULE", "PROBLEM"]
    assert lines[1].split()[:4] == ["team-b", "audit", "Deployment/vault", "policy-exists"]
    assert lines[2].strip().startswith("fix: kubectl patch -n team-b deployment/vault")
    assert output.err.strip() == "1 violation(s) in 1 object(s) across 1 namespace(s)"


def test_hush_audit_exits_0_when_clean(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean = FakeCluster(
        {
            ("namespaces", None): [namespace("team-a", "warn")],
            ("deployments", "team-a"): [deployment("team-a", "ok", GOOD)],
        }
    )
    monkeypatch.setattr(client, "list_objects", clean)
    assert cli.main(["audit"]) == 0
    assert (
        capsys.readouterr().out.strip() == "No violations in 1 enforced namespace(s): team-a (warn)"
    )


def test_hush_audit_says_when_nothing_is_enforced(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(client, "list_objects", FakeCluster({}))
    assert cli.main(["audit", "-n", "team-x"]) == 0
    assert capsys.readouterr().err.startswith(
        "Namespace team-x is not labelled hush.dev/enforcement=enforce|warn|audit"
    )
