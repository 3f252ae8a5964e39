"""The webhook configurations: which requests reach the operator, and what if it is down.

One source of truth for the chart's templates (a rendered-chart test compares them) and for
``hush dev``/e2e, which register the same objects with a URL client config.

Safety (invariant 8) is decided here, per webhook entry:

- Every entry excludes kube-system, kube-public, kube-node-lease and Hush's own namespace
  by ``namespaceSelector`` on ``kubernetes.io/metadata.name`` (set by the apiserver on
  every namespace, so it cannot be forged by leaving a label off).
- Timeouts are a few seconds (``TIMEOUT_SECONDS``), not the default 10 or the maximum 30.
- ``sideEffects: None`` everywhere, so server-side dry-run works.
- ``failurePolicy: Fail`` only where enforcement is asked for: the validating entry for
  namespaces labelled ``hush.dev/enforcement=enforce``. Warn/audit namespaces get
  ``Ignore``. The injector is ``Ignore`` too — it sees every Pod CREATE, and an operator
  outage must not stop unrelated pods — and fails closed for exactly the pods that asked
  for injection through the ValidatingAdmissionPolicy ``hush-injected-pods``
  (``hush.admission.policies``), which the apiserver evaluates itself after mutation.
- Workloads and access to pods (exec, attach, ephemeral containers) share one path; the
  server dispatches on the request's kind and subresource.
- Injection is one webhook (``pods.inject.hush.dev``), with ``reinvocationPolicy: Never``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal

MUTATING_CONFIGURATION = "hush-injector"
VALIDATING_CONFIGURATION = "hush-validator"
INJECT_WEBHOOK = "pods.inject.hush.dev"
VALIDATE_ENFORCED_WEBHOOK = "workloads.enforce.hush.dev"
VALIDATE_REPORTED_WEBHOOK = "workloads.report.hush.dev"

MUTATE_PATH = "/mutate-pods"
VALIDATE_PATH = "/validate-workloads"

ENFORCEMENT_LABEL = "hush.dev/enforcement"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
SYSTEM_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease")
TIMEOUT_SECONDS = 5

WORKLOAD_RULES: tuple[dict[str, Any], ...] = (
    {
        "apiGroups": ["apps"],
        "apiVersions": ["v1"],
        "resources": ["deployments", "statefulsets", "daemonsets", "replicasets"],
        "operations": ["CREATE", "UPDATE"],
        "scope": "Namespaced",
    },
    {
        "apiGroups": ["batch"],
        "apiVersions": ["v1"],
        "resources": ["jobs", "cronjobs"],
        "operations": ["CREATE", "UPDATE"],
        "scope": "Namespaced",
    },
    {
        "apiGroups": [""],
        "apiVersions": ["v1"],
        "resources": ["pods"],
        "operations": ["CREATE", "UPDATE"],
        "scope": "Namespaced",
    },
)
POD_ACCESS_RULES: tuple[dict[str, Any], ...] = (
    {
        "apiGroups": [""],
        "apiVersions": ["v1"],
        "resources": ["pods/exec", "pods/attach"],
        "operations": ["CONNECT"],
        "scope": "Namespaced",
    },
    {
        "apiGroups": [""],
        "apiVersions": ["v1"],
        "resources": ["pods/ephemeralcontainers"],
        "operations": ["UPDATE"],
        "scope": "Namespaced",
    },
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServiceTarget:
    """In a cluster: the apiserver calls the operator's Service."""

    namespace: str
    name: str
    port: int = 443


@dataclasses.dataclass(frozen=True, kw_only=True)
class UrlTarget:
    """Outside a cluster (``hush dev``, e2e): the apiserver calls a URL, e.g. on loopback."""

    url: str  # https://host:port, no path


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    target: ServiceTarget | UrlTarget
    hush_namespace: str
    ca_bundle: str = ""  # base64 PEM; empty when cert-manager injects it
    timeout_seconds: int = TIMEOUT_SECONDS


def _client_config(settings: Settings, path: str) -> dict[str, Any]:
    config: dict[str, Any]
    if isinstance(settings.target, UrlTarget):
        config = {"url": settings.target.url.rstrip("/") + path}
    else:
        config = {
            "service": {
                "namespace": settings.target.namespace,
                "name": settings.target.name,
                "path": path,
                "port": settings.target.port,
            }
        }
    if settings.ca_bundle:
        config["caBundle"] = settings.ca_bundle
    return config


def excluded_namespaces(hush_namespace: str) -> list[str]:
    return sorted({*SYSTEM_NAMESPACES, hush_namespace})


def _namespace_selector(settings: Settings, enforcement: Sequence[str] | None) -> dict[str, Any]:
    expressions: list[dict[str, Any]] = [
        {
            "key": NAMESPACE_NAME_LABEL,
            "operator": "NotIn",
            "values": excluded_namespaces(settings.hush_namespace),
        }
    ]
    if enforcement is not None:
        expressions.append(
            {"key": ENFORCEMENT_LABEL, "operator": "In", "values": list(enforcement)}
        )
    return {"matchExpressions": expressions}


def _entry(
    settings: Settings,
    *,
    name: str,
    path: str,
    rules: Sequence[dict[str, Any]],
    failure_policy: Literal["Fail", "Ignore"],
    enforcement: Sequence[str] | None,
) -> dict[str, Any]:
    return {
        "name": name,
        "admissionReviewVersions": ["v1"],
        "clientConfig": _client_config(settings, path),
        "rules": [dict(rule) for rule in rules],
        "failurePolicy": failure_policy,
        "matchPolicy": "Equivalent",
        "namespaceSelector": _namespace_selector(settings, enforcement),
        "sideEffects": "None",
        "timeoutSeconds": settings.timeout_seconds,
    }


def build_mutating_configuration(settings: Settings) -> dict[str, Any]:
    entry = _entry(
        settings,
        name=INJECT_WEBHOOK,
        path=MUTATE_PATH,
        rules=[
            {
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "resources": ["pods"],
                "operations": ["CREATE"],
                "scope": "Namespaced",
            }
        ],
        failure_policy="Ignore",
        enforcement=None,
    )
    entry["reinvocationPolicy"] = "Never"
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": MUTATING_CONFIGURATION, "labels": _labels()},
        "webhooks": [entry],
    }


def build_validating_configuration(settings: Settings) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": VALIDATING_CONFIGURATION, "labels": _labels()},
        "webhooks": [
            _entry(
                settings,
                name=VALIDATE_ENFORCED_WEBHOOK,
                path=VALIDATE_PATH,
                rules=(*WORKLOAD_RULES, *POD_ACCESS_RULES),
                failure_policy="Fail",
                enforcement=["enforce"],
            ),
            _entry(
                settings,
                name=VALIDATE_REPORTED_WEBHOOK,
                path=VALIDATE_PATH,
                rules=(*WORKLOAD_RULES, *POD_ACCESS_RULES),
                failure_policy="Ignore",
                enforcement=["warn", "audit"],
            ),
        ],
    }


def _labels() -> dict[str, str]:
    return {"app.kubernetes.io/name": "hush", "app.kubernetes.io/component": "admission"}
