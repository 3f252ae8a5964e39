"""The ValidatingAdmissionPolicies: their shape, their texts, and the chart's copy.

What the CEL *does* is checked against the real apiserver (e2e/test_admission_policies.py,
which compares every denial with ``validation.describe``); here: structure, scoping, that the
messages are built from the same templates, and that the chart renders to the same objects.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from hush.admission import policies, validation
from tests.conftest import REPO_ROOT

SETTINGS = policies.PolicySettings(
    name_prefix="hush",
    hush_namespace="hush-system",
    operator_service_account="hush-operator",
    enforcement_label_groups=("platform-admins", "sre"),
)
CHART_TEMPLATE = REPO_ROOT / "charts" / "hush" / "templates" / policies.CHART_TEMPLATE_NAME


def by_kind(manifests: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [manifest for manifest in manifests if manifest["kind"] == kind]


def named(manifests: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = (m for m in by_kind(manifests, kind) if m["metadata"]["name"] == name)
    return found


def test_policies_come_first_then_their_bindings() -> None:
    manifests = policies.all_manifests(SETTINGS)
    kinds = [manifest["kind"] for manifest in manifests]
    assert kinds == ["ValidatingAdmissionPolicy"] * 7 + ["ValidatingAdmissionPolicyBinding"] * 13
    assert {manifest["apiVersion"] for manifest in manifests} == {"admissionregistration.k8s.io/v1"}
    names = [manifest["metadata"]["name"] for manifest in manifests]
    assert names == [
        "hush-workloads",
        "hush-cronjobs",
        "hush-pods",
        "hush-namespace-enforcement-label",
        "hush-injected-pods",
        "hush-operator-config-maps",
        "hush-operator-workloads",
        "hush-workloads-enforce",
        "hush-workloads-warn",
        "hush-workloads-audit",
        "hush-cronjobs-enforce",
        "hush-cronjobs-warn",
        "hush-cronjobs-audit",
        "hush-pods-enforce",
        "hush-pods-warn",
        "hush-pods-audit",
        "hush-namespace-enforcement-label",
        "hush-injected-pods",
        "hush-operator-config-maps",
        "hush-operator-workloads",
    ]


def test_workload_policies_cover_the_seven_kinds_on_create_and_update() -> None:
    covered = set()
    for policy in by_kind(policies.all_manifests(SETTINGS), "ValidatingAdmissionPolicy")[:3]:
        for rule in policy["spec"]["matchConstraints"]["resourceRules"]:
            assert rule["operations"] == ["CREATE", "UPDATE"]
            assert rule["apiVersions"] == ["v1"]
            covered |= {(rule["apiGroups"][0], resource) for resource in rule["resources"]}
    assert covered == {(kind.group, kind.plural) for kind in validation.WORKLOAD_KINDS}


def test_workload_policies_never_match_system_or_hush_namespaces() -> None:
    for policy in by_kind(policies.all_manifests(SETTINGS), "ValidatingAdmissionPolicy")[:3]:
        (expression,) = policy["spec"]["matchConstraints"]["namespaceSelector"]["matchExpressions"]
        assert expression == {
            "key": "kubernetes.io/metadata.name",
            "operator": "NotIn",
            "values": ["kube-system", "kube-public", "kube-node-lease", "hush-system"],
        }
        conditions = {c["name"]: c["expression"] for c in policy["spec"]["matchConditions"]}
        assert "system:serviceaccount:kube-system:" in conditions["not-a-system-controller"]
        assert "system:kube-controller-manager" in conditions["not-a-system-controller"]
        assert conditions["not-being-deleted"] == "!has(object.metadata.deletionTimestamp)"
        assert policy["spec"]["failurePolicy"] == "Fail"


@pytest.mark.parametrize(
    ("mode", "actions"), [("enforce", ["Deny"]), ("warn", ["Warn"]), ("audit", ["Audit"])]
)
def test_each_mode_has_a_binding_per_workload_policy(mode: str, actions: list[str]) -> None:
    bindings = [
        binding
        for binding in by_kind(policies.all_manifests(SETTINGS), "ValidatingAdmissionPolicyBinding")
        if binding["metadata"]["name"].endswith(f"-{mode}")
    ]
    assert [binding["spec"]["policyName"] for binding in bindings] == [
        "hush-workloads",
        "hush-cronjobs",
        "hush-pods",
    ]
    for binding in bindings:
        assert binding["spec"]["validationActions"] == actions
        assert binding["spec"]["matchResources"] == {
            "namespaceSelector": {
                "matchExpressions": [
                    {"key": "hush.dev/enforcement", "operator": "In", "values": [mode]}
                ]
            }
        }


def variables(policy: dict[str, Any]) -> dict[str, str]:
    return {variable["name"]: variable["expression"] for variable in policy["spec"]["variables"]}


@pytest.mark.parametrize(
    ("index", "template"),
    [
        (0, "object.spec.template"),
        (1, "object.spec.jobTemplate.spec.template"),
        (2, "object"),
    ],
)
def test_each_policy_reads_the_pod_template_where_its_kinds_keep_it(
    index: int, template: str
) -> None:
    policy = policies.all_manifests(SETTINGS)[index]
    assert variables(policy)["containers"] == (
        f"{template}.spec.containers + "
        f"(has({template}.spec.initContainers) ? {template}.spec.initContainers : [])"
    )
    (validation_rule,) = policy["spec"]["validations"]
    assert validation_rule["expression"] == "size(variables.problems) == 0"
    assert validation_rule["messageExpression"] == (
        "variables.reference + ': ' + variables.problems.join('; ')"
    )


def cel_literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


@pytest.mark.parametrize("index", [0, 1, 2])
def test_messages_are_the_python_texts(index: int) -> None:
    """Literal-only messages appear verbatim; the others keep their literal parts."""
    shape = policies.TEMPLATE_SHAPES[index]
    problems = variables(policies.all_manifests(SETTINGS)[index])["problems"]
    locations = ["metadata.labels"]
    if not shape.is_pod:
        locations.append(f"{shape.template_metadata_path}.labels")
    for location in locations:
        for template in (validation.MISSING_TEAM, validation.MISSING_SENSITIVITY):
            assert cel_literal(template.text.format(location=location)) in problems
        invalid = validation.INVALID_SENSITIVITY.text.format(location=location, value="@")
        before, after = invalid.split("@")
        assert cel_literal(before) in problems
        assert cel_literal(after) in problems
    assert ("on metadata.labels but" in problems) is not shape.is_pod
    assert "c.image.find('^([^@/]*/)*[^@/:]*')" in problems
    annotations = f"{shape.template_metadata_path}.annotations"
    assert f"to {annotations})'" in problems


def test_the_namespace_guard_names_the_operator_and_records_every_change() -> None:
    manifests = policies.all_manifests(SETTINGS)
    policy = by_kind(manifests, "ValidatingAdmissionPolicy")[3]
    binding = named(
        manifests, "ValidatingAdmissionPolicyBinding", "hush-namespace-enforcement-label"
    )
    assert policy["spec"]["matchConstraints"] == {
        "resourceRules": [
            {
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "operations": ["CREATE", "UPDATE"],
                "resources": ["namespaces"],
            }
        ]
    }
    assert variables(policy)["mayChange"] == (
        "request.userInfo.username == 'system:serviceaccount:hush-system:hush-operator' || "
        'request.userInfo.groups.exists(group, group in ["platform-admins","sre"])'
    )
    guard, values = policy["spec"]["validations"]
    assert guard["expression"] == "!variables.changed || variables.mayChange"
    assert "(system:serviceaccount:hush-system:hush-operator)" in guard["messageExpression"]
    assert "['enforce', 'warn', 'audit']" in values["expression"]
    (audit_annotation,) = policy["spec"]["auditAnnotations"]
    assert audit_annotation["key"] == "enforcement-label-change"
    # Bound everywhere (namespaces are cluster-scoped) and always denying.
    assert binding["spec"] == {
        "policyName": "hush-namespace-enforcement-label",
        "validationActions": ["Deny"],
    }


def test_cel_strings_are_escaped() -> None:
    settings = policies.PolicySettings(
        hush_namespace="ns", operator_service_account="it's", name_prefix="x"
    )
    policy = policies.build_namespace_policy(settings)
    assert "'system:serviceaccount:ns:it\\'s'" in variables(policy)["mayChange"]


# -- the chart's copy ------------------------------------------------------------------------


def test_the_chart_template_matches_the_builders() -> None:
    actual = CHART_TEMPLATE.read_text(encoding="utf-8")
    assert actual == policies.render_chart_template(), (
        f"{CHART_TEMPLATE.name} drifted: run `make manifests`"
    )


def render_like_helm(release_namespace: str, service_account: str, groups: list[str]) -> str:
    """The chart template with its Helm variables set, as `helm template` would."""
    text = policies.render_chart_template()
    _, _, body = text.partition("{{- $enforcementLabelGroups")
    body = body.partition("\n")[2]  # the rest of the variable's line
    assert body.endswith("{{- end }}\n")
    values = {
        "prefix": "hush",
        "namespace": release_namespace,
        "serviceAccount": service_account,
        "enforcementLabelGroups": json.dumps(groups, separators=(",", ":")),
    }
    rendered = re.sub(r"\{\{\$(\w+)\}\}", lambda match: values[match.group(1)], body)
    rendered = rendered.removesuffix("{{- end }}\n")
    assert "{{" not in rendered, "a template action the test does not know"
    return rendered


def test_the_chart_renders_to_exactly_what_the_builders_make_for_a_release() -> None:
    rendered = render_like_helm("hush-system", "hush-operator", ["platform-admins", "sre"])
    documents = [document for document in yaml.safe_load_all(rendered) if document]
    assert documents == policies.all_manifests(SETTINGS)


def test_the_chart_reads_only_documented_values() -> None:
    text = CHART_TEMPLATE.read_text(encoding="utf-8")
    used = set(re.findall(r"\.Values\.([\w.]+)", text))
    values = yaml.safe_load((REPO_ROOT / "charts" / "hush" / "values.yaml").read_text())
    for dotted in used:
        node: Any = values
        for key in dotted.split("."):
            assert key in node, f".Values.{dotted} is not in values.yaml"
            node = node[key]
    assert used == {"admissionPolicies.enabled", "admissionPolicies.enforcementLabelGroups"}


def test_annotated_pods_without_the_sidecar_are_refused_outside_excluded_namespaces() -> None:
    manifests = policies.all_manifests(SETTINGS)
    policy = by_kind(manifests, "ValidatingAdmissionPolicy")[4]
    binding = named(manifests, "ValidatingAdmissionPolicyBinding", "hush-injected-pods")
    assert policy["metadata"]["name"] == "hush-injected-pods"
    (condition,) = policy["spec"]["matchConditions"]
    assert "'hush.dev/policy' in object.metadata.annotations" in condition["expression"]
    assert "'kube-system'" in condition["expression"]
    assert "'hush-system'" in condition["expression"]
    (check,) = policy["spec"]["validations"]
    assert "c.name == 'hush-sidecar'" in check["expression"]
    assert "did not run" in check["messageExpression"]
    assert binding["spec"] == {"policyName": "hush-injected-pods", "validationActions": ["Deny"]}


# -- least privilege for the operator --------------------------------------------------------

OPERATOR = "'system:serviceaccount:hush-system:hush-operator'"


def test_the_operator_may_create_and_change_only_the_ca_config_map() -> None:
    manifests = policies.all_manifests(SETTINGS)
    policy = named(manifests, "ValidatingAdmissionPolicy", "hush-operator-config-maps")
    binding = named(manifests, "ValidatingAdmissionPolicyBinding", "hush-operator-config-maps")
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert rule["resources"] == ["configmaps"]
    assert rule["operations"] == ["CREATE", "UPDATE", "DELETE"]
    assert "namespaceSelector" not in policy["spec"]["matchConstraints"]  # kube-system too
    (condition,) = policy["spec"]["matchConditions"]
    assert condition["expression"] == f"request.userInfo.username == {OPERATOR}"
    (check,) = policy["spec"]["validations"]
    assert check["expression"] == (
        "request.operation != 'DELETE' && object.metadata.name == 'hush-accountant-ca'"
    )
    assert (
        "may only create or change ConfigMaps named hush-accountant-ca"
        in (check["messageExpression"])
    )
    assert binding["spec"] == {
        "policyName": "hush-operator-config-maps",
        "validationActions": ["Deny"],
    }


def test_the_ca_config_map_name_is_the_one_sidecars_mount() -> None:
    from hush.admission import mutation

    policy = policies.build_operator_config_maps_policy(SETTINGS)
    assert (
        f"'{mutation.ACCOUNTANT_CA_CONFIG_MAP}'" in policy["spec"]["validations"][0]["expression"]
    )


def test_the_rollout_annotation_is_the_one_the_rollout_controller_writes() -> None:
    from hush.rollout import trigger

    assert policies.ROLLOUT_ANNOTATION == trigger.ROLLOUT_ANNOTATION


def test_the_operator_may_change_only_the_rollout_annotation_of_a_workload() -> None:
    manifests = policies.all_manifests(SETTINGS)
    policy = named(manifests, "ValidatingAdmissionPolicy", "hush-operator-workloads")
    binding = named(manifests, "ValidatingAdmissionPolicyBinding", "hush-operator-workloads")
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert rule["apiGroups"] == ["apps"]
    assert rule["resources"] == ["deployments", "statefulsets", "daemonsets"]
    assert rule["operations"] == ["UPDATE"]
    (condition,) = policy["spec"]["matchConditions"]
    assert condition["expression"] == f"request.userInfo.username == {OPERATOR}"
    checks = policy["spec"]["validations"]
    # Every part of the object is compared, each leaving out only what may differ.
    assert [check["expression"] for check in checks] == [
        f"variables.new{part}.all(k, k in [{skip}] || (k in variables.old{part} && "
        f"variables.new{part}[k] == variables.old{part}[k])) && "
        f"variables.old{part}.all(k, k in [{skip}] || k in variables.new{part})"
        for part, skip in [
            ("Metadata", "'resourceVersion', 'generation', 'managedFields'"),
            ("Spec", "'template'"),
            ("Template", "'metadata'"),
            ("TemplateMetadata", "'annotations'"),
            ("TemplateAnnotations", "'hush.dev/policy-rollout'"),
        ]
    ]
    assert variables(policy)["newTemplateAnnotations"] == (
        "has(object.spec.template.metadata) && has(object.spec.template.metadata.annotations) "
        "? dyn(object.spec.template.metadata.annotations) : dyn({})"
    )
    assert all(
        "may change only the pod template\\'s annotation hush.dev/policy-rollout"
        in check["messageExpression"]
        for check in checks
    )
    assert binding["spec"] == {
        "policyName": "hush-operator-workloads",
        "validationActions": ["Deny"],
    }
