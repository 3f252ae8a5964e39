"""The demo's objects: names, amounts and manifest builders (pure, unit-tested).

``hush.dev.demo`` tells the story with these; nothing here talks to a cluster. The amounts
are chosen so that the story adds up: the analytics quota pays for three releases at
``ROUTE_EPSILON``, the growth quota for one, and together they are the dataset's total, so
the budget ends ``Exhausted``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from hush.dev import host_sidecar, sample_app

Manifest = dict[str, Any]

NAMESPACE: Final = "hush-demo"
BUDGET: Final = "census"
DATASET: Final = "census-2020"
TOTAL_EPSILON: Final = 1.0
ROUTE_EPSILON: Final = 0.25
CHANGED_EPSILON: Final = 0.2
ANALYTICS: Final = "analytics"
GROWTH: Final = "growth"
QUOTAS: Final = {ANALYTICS: 0.75, GROWTH: 0.25}
ANALYTICS_POLICY: Final = "survey-stats"
GROWTH_POLICY: Final = "growth-stats"
ANALYTICS_APP: Final = "survey-api"
GROWTH_APP: Final = "growth-dashboard"
UNLABELLED_APP: Final = "unlabelled"
POLICY_ANNOTATION: Final = "hush.dev/policy"
POLICY_HASH_ANNOTATION: Final = "hush.dev/policy-hash"
ENFORCEMENT_LABEL: Final = "hush.dev/enforcement"
TEAM_LABEL: Final = "hush.dev/team"
SENSITIVITY_LABEL: Final = "hush.dev/sensitivity"


def _image(name: str) -> str:
    # Never pulled (kwok runs no containers); pinned by digest, as confidential data requires.
    digest = {"survey-api": "3f" * 32, "growth-dashboard": "7c" * 32}.get(name, "e1" * 32)
    return f"registry.example.com/{name}@sha256:{digest}"


# -- manifests (pure) --------------------------------------------------------------------------


def build_budget() -> Manifest:
    return {
        "apiVersion": "hush.dev/v1alpha1",
        "kind": "PrivacyBudget",
        "metadata": {"name": BUDGET, "namespace": NAMESPACE},
        "spec": {
            "dataset": DATASET,
            "epsilon": TOTAL_EPSILON,
            "quotas": [{"team": team, "epsilon": epsilon} for team, epsilon in QUOTAS.items()],
            "accounting": "pure",
            "alerts": [0.5, 0.9],
            "enforcement": "block",
        },
    }


# The sample app answers per region (?region=R); the sidecar refuses undeclared parameters.
_REGION: Final = {"name": "region"}


def _count_route(epsilon: float) -> Manifest:
    return {
        "path": "/count",
        "mechanism": "discreteLaplace",
        "epsilon": epsilon,
        "fields": [{"path": "$.count", "kind": "count"}],
        "queryParameters": [_REGION],
    }


def build_analytics_policy(upstream_port: int) -> Manifest:
    """What the analytics team's API may release: a count, a sum and a histogram."""
    return {
        "apiVersion": "hush.dev/v1alpha1",
        "kind": "DPPolicy",
        "metadata": {"name": ANALYTICS_POLICY, "namespace": NAMESPACE},
        "spec": {
            "budgetRef": {"name": BUDGET, "team": ANALYTICS},
            "upstream": {"port": upstream_port},
            "passThrough": ["/healthz"],
            "routes": [
                _count_route(ROUTE_EPSILON),
                {
                    "path": "/income",
                    "mechanism": "laplace",
                    "epsilon": ROUTE_EPSILON,
                    "fields": [
                        {
                            "path": "$.sum",
                            "kind": "sum",
                            "bounds": {"lower": 0, "upper": sample_app.INCOME_UPPER_BOUND},
                        }
                    ],
                    "constants": [{"path": "$.unit", "value": "EUR"}],
                    "queryParameters": [_REGION],
                },
                {
                    "path": "/ages",
                    "mechanism": "discreteLaplace",
                    "epsilon": ROUTE_EPSILON,
                    "minCohort": 5,
                    "fields": [{"path": "$.histogram.*", "kind": "histogram"}],
                    "domains": [{"path": "$.histogram.*", "keys": list(sample_app.AGE_BINS)}],
                    "queryParameters": [_REGION],
                },
            ],
        },
    }


def build_growth_policy(upstream_port: int) -> Manifest:
    """The growth team's dashboard may only count."""
    return {
        "apiVersion": "hush.dev/v1alpha1",
        "kind": "DPPolicy",
        "metadata": {"name": GROWTH_POLICY, "namespace": NAMESPACE},
        "spec": {
            "budgetRef": {"name": BUDGET, "team": GROWTH},
            "upstream": {"port": upstream_port},
            "passThrough": ["/healthz"],
            "routes": [_count_route(ROUTE_EPSILON)],
        },
    }


def build_service_account(name: str) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": NAMESPACE},
    }


def build_deployment(
    name: str,
    *,
    app_port: int,
    team: str | None,
    sensitivity: str | None,
    policy: str | None,
) -> Manifest:
    """A one-replica Deployment of the sample app; ``None`` leaves a label or annotation out."""
    labels = {"app": name}
    hush_labels = {
        key: value
        for key, value in ((TEAM_LABEL, team), (SENSITIVITY_LABEL, sensitivity))
        if value is not None
    }
    template_metadata: Manifest = {"labels": {**labels, **hush_labels}}
    if policy is not None:
        template_metadata["annotations"] = {POLICY_ANNOTATION: policy}
    pod_spec: Manifest = {
        "containers": [
            {
                "name": "app",
                "image": _image(name),
                "ports": [{"name": "http", "containerPort": app_port}],
            }
        ],
        # kwok removes a terminating pod at a random moment within its grace period.
        "terminationGracePeriodSeconds": 1,
    }
    if policy is not None:
        pod_spec["serviceAccountName"] = name
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {**labels, **hush_labels}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {"metadata": template_metadata, "spec": pod_spec},
        },
    }


def build_pod_from_template(deployment: Manifest, name: str) -> Manifest:
    """A bare Pod made from ``deployment``'s template, as its ReplicaSet would make it."""
    template = deployment["spec"]["template"]
    metadata = {**template["metadata"], "name": f"{deployment['metadata']['name']}-{name}"}
    metadata["namespace"] = deployment["metadata"]["namespace"]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]}


def build_unlabelled_deployment(app_port: int) -> Manifest:
    return build_deployment(
        UNLABELLED_APP, app_port=app_port, team=None, sensitivity=None, policy=None
    )


def build_analytics_deployment(app_port: int) -> Manifest:
    return build_deployment(
        ANALYTICS_APP,
        app_port=app_port,
        team=ANALYTICS,
        sensitivity="confidential",
        policy=ANALYTICS_POLICY,
    )


def build_growth_deployment(app_port: int) -> Manifest:
    return build_deployment(
        GROWTH_APP, app_port=app_port, team=GROWTH, sensitivity="confidential", policy=GROWTH_POLICY
    )


def pod_excerpt(pod: Mapping[str, Any]) -> Manifest:
    """What injection changed in ``pod``, for printing (the baked configuration shortened)."""
    sidecar = host_sidecar.sidecar_container(pod)
    environment = [
        {
            "name": variable["name"],
            "value": _shorten(str(variable.get("value", "")), 60),
        }
        for variable in sidecar.get("env") or []
    ]
    metadata = pod.get("metadata") or {}
    app = (pod.get("spec") or {}).get("containers", [{}])[0]
    return {
        "metadata": {
            "labels": metadata.get("labels"),
            "annotations": metadata.get("annotations"),
        },
        "spec": {
            "initContainers": [
                {
                    "name": sidecar["name"],
                    "image": sidecar["image"],
                    "restartPolicy": sidecar.get("restartPolicy"),
                    "command": sidecar.get("command"),
                    "args": sidecar.get("args"),
                    "env": environment,
                    "ports": sidecar.get("ports"),
                    "securityContext": sidecar.get("securityContext"),
                }
            ],
            "containers": [{"name": app.get("name"), "ports": app.get("ports")}],
        },
    }


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
