"""The Helm chart, rendered by the project's own helm (``helm template``, ``helm lint``).

No cluster: helm renders offline. The helm binary is the one ``make controlplane`` builds
(``hush.dev.binaries``); it has no version ldflags, so every call passes ``--kube-version``
(the pinned Kubernetes version) to satisfy the chart's ``kubeVersion``. What the rendered
objects must say is checked against the code that consumes them: the Deployment's
arguments are parsed by ``hush operator``'s own parser, the webhook configurations equal
what ``hush.admission.webhooks`` builds, and the alerts and the dashboard use only metric
names that ``hush.observability.metrics`` and ``hush.sidecar.metrics`` define.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import prometheus_client
import pytest
import yaml

from hush.accountant import leadership
from hush.admission import webhooks
from hush.cli import main, webhook_certificates
from hush.cli import operator as operator_command
from hush.dev import binaries
from hush.observability import metrics
from hush.sidecar import metrics as sidecar_metrics
from tests.conftest import REPO_ROOT

CHART = REPO_ROOT / "charts" / "hush"
DIGEST = "sha256:" + "ab" * 32
NAMESPACE = "hush-system"
PROMETHEUS_OPERATOR = "monitoring.coreos.com/v1"
KUBERNETES_GO_MOD = REPO_ROOT / "hack" / "controlplane" / "kubernetes" / "go.mod"

Document = dict[str, Any]


def _kube_version() -> str:
    found = re.search(
        r"^\s*k8s\.io/kubernetes v(\d+\.\d+\.\d+)", KUBERNETES_GO_MOD.read_text(), re.M
    )
    assert found is not None, KUBERNETES_GO_MOD
    return found.group(1)


@pytest.fixture(scope="module")
def helm() -> Path:
    return binaries.locate(os.environ).path("helm")


def _helm(helm: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm), *arguments], capture_output=True, text=True, timeout=120, check=False
    )


def render_result(
    helm: Path,
    *values: str,
    release: str = "hush",
    api_versions: tuple[str, ...] = (),
    json_values: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    return _helm(
        helm,
        "template",
        release,
        str(CHART),
        f"--namespace={NAMESPACE}",
        f"--kube-version={_kube_version()}",
        *(f"--api-versions={version}" for version in api_versions),
        *(f"--set={value}" for value in values),
        *(f"--set-json={value}" for value in json_values),
    )


def render(
    helm: Path,
    *values: str,
    release: str = "hush",
    digest: bool = True,
    api_versions: tuple[str, ...] = (),
    json_values: tuple[str, ...] = (),
) -> list[Document]:
    given = (f"image.digest={DIGEST}", *values) if digest else values
    result = render_result(
        helm, *given, release=release, api_versions=api_versions, json_values=json_values
    )
    assert result.returncode == 0, result.stderr
    return [document for document in yaml.safe_load_all(result.stdout) if document]


def kinds(documents: list[Document], kind: str) -> list[Document]:
    return [document for document in documents if document["kind"] == kind]


def one(documents: list[Document], kind: str, name: str | None = None) -> Document:
    found = [
        document
        for document in kinds(documents, kind)
        if name is None or document["metadata"]["name"] == name
    ]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
    return found[0]


def container(documents: list[Document]) -> Document:
    (found,) = one(documents, "Deployment")["spec"]["template"]["spec"]["containers"]
    result: Document = found
    return result


def operator_arguments(documents: list[Document]) -> Any:
    """The Deployment's arguments, parsed by ``hush`` itself."""
    return main.build_parser().parse_args(container(documents)["args"])


# -- lint, values, schema --------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        (),
        ("operator.replicas=2",),
        ("webhook.certificates.mode=cert-manager", "webhook.url=https://hush.example.com:9443"),
        ("accountant.enabled=false", "webhook.injection.enabled=false"),
    ],
    ids=["defaults", "two-replicas", "cert-manager-url", "no-accountant"],
)
def test_helm_lint_is_clean(helm: Path, values: tuple[str, ...]) -> None:
    result = _helm(
        helm,
        "lint",
        "--strict",
        str(CHART),
        f"--kube-version={_kube_version()}",
        f"--set=image.digest={DIGEST}",
        *(f"--set={value}" for value in values),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def _value_keys(node: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(node, dict):
        for key, child in node.items():
            yield f"{prefix}{key}"
            yield from _value_keys(child, f"{prefix}{key}.")


# Maps whose keys are Kubernetes fields or user data, documented by their parent's comment.
FREE_FORM = (
    "operator.resources.",
    "monitoring.grafanaDashboard.labels.",
)


def test_every_value_is_commented() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    path: list[tuple[int, str]] = []
    undocumented = []
    for number, line in enumerate(lines):
        found = re.match(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w-]*):", line)
        if found is None:
            continue
        indent = len(found["indent"])
        path = [(depth, key) for depth, key in path if depth < indent]
        path.append((indent, found["key"]))
        dotted = ".".join(key for _, key in path)
        if dotted.startswith(FREE_FORM):
            continue
        if not lines[number - 1].lstrip().startswith("#"):
            undocumented.append(dotted)
    assert undocumented == []


def _schema_paths(schema: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, child in schema.get("properties", {}).items():
        yield f"{prefix}{key}"
        yield from _schema_paths(child, f"{prefix}{key}.")


def test_the_schema_types_every_value_and_refuses_unknown_keys(helm: Path) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    typed = set(_schema_paths(schema))
    untyped = [
        key for key in _value_keys(values) if key not in typed and not key.startswith(FREE_FORM)
    ]
    assert untyped == []
    assert schema["additionalProperties"] is False

    misspelt = render_result(helm, f"image.digest={DIGEST}", "operator.replica=2")
    assert misspelt.returncode != 0
    assert "additional properties 'replica' not allowed" in misspelt.stderr
    unpinned = render_result(helm, "image.digest=latest")
    assert unpinned.returncode != 0
    assert "/image/digest" in unpinned.stderr


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("image.digest=latest", "at '/image/digest': 'latest' does not match pattern"),
        ("operator.replicas=two", "at '/operator/replicas': got string, want integer"),
        ("operator.replicas=0", "at '/operator/replicas': minimum: got 0, want 1"),
        (
            "webhook.certificates.mode=vault",
            "at '/webhook/certificates/mode': value must be one of 'self-signed', 'cert-manager'",
        ),
        (
            "monitoring.prometheusRule.budgetNearExhaustion.fraction=2",
            "at '/monitoring/prometheusRule/budgetNearExhaustion/fraction': maximum: got 2, want 1",
        ),
        # Rendered into a PromQL range: a bad duration would make the whole rule group fail.
        (
            "monitoring.prometheusRule.burnRate.window=1hour",
            "at '/monitoring/prometheusRule/burnRate/window': '1hour' does not match pattern",
        ),
    ],
    ids=["pattern", "type", "minimum", "enum", "maximum", "promql-duration"],
)
def test_a_wrong_value_is_refused_naming_the_value_and_what_it_must_be(
    helm: Path, value: str, message: str
) -> None:
    result = render_result(helm, f"image.digest={DIGEST}", value)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr, result.stderr


# -- the Deployment ----------------------------------------------------------------------------


def test_sidecar_injection_refuses_to_render_without_a_digest(helm: Path) -> None:
    result = render_result(helm)
    assert result.returncode != 0
    assert "Sidecar injection needs the image pinned by digest: set image.digest=" in (
        result.stderr
    )
    # Without injection (or without the accountant it needs) no digest is required.
    for values in (("webhook.injection.enabled=false",), ("accountant.enabled=false",)):
        documents = render(helm, *values, digest=False)
        assert operator_arguments(documents).sidecar_image is None
        assert not kinds(documents, "MutatingWebhookConfiguration")


def test_the_operator_runs_restricted_with_probes_and_resources(helm: Path) -> None:
    documents = render(helm)
    deployment = one(documents, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    operator = container(documents)
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert operator["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
    }
    assert operator["image"] == f"ghcr.io/hush-dev/hush@{DIGEST}"
    assert operator["resources"]["requests"] == {"cpu": "50m", "memory": "128Mi"}
    assert operator["resources"]["limits"] == {"memory": "256Mi"}
    ports = {port["name"]: port["containerPort"] for port in operator["ports"]}
    assert ports == {"health": 8080, "webhook": 9443, "accountant": 8443, "metrics": 9090}
    # Liveness is kopf's; readiness is the webhook server's, in every replica.
    assert operator["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert operator["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert operator["readinessProbe"]["httpGet"] == {
        "path": "/readyz",
        "port": "webhook",
        "scheme": "HTTPS",
    }
    env = {variable["name"]: variable["valueFrom"]["fieldRef"] for variable in operator["env"]}
    assert env == {
        "POD_NAMESPACE": {"fieldPath": "metadata.namespace"},
        "POD_NAME": {"fieldPath": "metadata.name"},
        "POD_ID": {"fieldPath": "metadata.uid"},
    }


def test_upgrades_roll_one_new_pod_in_before_an_old_one_goes(helm: Path) -> None:
    strategy = one(render(helm), "Deployment")["spec"]["strategy"]
    assert strategy == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }


def test_replicas_prefer_different_nodes_unless_told_otherwise(helm: Path) -> None:
    pod = one(render(helm), "Deployment")["spec"]["template"]["spec"]
    (term,) = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "hush",
        "app.kubernetes.io/instance": "hush",
        "app.kubernetes.io/component": "operator",
    }
    assert (
        "requiredDuringSchedulingIgnoredDuringExecution" not in pod["affinity"]["podAntiAffinity"]
    )
    custom = render(helm, "operator.affinity.nodeAffinity.foo=bar")
    affinity = one(custom, "Deployment")["spec"]["template"]["spec"]["affinity"]
    assert affinity == {"nodeAffinity": {"foo": "bar"}}


def test_priority_class_and_disruption_budget(helm: Path) -> None:
    single = render(helm)
    assert "priorityClassName" not in one(single, "Deployment")["spec"]["template"]["spec"]
    assert not kinds(single, "PodDisruptionBudget")  # it would block every drain

    two = render(helm, "operator.replicas=2", "operator.priorityClassName=system-cluster-critical")
    pod = one(two, "Deployment")["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "system-cluster-critical"
    budget = one(two, "PodDisruptionBudget")
    assert budget["spec"] == {
        "minAvailable": 1,
        "selector": one(two, "Deployment")["spec"]["selector"],
    }
    assert not kinds(
        render(helm, "operator.replicas=2", "operator.podDisruptionBudget.enabled=false"),
        "PodDisruptionBudget",
    )


def test_the_arguments_are_what_hush_operator_understands(helm: Path) -> None:
    documents = render(helm)
    arguments = operator_arguments(documents)
    assert arguments.all_namespaces
    assert arguments.webhook_port == 9443
    assert arguments.metrics_port == 9090
    assert arguments.accountant_port == 8443
    assert arguments.sidecar_image == f"ghcr.io/hush-dev/hush@{DIGEST}"
    assert arguments.sidecar_accountant_url == "https://hush-accountant.hush-system.svc:8443"
    assert arguments.break_glass_group is None
    # The operator keeps the accountant's certificate and publishes its own CA.
    assert arguments.sidecar_ca_file is None
    accountant = operator_command.accountant_certificate_options(
        arguments, {"POD_NAMESPACE": NAMESPACE}
    )
    assert accountant.mode == "self-signed"
    assert accountant.names is not None
    assert accountant.names.service == "hush-accountant"
    assert accountant.secret_name == "hush-accountant-tls"
    election = operator_command.leader_election_settings(
        arguments, {"POD_NAMESPACE": NAMESPACE, "POD_NAME": "hush-operator-abc"}, "pod_1"
    )
    assert election == leadership.Settings(
        namespace=NAMESPACE,
        name="hush-operator",
        identity="pod_1",
        pod=leadership.PodRef(namespace=NAMESPACE, name="hush-operator-abc"),
    )
    keeper = webhook_certificates.keeper_options(arguments, {"POD_NAMESPACE": NAMESPACE})
    assert keeper.mode == "self-signed"
    assert keeper.names is not None
    assert keeper.names.service == "hush-webhook"
    assert [(ref.kind, ref.name) for ref in keeper.webhook_configurations] == [
        ("MutatingWebhookConfiguration", webhooks.MUTATING_CONFIGURATION),
        ("ValidatingWebhookConfiguration", webhooks.VALIDATING_CONFIGURATION),
    ]

    glass = operator_arguments(render(helm, "webhook.breakGlassGroup=sre-oncall"))
    assert glass.break_glass_group == "sre-oncall"


def test_without_injection_the_operator_keeps_only_the_validating_configuration(
    helm: Path,
) -> None:
    documents = render(helm, "webhook.injection.enabled=false")
    arguments = operator_arguments(documents)
    keeper = webhook_certificates.keeper_options(arguments, {"POD_NAMESPACE": NAMESPACE})
    assert [ref.kind for ref in keeper.webhook_configurations] == ["ValidatingWebhookConfiguration"]
    resources = [rule["resources"] for rule in one(documents, "ClusterRole")["rules"]]
    assert ["mutatingwebhookconfigurations"] not in resources
    assert ["validatingwebhookconfigurations"] in resources


def test_more_than_one_replica_needs_leader_election(helm: Path) -> None:
    result = render_result(
        helm,
        f"image.digest={DIGEST}",
        "operator.replicas=2",
        "operator.leaderElection.enabled=false",
    )
    assert result.returncode != 0
    assert "operator.replicas > 1 needs operator.leaderElection.enabled" in result.stderr


# -- Services ----------------------------------------------------------------------------------


def test_webhooks_reach_every_replica_and_charges_only_the_leader(helm: Path) -> None:
    documents = render(helm)
    selector = one(documents, "Deployment")["spec"]["selector"]["matchLabels"]
    webhook = one(documents, "Service", "hush-webhook")
    assert webhook["spec"]["selector"] == selector
    assert webhook["spec"]["ports"] == [{"name": "https", "port": 443, "targetPort": "webhook"}]
    accountant = one(documents, "Service", "hush-accountant")
    assert accountant["spec"]["selector"] == {
        **selector,
        leadership.LEADER_LABEL: leadership.LEADER_LABEL_VALUE,
    }
    assert accountant["spec"]["ports"] == [
        {"name": "https", "port": 8443, "targetPort": "accountant"}
    ]
    # Without an election the one replica is the accountant.
    alone = render(helm, "operator.leaderElection.enabled=false")
    assert one(alone, "Service", "hush-accountant")["spec"]["selector"] == selector
    assert not operator_arguments(alone).leader_election
    # Without the accountant, no Service for it.
    names = [
        s["metadata"]["name"] for s in kinds(render(helm, "accountant.enabled=false"), "Service")
    ]
    assert names == ["hush-webhook", "hush-metrics"]


# -- webhook configurations ------------------------------------------------------------------


def test_the_chart_template_of_the_webhook_configurations_matches_the_builders() -> None:
    path = CHART / "templates" / webhooks.CHART_TEMPLATE_NAME
    assert path.read_text(encoding="utf-8") == webhooks.render_chart_template(), (
        f"{path.name} drifted: run `make manifests`"
    )


def _settings(
    target: webhooks.ServiceTarget | webhooks.UrlTarget, release: str
) -> webhooks.Settings:
    fullname = release if "hush" in release else f"{release}-hush"
    return webhooks.Settings(
        target=target,
        hush_namespace=NAMESPACE,
        mutating_name=f"{fullname}-injector",
        validating_name=f"{fullname}-validator",
        extra_labels={"app.kubernetes.io/instance": release},
    )


@pytest.mark.parametrize("release", ["hush", "blue"])
def test_the_chart_renders_exactly_what_the_builders_make(helm: Path, release: str) -> None:
    documents = render(helm, release=release)
    fullname = release if release == "hush" else f"{release}-hush"
    target = webhooks.ServiceTarget(namespace=NAMESPACE, name=f"{fullname}-webhook", port=443)
    expected = webhooks.all_configurations(_settings(target, release))
    rendered = kinds(documents, "MutatingWebhookConfiguration") + kinds(
        documents, "ValidatingWebhookConfiguration"
    )
    assert rendered == expected
    for configuration in rendered:
        for entry in configuration["webhooks"]:
            assert "caBundle" not in entry["clientConfig"]  # the operator injects it
    if release == "hush":  # the names hush dev and the e2e suite use
        assert [c["metadata"]["name"] for c in rendered] == [
            webhooks.MUTATING_CONFIGURATION,
            webhooks.VALIDATING_CONFIGURATION,
        ]


def test_a_url_replaces_the_service_and_the_certificate_names_its_host(helm: Path) -> None:
    documents = render(helm, "webhook.url=https://127.0.0.1:9443/", "webhook.service.port=8443")
    expected = webhooks.all_configurations(
        _settings(webhooks.UrlTarget(url="https://127.0.0.1:9443"), "hush")
    )
    rendered = kinds(documents, "MutatingWebhookConfiguration") + kinds(
        documents, "ValidatingWebhookConfiguration"
    )
    assert rendered == expected
    arguments = operator_arguments(documents)
    assert arguments.webhook_cert_ip == ["127.0.0.1"]
    assert arguments.webhook_cert_dns_name == []

    by_name = operator_arguments(render(helm, "webhook.url=https://hush.example.com:9443"))
    assert by_name.webhook_cert_dns_name == ["hush.example.com"]
    assert by_name.webhook_cert_ip == []

    service_port = render(helm, "webhook.service.port=8443")
    (entry,) = one(service_port, "MutatingWebhookConfiguration")["webhooks"]
    assert entry["clientConfig"]["service"]["port"] == 8443
    assert one(service_port, "Service", "hush-webhook")["spec"]["ports"][0]["port"] == 8443


def test_cert_manager_injects_the_ca_into_both_configurations(helm: Path) -> None:
    documents = render(
        helm, "webhook.certificates.mode=cert-manager", "webhook.url=https://10.0.0.7:9443"
    )
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        assert one(documents, kind)["metadata"]["annotations"] == {
            "cert-manager.io/inject-ca-from": "hush-system/hush-webhook"
        }
    certificate = one(documents, "Certificate", "hush-webhook")
    assert certificate["spec"]["ipAddresses"] == ["10.0.0.7"]
    assert "hush-webhook.hush-system.svc" in certificate["spec"]["dnsNames"]
    named = one(
        render(
            helm,
            "webhook.certificates.mode=cert-manager",
            "webhook.url=https://hush.example.com",
        ),
        "Certificate",
        "hush-webhook",
    )
    assert named["spec"]["dnsNames"][-1] == "hush.example.com"
    assert "ipAddresses" not in named["spec"]


def test_the_accountant_certificate_from_cert_manager_is_mounted_and_its_ca_published(
    helm: Path,
) -> None:
    documents = render(helm, "accountant.certificates.mode=cert-manager")
    certificate = one(documents, "Certificate", "hush-accountant")
    assert certificate["spec"]["secretName"] == "hush-accountant-tls"
    assert "hush-accountant.hush-system.svc" in certificate["spec"]["dnsNames"]
    # No issuer given: the chart's private CA, rendered although the webhooks are self-signed.
    assert certificate["spec"]["issuerRef"]["name"] == "hush-webhook-ca"
    one(documents, "Issuer", "hush-webhook-ca")
    assert not [
        c for c in kinds(documents, "Certificate") if c["metadata"]["name"] == "hush-webhook"
    ]
    arguments = operator_arguments(documents)
    assert arguments.accountant_certs == "cert-manager"
    assert str(arguments.accountant_tls_cert) == "/etc/hush/accountant-tls/tls.crt"
    assert str(arguments.sidecar_ca_file) == "/etc/hush/accountant-tls/ca.crt"
    volumes = one(documents, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "accountant-tls", "secret": {"secretName": "hush-accountant-tls"}} in volumes
    # Self-signed (the default): no Certificate, no mounted Secret, the operator keeps it.
    default = render(helm)
    assert not kinds(default, "Certificate")
    names = [v["name"] for v in one(default, "Deployment")["spec"]["template"]["spec"]["volumes"]]
    assert "accountant-tls" not in names
    assert operator_arguments(default).accountant_certs == "self-signed"


# -- CRDs --------------------------------------------------------------------------------------


def test_crds_are_templates_kept_on_uninstall(helm: Path) -> None:
    crds = kinds(render(helm), "CustomResourceDefinition")
    assert sorted(crd["metadata"]["name"] for crd in crds) == [
        "dppolicies.hush.dev",
        "privacybudgets.hush.dev",
    ]
    for crd in crds:
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert not kinds(render(helm, "crds.install=false"), "CustomResourceDefinition")


# -- RBAC --------------------------------------------------------------------------------------


def _rules(documents: list[Document], kind: str, name: str) -> list[Document]:
    rules: list[Document] = one(documents, kind, name)["rules"]
    return rules


def _grants(rules: list[Document], group: str, resource: str, verb: str) -> bool:
    return any(
        group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]
        for rule in rules
    )


def test_the_operator_gets_what_each_part_needs_and_no_more(helm: Path) -> None:
    documents = render(helm)
    cluster = _rules(documents, "ClusterRole", "hush-operator")
    # Reconcilers and the only writer of the ledger.
    assert _grants(cluster, "hush.dev", "privacybudgets/status", "update")
    # Rollout controller: watch and server-side apply workloads, watch injected pods.
    for resource in ("deployments", "statefulsets", "daemonsets"):
        assert _grants(cluster, "apps", resource, "watch")
        assert _grants(cluster, "apps", resource, "patch")
        assert not _grants(cluster, "apps", resource, "update")
    assert _grants(cluster, "", "pods", "watch")
    assert _grants(cluster, "authentication.k8s.io", "tokenreviews", "create")
    # Never cluster-wide: writing pods, reading Secrets, anything on webhook configurations
    # beyond get/update by name.
    for verb in ("create", "update", "patch", "delete"):
        assert not _grants(cluster, "", "pods", verb)
    for verb in ("get", "list", "watch"):
        assert not _grants(cluster, "", "secrets", verb)
    for rule in cluster:
        assert "*" not in rule["verbs"], rule
        assert "*" not in rule["resources"], rule
        if "admissionregistration.k8s.io" in rule["apiGroups"]:
            assert rule["verbs"] == ["get", "update"]
            assert rule["resourceNames"] in (["hush-injector"], ["hush-validator"])

    election = one(documents, "Role", "hush-leader-election")
    assert election["metadata"]["namespace"] == NAMESPACE
    assert _grants(election["rules"], "", "pods", "patch")  # the leader's pod label
    assert _grants(election["rules"], "coordination.k8s.io", "leases", "update")
    certificates = one(documents, "Role", "hush-webhook-certificates")
    assert certificates["metadata"]["namespace"] == NAMESPACE
    # The accountant's self-signed certificate: its one Secret by name (create is unnamed).
    accountant = one(documents, "Role", "hush-accountant-certificates")
    assert accountant["metadata"]["namespace"] == NAMESPACE
    assert {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]} in accountant["rules"]
    assert {
        "apiGroups": [""],
        "resources": ["secrets"],
        "resourceNames": ["hush-accountant-tls"],
        "verbs": ["get", "update"],
    } in accountant["rules"]
    assert not [
        role
        for role in kinds(render(helm, "accountant.certificates.mode=cert-manager"), "Role")
        if role["metadata"]["name"] == "hush-accountant-certificates"
    ]

    without_accountant = render(helm, "accountant.enabled=false")
    assert not _grants(
        _rules(without_accountant, "ClusterRole", "hush-operator"),
        "authentication.k8s.io",
        "tokenreviews",
        "create",
    )
    assert not kinds(without_accountant, "Role") or all(
        role["metadata"]["name"] != "hush-leader-election"
        for role in kinds(without_accountant, "Role")
    )


def test_config_maps_only_by_the_ca_name_and_create_is_guarded_by_a_policy(helm: Path) -> None:
    documents = render(helm)
    cluster = _rules(documents, "ClusterRole", "hush-operator")
    config_maps = [rule for rule in cluster if "configmaps" in rule["resources"]]
    assert config_maps == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["hush-accountant-ca"],
            "verbs": ["get", "patch", "update"],
        },
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]},
    ]
    # What RBAC cannot name (create) and cannot narrow (a patch to one field) is refused by
    # ValidatingAdmissionPolicies bound to deny for this ServiceAccount.
    policies_ = {p["metadata"]["name"]: p for p in kinds(documents, "ValidatingAdmissionPolicy")}
    operator = "'system:serviceaccount:" + NAMESPACE + ":hush'"
    for name in ("hush-operator-config-maps", "hush-operator-workloads"):
        (condition,) = policies_[name]["spec"]["matchConditions"]
        assert condition["expression"] == f"request.userInfo.username == {operator}"
    bindings = {
        b["metadata"]["name"]: b for b in kinds(documents, "ValidatingAdmissionPolicyBinding")
    }
    assert bindings["hush-operator-config-maps"]["spec"]["validationActions"] == ["Deny"]
    assert bindings["hush-operator-workloads"]["spec"]["validationActions"] == ["Deny"]


# -- the operator's NetworkPolicy ---------------------------------------------------------------


def _ingress_ports(policy: Document) -> list[tuple[str, ...]]:
    return [tuple(port["port"] for port in rule["ports"]) for rule in policy["spec"]["ingress"]]


def test_a_network_policy_admits_only_the_webhook_accountant_and_metrics_ports(
    helm: Path,
) -> None:
    documents = render(helm)
    policy = one(documents, "NetworkPolicy")
    assert policy["metadata"]["namespace"] == NAMESPACE
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    # The operator's pods, exactly as the Deployment labels them.
    deployment = one(documents, "Deployment")
    template_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector == deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= template_labels.items()
    assert _ingress_ports(policy) == [("webhook",), ("accountant",), ("metrics",)]
    # Each named port is one the operator's container declares (the health port is not open:
    # the kubelet probes from the node, which NetworkPolicies do not block).
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    declared = {port["name"] for port in container["ports"]}
    assert {"webhook", "accountant", "metrics"} <= declared
    webhook, accountant, metrics = policy["spec"]["ingress"]
    assert "from" not in webhook  # the apiserver, from wherever it runs
    assert "from" not in accountant  # sidecars in every namespace, authenticated by token
    assert metrics["from"] == [
        {
            "namespaceSelector": {
                "matchExpressions": [
                    {
                        "key": "kubernetes.io/metadata.name",
                        "operator": "In",
                        "values": ["monitoring"],
                    }
                ]
            }
        }
    ]
    assert all(
        port["protocol"] == "TCP" for rule in policy["spec"]["ingress"] for port in rule["ports"]
    )


def test_the_metrics_namespaces_are_configurable_and_the_policy_switchable(helm: Path) -> None:
    selector = {"matchLabels": {"team": "observability"}}
    policy = one(
        render(
            helm, json_values=(f"networkPolicy.metrics.namespaceSelector={json.dumps(selector)}",)
        ),
        "NetworkPolicy",
    )
    # The selector replaces the default names rather than merging with them.
    assert policy["spec"]["ingress"][-1]["from"] == [{"namespaceSelector": selector}]
    named = one(
        render(helm, json_values=('networkPolicy.metrics.namespaces=["prom","obs"]',)),
        "NetworkPolicy",
    )
    (expression,) = named["spec"]["ingress"][-1]["from"][0]["namespaceSelector"]["matchExpressions"]
    assert expression["values"] == ["prom", "obs"]
    everyone = one(
        render(helm, json_values=("networkPolicy.metrics.namespaceSelector={}",)), "NetworkPolicy"
    )
    assert everyone["spec"]["ingress"][-1]["from"] == [{"namespaceSelector": {}}]
    assert kinds(render(helm, "networkPolicy.enabled=false"), "NetworkPolicy") == []
    # Ports that are not served are not opened.
    narrow = one(render(helm, "metrics.enabled=false", "accountant.enabled=false"), "NetworkPolicy")
    assert _ingress_ports(narrow) == [("webhook",)]


def test_only_the_operators_service_account_is_bound_so_sidecars_get_nothing(
    helm: Path,
) -> None:
    documents = render(helm, "operator.replicas=2")
    bindings = kinds(documents, "ClusterRoleBinding") + kinds(documents, "RoleBinding")
    assert len(bindings) == 4  # operator, leader election, webhook and accountant certificates
    for binding in bindings:
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "hush", "namespace": NAMESPACE}
        ]
    (account,) = kinds(documents, "ServiceAccount")
    assert account["metadata"]["name"] == "hush"


# -- monitoring --------------------------------------------------------------------------------


def _exposed_names(*modules: ModuleType) -> set[str]:
    """Every series name the metrics of ``modules`` expose."""
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
    }
    names = set()
    for module in modules:
        for value in vars(module).values():
            if isinstance(value, prometheus_client.metrics.MetricWrapperBase):
                for family in value.describe():
                    names |= {family.name + suffix for suffix in suffixes[family.type]}
    return names


KNOWN_METRICS = _exposed_names(metrics, sidecar_metrics)


def _metric_names(text: str) -> set[str]:
    return set(re.findall(r"\bhush_[a-z_]+", text))


def test_prometheus_operator_objects_need_its_api(helm: Path) -> None:
    without = render(helm)
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule"):
        assert not kinds(without, kind)
    with_api = render(helm, api_versions=(PROMETHEUS_OPERATOR,))
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule"):
        assert len(kinds(with_api, kind)) == 1
    off = render(
        helm,
        "monitoring.serviceMonitor.enabled=false",
        "monitoring.podMonitor.enabled=false",
        "monitoring.prometheusRule.enabled=false",
        api_versions=(PROMETHEUS_OPERATOR,),
    )
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule"):
        assert not kinds(off, kind)


def test_the_service_monitor_scrapes_every_replica_keeping_the_budgets_namespace(
    helm: Path,
) -> None:
    documents = render(helm, api_versions=(PROMETHEUS_OPERATOR,))
    monitor = one(documents, "ServiceMonitor")
    service = one(documents, "Service", "hush-metrics")
    labels = service["metadata"]["labels"]
    assert all(
        labels[key] == value for key, value in monitor["spec"]["selector"]["matchLabels"].items()
    )
    assert (
        service["spec"]["selector"]
        == one(documents, "Deployment")["spec"]["selector"]["matchLabels"]
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["honorLabels"] is True
    pod_monitor = one(documents, "PodMonitor")
    (sidecar_endpoint,) = pod_monitor["spec"]["podMetricsEndpoints"]
    assert sidecar_endpoint["port"] == "hush-admin"  # hush.injection.sidecar's admin port


def test_the_four_alerts_use_metrics_that_exist(helm: Path) -> None:
    plans = [{"namespace": "census", "budget": "census-2020", "plannedEpsilonPerDay": 0.2}]
    documents = render(
        helm,
        "monitoring.prometheusRule.alertLabels.team=privacy",
        api_versions=(PROMETHEUS_OPERATOR,),
        json_values=(f"monitoring.prometheusRule.burnRate.budgets={json.dumps(plans)}",),
    )
    rules = [
        rule
        for group in one(documents, "PrometheusRule")["spec"]["groups"]
        for rule in group["rules"]
    ]
    assert [rule["alert"] for rule in rules] == [
        "HushBudgetNearExhaustion",
        "HushBudgetBurnRateHigh",
        "HushBudgetBurnRateHigh",
        "HushAdmissionWebhookErrors",
        "HushWebhookCertificateNearExpiry",
    ]
    for rule in rules:
        used = _metric_names(rule["expr"])
        assert used, rule["alert"]
        assert used <= KNOWN_METRICS, used - KNOWN_METRICS
        assert rule["labels"]["team"] == "privacy"
        assert "{{ $labels." in rule["annotations"]["summary"]  # Prometheus templates survive
    override, default = rules[1], rules[2]
    assert 'budget="census-2020"' in override["expr"]
    assert "* 86400 > 4 * 0.2" in override["expr"]
    overridden = 'hush_accountant_epsilon_charged_total{namespace="census", budget="census-2020"}'
    assert f"unless on (namespace, budget) {overridden}" in default["expr"]
    assert "* 86400 > 4 * 1" in default["expr"]
    assert ">= 0.9" in rules[0]["expr"]
    assert "< 21 * 86400" in rules[4]["expr"]


def test_the_grafana_dashboard_charts_metrics_that_exist(helm: Path) -> None:
    documents = render(helm, "monitoring.grafanaDashboard.namespace=grafana")
    config_map = one(documents, "ConfigMap", "hush-dashboard")
    assert config_map["metadata"]["namespace"] == "grafana"
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["hush.json"])
    assert dashboard["uid"] == "hush-overview"
    expressions = [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    ]
    used = set().union(*(_metric_names(expression) for expression in expressions))
    assert used <= KNOWN_METRICS, used - KNOWN_METRICS
    for wanted in (
        "hush_budget_epsilon_remaining",
        "hush_accountant_epsilon_charged_total",
        "hush_admission_errors_total",
        "hush_webhook_certificate_expiry_timestamp_seconds",
        "hush_sidecar_requests_total",
    ):
        assert wanted in used
    assert not kinds(render(helm, "monitoring.grafanaDashboard.enabled=false"), "ConfigMap")


def test_every_namespaced_object_is_in_the_release_namespace(helm: Path) -> None:
    cluster_scoped = {
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    }
    for document in render(helm, "operator.replicas=2", api_versions=(PROMETHEUS_OPERATOR,)):
        if document["kind"] in cluster_scoped:
            assert "namespace" not in document["metadata"], document["metadata"]
        else:
            assert document["metadata"]["namespace"] == NAMESPACE, document["metadata"]
