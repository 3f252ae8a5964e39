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
- Workloads and access to pods (exec, attach, port-forward, ephemeral containers) share one
  path; the server dispatches on the request's kind and subresource.
- Injection is one webhook (``pods.inject.hush.dev``), with ``reinvocationPolicy: Never``.
  Its ``matchConditions`` (CEL, evaluated by the apiserver) send it only Pods annotated
  ``hush.dev/policy``: every other Pod CREATE is admitted without a network hop, so Hush
  adds nothing to the creation of pods that did not ask for it.

``render_chart_template`` writes the Helm chart's copy (``make manifests``): the same
builders, with Helm variables where the release's names go and a ``clientConfig`` that is
the release's webhook Service, or ``webhook.url`` where the apiserver cannot reach Services.
The chart renders no ``caBundle``: the operator (self-signed mode) or cert-manager's CA
injector writes it, and a ``helm upgrade`` leaves it alone because no release ever set it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal

import yaml

from hush.admission import policies, validation

MUTATING_CONFIGURATION = "hush-injector"
VALIDATING_CONFIGURATION = "hush-validator"
INJECT_WEBHOOK = "pods.inject.hush.dev"
VALIDATE_ENFORCED_WEBHOOK = "workloads.enforce.hush.dev"
VALIDATE_REPORTED_WEBHOOK = "workloads.report.hush.dev"

MUTATE_PATH = "/mutate-pods"
VALIDATE_PATH = "/validate-workloads"

ENFORCEMENT_LABEL = validation.ENFORCEMENT_LABEL
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
SYSTEM_NAMESPACES = validation.SYSTEM_NAMESPACES
TIMEOUT_SECONDS = 5
CHART_TEMPLATE_NAME: Final = "webhook-configurations.yaml"

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
# Only annotated Pods reach the injector; the handler checks the annotation again (a
# review sent by hand, or by an apiserver that ignored the condition, changes nothing).
INJECTION_MATCH_CONDITIONS: tuple[dict[str, str], ...] = (
    {"name": "asks-for-a-policy", "expression": policies.ASKS_FOR_A_POLICY},
)
POD_ACCESS_RULES: tuple[dict[str, Any], ...] = (
    {
        "apiGroups": [""],
        "apiVersions": ["v1"],
        # port-forward too: the kubelet forwards into the pod's network namespace, so the
        # application's own port would answer raw, past the sidecar and any NetworkPolicy.
        "resources": ["pods/exec", "pods/attach", "pods/portforward"],
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
    ca_bundle: str = ""  # base64 PEM; empty when the operator or cert-manager injects it
    timeout_seconds: int = TIMEOUT_SECONDS
    # Cluster-scoped names: the chart makes them per release (<fullname>-injector, ...).
    mutating_name: str = MUTATING_CONFIGURATION
    validating_name: str = VALIDATING_CONFIGURATION
    extra_labels: Mapping[str, str] = dataclasses.field(default_factory=dict)


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
    """The same list, in the same order, as the ValidatingAdmissionPolicies exclude (not
    sorted: the chart's copy has a Helm variable in place of Hush's namespace)."""
    return list(validation.excluded_namespaces(hush_namespace))


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
    entry["matchConditions"] = [dict(condition) for condition in INJECTION_MATCH_CONDITIONS]
    entry["reinvocationPolicy"] = "Never"
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": settings.mutating_name, "labels": _labels(settings)},
        "webhooks": [entry],
    }


def build_validating_configuration(settings: Settings) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": settings.validating_name, "labels": _labels(settings)},
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


def _labels(settings: Settings) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "hush",
        "app.kubernetes.io/component": "admission",
        **settings.extra_labels,
    }


def all_configurations(settings: Settings) -> list[dict[str, Any]]:
    return [build_mutating_configuration(settings), build_validating_configuration(settings)]


# -- the Helm chart's copy -------------------------------------------------------------------

# Helm variables (set in the template's header) in place of the release's values. Names
# without spaces, so that YAML line folding can never split a template action.
_SERVICE_PORT_VARIABLE: Final = "{{$servicePort}}"
CHART_SERVICE_TARGET: Final = ServiceTarget(namespace="{{$namespace}}", name="{{$service}}", port=0)
CHART_URL_TARGET: Final = UrlTarget(url="{{$url}}")
CHART_SETTINGS: Final = Settings(
    target=CHART_SERVICE_TARGET,
    hush_namespace="{{$namespace}}",
    mutating_name="{{$mutatingName}}",
    validating_name="{{$validatingName}}",
    extra_labels={"app.kubernetes.io/instance": "{{$release}}"},
)

_CHART_HEADER: Final = """\
{{- /*
Generated by `make manifests` from operator/hush/admission/webhooks.py; do not edit by hand.
The admission webhook configurations: scoped, short timeouts, failurePolicy Fail only for
namespaces labelled hush.dev/enforcement=enforce. No caBundle: the operator (self-signed
certificates) or cert-manager's CA injector writes it.
*/ -}}
{{- $release := .Release.Name }}
{{- $namespace := .Release.Namespace }}
{{- $service := include "hush.webhookServiceName" . }}
{{- $servicePort := .Values.webhook.service.port }}
{{- $url := include "hush.webhookUrl" . }}
{{- $mutatingName := include "hush.mutatingWebhookConfigurationName" . }}
{{- $validatingName := include "hush.validatingWebhookConfigurationName" . }}
{{- $annotations := include "hush.webhookConfigurationAnnotations" . }}
"""
_MUTATING_GUARD: Final = '{{- if include "hush.injection" . }}\n'
_END: Final = "{{- end }}\n"
_ANNOTATIONS_BLOCK: Final = """\
  {{- with $annotations }}
  annotations:
    {{- . | nindent 4 }}
  {{- end }}
"""
_CLIENT_CONFIG_MARKER = re.compile(r"^(?P<indent> *)clientConfig: '@client-config (?P<path>\S+)'$")
_METADATA_MARKER = "  annotations: '@annotations'\n"


class _Dumper(yaml.SafeDumper):
    """No anchors and aliases: the entries share rule lists, and a reader expects them
    spelled out (as ``kubectl get -o yaml`` shows them)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _dump(manifest: Mapping[str, Any]) -> str:
    return yaml.dump(dict(manifest), Dumper=_Dumper, sort_keys=False, width=100)


def _indented(text: str, spaces: int) -> str:
    return "".join(" " * spaces + line + "\n" for line in text.splitlines())


def _client_config_block(indent: str, path: str) -> str:
    """``clientConfig`` by URL when ``webhook.url`` is set, else the release's Service."""
    by_url = _dump(
        _client_config(dataclasses.replace(CHART_SETTINGS, target=CHART_URL_TARGET), path)
    )
    by_service = _dump(_client_config(CHART_SETTINGS, path)).replace(
        "port: 0", f"port: {_SERVICE_PORT_VARIABLE}"
    )
    deeper = len(indent) + 2
    return (
        f"{indent}clientConfig:\n"
        f"{indent}  {{{{- if $url }}}}\n"
        + _indented(by_url, deeper)
        + f"{indent}  {{{{- else }}}}\n"
        + _indented(by_service, deeper)
        + f"{indent}  {{{{- end }}}}\n"
    )


def _chart_document(manifest: dict[str, Any]) -> str:
    marked = {
        **manifest,
        "metadata": {**manifest["metadata"], "annotations": "@annotations"},
        "webhooks": [
            {**entry, "clientConfig": "@client-config " + _path_of(entry)}
            for entry in manifest["webhooks"]
        ],
    }
    lines = []
    for line in _dump(marked).splitlines(keepends=True):
        found = _CLIENT_CONFIG_MARKER.match(line.rstrip("\n"))
        if found is not None:
            lines.append(_client_config_block(found["indent"], found["path"]))
        elif line == _METADATA_MARKER:
            lines.append(_ANNOTATIONS_BLOCK)
        else:
            lines.append(line)
    return "---\n" + "".join(lines)


def _path_of(entry: Mapping[str, Any]) -> str:
    config = entry["clientConfig"]
    return str(config["service"]["path"] if "service" in config else config["url"])


def render_chart_template() -> str:
    """The chart's ``templates/webhook-configurations.yaml``.

    The mutating configuration is rendered only when the chart injects sidecars: without
    injection settings the operator refuses every annotated pod, which the
    ``hush-injected-pods`` ValidatingAdmissionPolicy does on its own.
    """
    mutating, validating = all_configurations(CHART_SETTINGS)
    return (
        _CHART_HEADER
        + _MUTATING_GUARD
        + _chart_document(mutating)
        + _END
        + _chart_document(validating)
    )


def write_chart_template(directory: Path) -> Path:
    """Write the chart template into ``directory`` (the chart's ``templates/``)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CHART_TEMPLATE_NAME
    path.write_text(render_chart_template(), encoding="utf-8")
    return path
