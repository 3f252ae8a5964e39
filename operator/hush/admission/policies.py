"""ValidatingAdmissionPolicies: the static admission rules, evaluated inside the apiserver.

Rules that read only the object being written need no webhook: CEL in a
ValidatingAdmissionPolicy (``admissionregistration.k8s.io/v1``, GA since Kubernetes 1.30) runs
in the apiserver, with no network hop, no serving certificate and no Hush pod on the path,
so it keeps working while the operator is down (invariant 8). This module builds them:

- three workload policies, one per place a pod template lives (``spec.template`` of
  Deployment, StatefulSet, DaemonSet, ReplicaSet and Job; ``spec.jobTemplate.spec.template``
  of CronJob; a bare Pod is its own template), so each type-checks against its kinds'
  schemas without warnings. Each checks the static rules of ``hush.admission.validation``
  and denies with one message naming the object and every problem with its fix — the same
  text, in the same order, that ``validation.static_violations`` produces, because both are
  built from the same ``MessageTemplate``\\ s;
- per workload policy, three bindings that select namespaces by ``hush.dev/enforcement``:
  ``enforce`` -> ``[Deny]``, ``warn`` -> ``[Warn]``, ``audit`` -> ``[Audit]``;
- a namespace policy (and its binding, always ``[Deny]``) that lets only the operator's
  ServiceAccount (and optional, explicitly configured groups) add, change or remove the
  ``hush.dev/enforcement`` label, refuses values other than the three modes, and records
  every change in the audit log;
- least privilege for the operator itself (each with a ``[Deny]`` binding, matched only for
  the operator's ServiceAccount): RBAC cannot name the object of a ``create``, nor limit a
  ``patch`` to one field, so ``hush-operator-config-maps`` lets it create or change only
  ConfigMaps named ``hush-accountant-ca``, and ``hush-operator-workloads`` lets it change
  nothing in a Deployment, StatefulSet or DaemonSet but the pod template's
  ``hush.dev/policy-rollout`` annotation (the object and the old object compared with that
  annotation left out). A compromised operator cannot rewrite ``kube-system/aws-auth`` or
  swap a workload's image.

Workload policies never match kube-system, kube-public, kube-node-lease or Hush's own
namespace, nor writes by the built-in controllers or to objects being deleted (see
``validation.is_system_controller``). The rules that need lookups stay in the webhook:
docs/design/0011-admission-rules-vap-vs-webhook.md says which rule lives where and why.

``render_chart_template`` writes the Helm chart's copy (``make manifests``): the same
builders, with Helm variables where the release's names go.
"""

from __future__ import annotations

import dataclasses
import json
import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import yaml

from hush.admission import mutation, validation

Manifest = dict[str, Any]

API_VERSION: Final = "admissionregistration.k8s.io/v1"
PART_OF_LABELS: Final = {"app.kubernetes.io/part-of": "hush"}

# validationActions of the binding for each namespace mode.
VALIDATION_ACTIONS: Final[Mapping[validation.EnforcementMode, tuple[str, ...]]] = {
    "enforce": ("Deny",),
    "warn": ("Warn",),
    "audit": ("Audit",),
}

ENFORCEMENT_LABEL_CHANGE_AUDIT_KEY: Final = "enforcement-label-change"
# The one pod-template annotation the rollout controller writes (hush.rollout.trigger, which
# this layer may not import; a unit test keeps the two equal).
ROLLOUT_ANNOTATION: Final = "hush.dev/policy-rollout"
# Fields the apiserver itself changes on every write: never compared.
SERVER_SET_METADATA: Final = ("resourceVersion", "generation", "managedFields")
CHART_TEMPLATE_NAME: Final = "validating-admission-policies.yaml"


@dataclasses.dataclass(frozen=True, kw_only=True)
class PolicySettings:
    """What differs between installations: object names and who the operator is."""

    # Prefix of every policy and binding name (cluster-scoped: one Hush release per prefix).
    name_prefix: str = "hush"
    # Hush's own namespace: never enforced, and where the operator's ServiceAccount lives.
    hush_namespace: str
    operator_service_account: str
    # Groups that may also change the enforcement label (break-glass for platform admins);
    # their changes are allowed and, like every change, recorded in the audit log.
    enforcement_label_groups: tuple[str, ...] = ()

    @property
    def operator_username(self) -> str:
        return f"system:serviceaccount:{self.hush_namespace}:{self.operator_service_account}"

    def enforcement_label_groups_cel(self) -> str:
        """The groups as a CEL list literal, written as Helm's ``toJson`` writes it.

        JSON strings are valid CEL strings; the chart substitutes its own ``toJson`` here.
        """
        return json.dumps(list(self.enforcement_label_groups), separators=(",", ":"))


# -- CEL text helpers ------------------------------------------------------------------------


def _cel_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


# A pod that asks for a DP policy (for injection). The injector's webhook entry uses it as
# its match condition (``hush.admission.webhooks``), and the ``injected-pods`` policy below
# as the first part of its own.
ASKS_FOR_A_POLICY: Final = (
    "has(object.metadata.annotations) && "
    f"{_cel_string(validation.POLICY_ANNOTATION)} in object.metadata.annotations"
)


def _cel_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(_cel_string(value) for value in values) + "]"


@dataclasses.dataclass(frozen=True)
class _Cel:
    """A CEL expression to splice into a message, as opposed to literal text."""

    code: str


def _cel_message(template: validation.MessageTemplate, **values: str | _Cel) -> str:
    """``template.text`` as a CEL string expression: literals quoted, ``_Cel`` values spliced.

    Literal values are substituted in Python, so the result reads like the text that
    ``validation`` formats for the same object.
    """
    parts: list[str] = []
    pending = ""
    for literal, field, _, _ in string.Formatter().parse(template.text):
        pending += literal
        if field is None:
            continue
        value = values[field]
        if isinstance(value, _Cel):
            if pending:
                parts.append(_cel_string(pending))
                pending = ""
            parts.append(value.code)
        else:
            pending += value
    if pending:
        parts.append(_cel_string(pending))
    return " + ".join(parts)


def _metadata_map_or_empty(metadata: str, field: str) -> str:
    """``metadata.labels`` (or ``.annotations``), or an empty map when it is not set."""
    owner, _, _ = metadata.rpartition(".")
    guards = [f"has({metadata}.{field})"]
    if owner != "object":  # object.metadata always exists; a template's may not
        guards.insert(0, f"has({metadata})")
    return f"{' && '.join(guards)} ? {metadata}.{field} : {{}}"


def _value_or_empty(map_variable: str, key: str) -> str:
    return f"{_cel_string(key)} in {map_variable} ? {map_variable}[{_cel_string(key)}] : ''"


# -- the workload policies -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _TemplateShape:
    """Workload kinds that keep their pod template at the same path."""

    suffix: str
    kinds: tuple[validation.WorkloadKind, ...]

    @property
    def template(self) -> str:
        """The CEL path of the pod template: ``object.spec.template``, or ``object``."""
        return ".".join(("object", *self.kinds[0].template_path))

    @property
    def is_pod(self) -> bool:
        return self.kinds[0].is_pod

    @property
    def template_metadata_path(self) -> str:
        return self.kinds[0].template_metadata_path


def _template_shapes() -> tuple[_TemplateShape, ...]:
    suffixes = {("spec", "template"): "workloads", (): "pods"}
    grouped: dict[tuple[str, ...], list[validation.WorkloadKind]] = {}
    for kind in validation.WORKLOAD_KINDS:
        grouped.setdefault(kind.template_path, []).append(kind)
    return tuple(
        _TemplateShape(suffixes.get(path, f"{kinds[0].plural}"), tuple(kinds))
        for path, kinds in grouped.items()
    )


TEMPLATE_SHAPES: Final = _template_shapes()


def workload_policy_name(settings: PolicySettings, shape_suffix: str) -> str:
    return f"{settings.name_prefix}-{shape_suffix}"


def _resource_rules(kinds: Sequence[validation.WorkloadKind]) -> list[Manifest]:
    by_group: dict[tuple[str, str], list[str]] = {}
    for kind in kinds:
        by_group.setdefault((kind.group, kind.version), []).append(kind.plural)
    return [
        {
            "apiGroups": [group],
            "apiVersions": [version],
            "operations": ["CREATE", "UPDATE"],
            "resources": plurals,
        }
        for (group, version), plurals in by_group.items()
    ]


def _label_problems(prefix: str, location: str) -> list[str]:
    """CEL lists of the label problems on one set of labels (``workload`` or ``template``)."""
    team, sensitivity = f"variables.{prefix}Team", f"variables.{prefix}Sensitivity"
    missing_team = _cel_message(validation.MISSING_TEAM, location=location)
    missing_sensitivity = _cel_message(validation.MISSING_SENSITIVITY, location=location)
    invalid_sensitivity = _cel_message(
        validation.INVALID_SENSITIVITY, location=location, value=_Cel(sensitivity)
    )
    return [
        f"({team} == '' ? [{missing_team}] : [])",
        f"({sensitivity} == '' ? [{missing_sensitivity}] : "
        f"{sensitivity} in {_cel_list(validation.SENSITIVITIES)} ? [] : [{invalid_sensitivity}])",
    ]


def _workload_variables(shape: _TemplateShape) -> list[Manifest]:
    template = shape.template
    template_labels_location = f"{shape.template_metadata_path}.labels"
    variables: list[tuple[str, str]] = [
        (
            "reference",
            "request.kind.kind + ' ' + request.namespace + '/' + "
            "(has(object.metadata.name) && object.metadata.name != '' ? object.metadata.name : "
            "(has(object.metadata.generateName) ? object.metadata.generateName : '') "
            "+ '<generated>')",
        ),
        ("workloadLabels", _metadata_map_or_empty("object.metadata", "labels")),
        ("workloadTeam", _value_or_empty("variables.workloadLabels", validation.TEAM_LABEL)),
        (
            "workloadSensitivity",
            _value_or_empty("variables.workloadLabels", validation.SENSITIVITY_LABEL),
        ),
    ]
    sensitivities = ["variables.workloadSensitivity"]
    problems = _label_problems("workload", "metadata.labels")
    if not shape.is_pod:
        variables += [
            ("templateLabels", _metadata_map_or_empty(f"{template}.metadata", "labels")),
            ("templateTeam", _value_or_empty("variables.templateLabels", validation.TEAM_LABEL)),
            (
                "templateSensitivity",
                _value_or_empty("variables.templateLabels", validation.SENSITIVITY_LABEL),
            ),
        ]
        sensitivities.append("variables.templateSensitivity")
        problems += _label_problems("template", template_labels_location)
        for label, name in (
            (validation.TEAM_LABEL, "Team"),
            (validation.SENSITIVITY_LABEL, "Sensitivity"),
        ):
            on_workload, on_pods = f"variables.workload{name}", f"variables.template{name}"
            differ = _cel_message(
                validation.LABELS_DIFFER,
                label=label,
                workload_value=_Cel(on_workload),
                template_value=_Cel(on_pods),
                location=template_labels_location,
            )
            problems.append(
                f"({on_workload} != '' && {on_pods} != '' && {on_workload} != {on_pods} ? "
                f"[{differ}] : [])"
            )
    found = "[" + ", ".join(sensitivities) + "]"
    strictest = "''"
    for sensitivity in validation.SENSITIVE:  # confidential, then restricted: restricted wins
        strictest = (
            f"{_cel_string(sensitivity)} in {found} ? {_cel_string(sensitivity)} : ({strictest})"
        )
    variables += [
        ("sensitivity", strictest),
        ("templateAnnotations", _metadata_map_or_empty(f"{template}.metadata", "annotations")),
        ("policy", _value_or_empty("variables.templateAnnotations", validation.POLICY_ANNOTATION)),
        (
            "containers",
            f"{template}.spec.containers + "
            f"(has({template}.spec.initContainers) ? {template}.spec.initContainers : [])",
        ),
        (
            "unpinned",
            "variables.containers.filter(c, has(c.image) && c.image != '' && "
            f"!c.image.matches({_cel_string(validation.DIGEST_PATTERN)}))",
        ),
    ]
    not_pinned = _cel_message(
        validation.IMAGE_NOT_PINNED,
        container=_Cel("c.name"),
        image=_Cel("c.image"),
        repository=_Cel(f"c.image.find({_cel_string(validation.REPOSITORY_PATTERN)})"),
        sensitivity=_Cel("variables.sensitivity"),
    )
    missing_policy = _cel_message(
        validation.MISSING_POLICY,
        location=f"{shape.template_metadata_path}.annotations",
        sensitivity=_Cel("variables.sensitivity"),
    )
    problems += [
        f"(variables.sensitivity == '' ? [] : variables.unpinned.map(c, {not_pinned}))",
        f"(variables.sensitivity != '' && variables.policy == '' ? [{missing_policy}] : [])",
    ]
    variables.append(("problems", " +\n".join(problems)))
    return [{"name": name, "expression": expression} for name, expression in variables]


def build_workload_policy(settings: PolicySettings, shape: _TemplateShape) -> Manifest:
    """The ValidatingAdmissionPolicy for the workload kinds of one template shape."""
    kinds = ", ".join(kind.kind for kind in shape.kinds)
    system_controller = (
        f"request.userInfo.username.startsWith("
        f"{_cel_string(validation.SYSTEM_CONTROLLER_SERVICE_ACCOUNT_PREFIX)}) || "
        f"request.userInfo.username == {_cel_string(validation.SYSTEM_CONTROLLER_MANAGER_USER)}"
    )
    return {
        "apiVersion": API_VERSION,
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {
            "name": workload_policy_name(settings, shape.suffix),
            "labels": dict(PART_OF_LABELS),
            "annotations": {
                "hush.dev/description": (
                    f"{kinds}: labels {validation.TEAM_LABEL} and {validation.SENSITIVITY_LABEL} "
                    "on the object and its pod template; digest-pinned images and "
                    f"{validation.POLICY_ANNOTATION} for confidential and restricted"
                )
            },
        },
        "spec": {
            # CEL errors count as violations and follow each binding's action: a broken
            # expression denies only in `enforce` namespaces, and no network is involved.
            "failurePolicy": "Fail",
            "matchConstraints": {
                "namespaceSelector": {
                    "matchExpressions": [
                        {
                            "key": "kubernetes.io/metadata.name",
                            "operator": "NotIn",
                            "values": list(validation.excluded_namespaces(settings.hush_namespace)),
                        }
                    ]
                },
                "resourceRules": _resource_rules(shape.kinds),
            },
            "matchConditions": [
                {"name": "not-a-system-controller", "expression": f"!({system_controller})"},
                {
                    "name": "not-being-deleted",
                    "expression": "!has(object.metadata.deletionTimestamp)",
                },
            ],
            "variables": _workload_variables(shape),
            "validations": [
                {
                    "expression": "size(variables.problems) == 0",
                    "messageExpression": (
                        "variables.reference + ': ' + variables.problems.join('; ')"
                    ),
                    "reason": "Forbidden",
                }
            ],
        },
    }


def build_workload_binding(
    settings: PolicySettings, shape: _TemplateShape, mode: validation.EnforcementMode
) -> Manifest:
    """The binding that applies one workload policy in namespaces of one mode."""
    policy_name = workload_policy_name(settings, shape.suffix)
    return {
        "apiVersion": API_VERSION,
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": f"{policy_name}-{mode}", "labels": dict(PART_OF_LABELS)},
        "spec": {
            "policyName": policy_name,
            "validationActions": list(VALIDATION_ACTIONS[mode]),
            "matchResources": {
                "namespaceSelector": {
                    "matchExpressions": [
                        {
                            "key": validation.ENFORCEMENT_LABEL,
                            "operator": "In",
                            "values": [mode],
                        }
                    ]
                }
            },
        },
    }


# -- the namespace label guard ---------------------------------------------------------------


def namespace_policy_name(settings: PolicySettings) -> str:
    return f"{settings.name_prefix}-namespace-enforcement-label"


def build_namespace_policy(settings: PolicySettings) -> Manifest:
    """Only the operator (and configured groups) may add, change or remove the mode label."""
    label = validation.ENFORCEMENT_LABEL
    modes = _cel_list(validation.ENFORCEMENT_MODES)
    shown_old = "(variables.oldMode == '' ? '(none)' : variables.oldMode)"
    shown_new = "(variables.newMode == '' ? '(none)' : variables.newMode)"
    operator = settings.operator_username
    return {
        "apiVersion": API_VERSION,
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {
            "name": namespace_policy_name(settings),
            "labels": dict(PART_OF_LABELS),
            "annotations": {
                "hush.dev/description": (
                    f"Only the Hush operator ({operator}) changes the {label} label of a "
                    "Namespace; every change is recorded in the audit log"
                )
            },
        },
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["namespaces"],
                    }
                ]
            },
            "variables": [
                {
                    "name": "newMode",
                    "expression": f"has(object.metadata.labels) && "
                    f"{_value_or_empty('object.metadata.labels', label)}",
                },
                {
                    "name": "oldMode",
                    "expression": "oldObject != null && has(oldObject.metadata.labels) && "
                    f"{_value_or_empty('oldObject.metadata.labels', label)}",
                },
                {"name": "changed", "expression": "variables.newMode != variables.oldMode"},
                {
                    "name": "mayChange",
                    "expression": f"request.userInfo.username == {_cel_string(operator)} || "
                    "request.userInfo.groups.exists(group, group in "
                    f"{settings.enforcement_label_groups_cel()})",
                },
            ],
            "validations": [
                {
                    "expression": "!variables.changed || variables.mayChange",
                    "messageExpression": (
                        f"'Namespace ' + object.metadata.name + ': only the Hush operator "
                        f"({operator}) may add, change or remove label {label}; ' + "
                        f"request.userInfo.username + ' tried to change it from ' + {shown_old} "
                        f"+ ' to ' + {shown_new} + ' (fix: leave {label} as it is; ask the "
                        "platform team that runs Hush to change the enforcement mode)'"
                    ),
                    "reason": "Forbidden",
                },
                {
                    "expression": f"!variables.changed || variables.newMode == '' || "
                    f"variables.newMode in {modes}",
                    "messageExpression": (
                        f"'Namespace ' + object.metadata.name + ': label {label} is ' + "
                        f"variables.newMode + ', not one of "
                        f"{', '.join(validation.ENFORCEMENT_MODES)} (fix: set `{label}` to "
                        f"enforce, warn or audit, or remove it)'"
                    ),
                    "reason": "Forbidden",
                },
            ],
            "auditAnnotations": [
                {
                    "key": ENFORCEMENT_LABEL_CHANGE_AUDIT_KEY,
                    "valueExpression": (
                        # An empty value leaves the annotation out (the type checker refuses a
                        # string-or-null conditional).
                        f"variables.changed ? request.userInfo.username + ' changed label "
                        f"{label} of Namespace ' + object.metadata.name + ' from ' + {shown_old} "
                        f"+ ' to ' + {shown_new} : ''"
                    ),
                }
            ],
        },
    }


def build_namespace_binding(settings: PolicySettings) -> Manifest:
    """Binds the namespace guard everywhere, denying (namespaces are cluster-scoped)."""
    name = namespace_policy_name(settings)
    return {
        "apiVersion": API_VERSION,
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name, "labels": dict(PART_OF_LABELS)},
        "spec": {"policyName": name, "validationActions": ["Deny"]},
    }


# -- annotated pods must have been injected --------------------------------------------------


def injected_pods_policy_name(settings: PolicySettings) -> str:
    return f"{settings.name_prefix}-injected-pods"


def build_injected_pods_policy(settings: PolicySettings) -> Manifest:
    """A pod that asks for a DP policy is admitted only with the sidecar in it.

    The injecting webhook has ``failurePolicy: Ignore`` so that an operator outage never
    stops unrelated pods (invariant 8); this policy, evaluated by the apiserver itself after
    all mutating webhooks, makes the outage fail closed for exactly the pods that asked for
    injection (invariant 3): they are refused instead of starting unguarded.
    """
    policy = validation.POLICY_ANNOTATION
    excluded = _cel_list(validation.excluded_namespaces(settings.hush_namespace))
    return {
        "apiVersion": API_VERSION,
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {
            "name": injected_pods_policy_name(settings),
            "labels": dict(PART_OF_LABELS),
            "annotations": {
                "hush.dev/description": (
                    f"Pods annotated {policy} are admitted only with the hush-sidecar "
                    "container that the injecting webhook adds"
                )
            },
        },
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["pods"],
                    }
                ]
            },
            "matchConditions": [
                {
                    "name": "asks-for-a-policy",
                    "expression": f"{ASKS_FOR_A_POLICY} && !(request.namespace in {excluded})",
                }
            ],
            "validations": [
                {
                    "expression": "(has(object.spec.initContainers) && "
                    "object.spec.initContainers.exists(c, c.name == 'hush-sidecar')) || "
                    "object.spec.containers.exists(c, c.name == 'hush-sidecar')",
                    "messageExpression": (
                        "'Pod ' + request.namespace + '/' + (object.metadata.name != '' ? "
                        "object.metadata.name : object.metadata.generateName + '<generated>') + "
                        "': it asks for DP policy ' + "
                        f"object.metadata.annotations[{_cel_string(policy)}] + "
                        "' but has no hush-sidecar: the Hush injection webhook did not run "
                        "(is the operator up? kubectl get pods -n <hush namespace>); "
                        "it is refused rather than started without noise'"
                    ),
                    "reason": "Forbidden",
                }
            ],
        },
    }


def build_injected_pods_binding(settings: PolicySettings) -> Manifest:
    name = injected_pods_policy_name(settings)
    return {
        "apiVersion": API_VERSION,
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name, "labels": dict(PART_OF_LABELS)},
        "spec": {"policyName": name, "validationActions": ["Deny"]},
    }


# -- least privilege for the operator itself -------------------------------------------------


def operator_config_maps_policy_name(settings: PolicySettings) -> str:
    return f"{settings.name_prefix}-operator-config-maps"


def build_operator_config_maps_policy(settings: PolicySettings) -> Manifest:
    """The operator may create or change only ConfigMaps named ``hush-accountant-ca``.

    RBAC limits get/patch/update by ``resourceNames``, but a ``create`` has no name at
    authorisation time; this policy names it. Matched only for the operator's ServiceAccount.
    """
    operator = settings.operator_username
    name = mutation.ACCOUNTANT_CA_CONFIG_MAP
    return {
        "apiVersion": API_VERSION,
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {
            "name": operator_config_maps_policy_name(settings),
            "labels": dict(PART_OF_LABELS),
            "annotations": {
                "hush.dev/description": (
                    f"The Hush operator ({operator}) creates and changes only ConfigMaps "
                    f"named {name} (the accountant's CA for injected sidecars)"
                )
            },
        },
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE", "UPDATE", "DELETE"],
                        "resources": ["configmaps"],
                    }
                ]
            },
            "matchConditions": [
                {
                    "name": "the-operator",
                    "expression": f"request.userInfo.username == {_cel_string(operator)}",
                }
            ],
            "validations": [
                {
                    # A DELETE has no object (and RBAC gives no delete): refused outright.
                    "expression": f"request.operation != 'DELETE' && "
                    f"object.metadata.name == {_cel_string(name)}",
                    "messageExpression": (
                        f"'ConfigMap ' + request.namespace + '/' + (request.name != '' ? "
                        f"request.name : '<generated>') + ': the Hush operator ({operator}) may "
                        f"only create or change ConfigMaps named {name} (least privilege: a "
                        "ConfigMap can grant cluster access, e.g. kube-system/aws-auth)'"
                    ),
                    "reason": "Forbidden",
                }
            ],
        },
    }


def operator_workloads_policy_name(settings: PolicySettings) -> str:
    return f"{settings.name_prefix}-operator-workloads"


def _same_except(new: str, old: str, ignored: Sequence[str]) -> str:
    """CEL: maps (or objects, through ``dyn``) ``new`` and ``old`` agree on every other key.

    CEL has no map removal, so "equal with these keys left out" is written out: every key
    of one side is ignored or present on the other side with the same value.
    """
    skip = _cel_list(ignored)
    return (
        f"{new}.all(k, k in {skip} || (k in {old} && {new}[k] == {old}[k])) && "
        f"{old}.all(k, k in {skip} || k in {new})"
    )


def _dyn_or_empty(path: str, guards: Sequence[str]) -> str:
    condition = " && ".join(f"has({guard})" for guard in guards)
    return f"{condition} ? dyn({path}) : dyn({{}})"


def build_operator_workloads_policy(settings: PolicySettings) -> Manifest:
    """The operator may change nothing in a workload but its rollout annotation.

    The rollout controller server-side applies one field,
    ``spec.template.metadata.annotations[hush.dev/policy-rollout]``; RBAC's ``patch`` would
    let a compromised operator change the image or command of any workload. Each part of
    the object is compared with the old object (``dyn`` makes one expression serve the three
    kinds), leaving out only that annotation and the fields the apiserver sets itself.
    """
    operator = settings.operator_username
    template = "object.spec.template"
    old_template = "oldObject.spec.template"
    variables = [
        ("newMetadata", "dyn(object.metadata)"),
        ("oldMetadata", "dyn(oldObject.metadata)"),
        ("newSpec", "dyn(object.spec)"),
        ("oldSpec", "dyn(oldObject.spec)"),
        ("newTemplate", f"dyn({template})"),
        ("oldTemplate", f"dyn({old_template})"),
        ("newTemplateMetadata", _dyn_or_empty(f"{template}.metadata", [f"{template}.metadata"])),
        (
            "oldTemplateMetadata",
            _dyn_or_empty(f"{old_template}.metadata", [f"{old_template}.metadata"]),
        ),
        (
            "newTemplateAnnotations",
            _dyn_or_empty(
                f"{template}.metadata.annotations",
                [f"{template}.metadata", f"{template}.metadata.annotations"],
            ),
        ),
        (
            "oldTemplateAnnotations",
            _dyn_or_empty(
                f"{old_template}.metadata.annotations",
                [f"{old_template}.metadata", f"{old_template}.metadata.annotations"],
            ),
        ),
    ]
    # What changed, named in the refusal.
    parts = [
        ("metadata", "newMetadata", "oldMetadata", SERVER_SET_METADATA),
        ("spec (outside the pod template)", "newSpec", "oldSpec", ("template",)),
        ("spec.template.spec", "newTemplate", "oldTemplate", ("metadata",)),
        (
            "spec.template.metadata (outside its annotations)",
            "newTemplateMetadata",
            "oldTemplateMetadata",
            ("annotations",),
        ),
        (
            f"spec.template.metadata.annotations (other than {ROLLOUT_ANNOTATION})",
            "newTemplateAnnotations",
            "oldTemplateAnnotations",
            (ROLLOUT_ANNOTATION,),
        ),
    ]
    validations = [
        {
            "expression": _same_except(f"variables.{new}", f"variables.{old}", ignored),
            "messageExpression": (
                "object.kind + ' ' + request.namespace + '/' + request.name + "
                + _cel_string(
                    f": the Hush operator ({operator}) may change only the pod template's "
                    f"annotation {ROLLOUT_ANNOTATION}, and this write changes its {part} "
                    "(least privilege: rollouts never change what a workload runs)"
                )
            ),
            "reason": "Forbidden",
        }
        for part, new, old, ignored in parts
    ]
    return {
        "apiVersion": API_VERSION,
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {
            "name": operator_workloads_policy_name(settings),
            "labels": dict(PART_OF_LABELS),
            "annotations": {
                "hush.dev/description": (
                    f"The Hush operator ({operator}) changes nothing in a Deployment, "
                    f"StatefulSet or DaemonSet but the pod template's {ROLLOUT_ANNOTATION} "
                    "annotation"
                )
            },
        },
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": ["apps"],
                        "apiVersions": ["v1"],
                        # RBAC gives the operator neither create nor delete on workloads.
                        "operations": ["UPDATE"],
                        "resources": ["deployments", "statefulsets", "daemonsets"],
                    }
                ]
            },
            "matchConditions": [
                {
                    "name": "the-operator",
                    "expression": f"request.userInfo.username == {_cel_string(operator)}",
                }
            ],
            "variables": [
                {"name": name, "expression": expression} for name, expression in variables
            ],
            "validations": validations,
        },
    }


def _deny_everywhere_binding(name: str) -> Manifest:
    return {
        "apiVersion": API_VERSION,
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name, "labels": dict(PART_OF_LABELS)},
        "spec": {"policyName": name, "validationActions": ["Deny"]},
    }


def all_manifests(settings: PolicySettings) -> list[Manifest]:
    """Every policy, then every binding, in a stable order (apply policies first)."""
    policies = [build_workload_policy(settings, shape) for shape in TEMPLATE_SHAPES]
    policies.append(build_namespace_policy(settings))
    policies.append(build_injected_pods_policy(settings))
    policies.append(build_operator_config_maps_policy(settings))
    policies.append(build_operator_workloads_policy(settings))
    bindings = [
        build_workload_binding(settings, shape, mode)
        for shape in TEMPLATE_SHAPES
        for mode in validation.ENFORCEMENT_MODES
    ]
    bindings.append(build_namespace_binding(settings))
    bindings.append(build_injected_pods_binding(settings))
    bindings.append(_deny_everywhere_binding(operator_config_maps_policy_name(settings)))
    bindings.append(_deny_everywhere_binding(operator_workloads_policy_name(settings)))
    return policies + bindings


# -- the Helm chart's copy -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class _ChartSettings(PolicySettings):
    """Helm template variables in place of the release's values."""

    def enforcement_label_groups_cel(self) -> str:
        return "{{$enforcementLabelGroups}}"


# Names without spaces, so that YAML line folding can never split a template action.
CHART_SETTINGS: Final[PolicySettings] = _ChartSettings(
    name_prefix="{{$prefix}}",
    hush_namespace="{{$namespace}}",
    operator_service_account="{{$serviceAccount}}",
)

_CHART_HEADER = """\
{{- /*
Generated by `make manifests` from operator/hush/admission/policies.py; do not edit by hand.
The static admission rules as ValidatingAdmissionPolicies (see
docs/design/0011-admission-rules-vap-vs-webhook.md).
*/ -}}
{{- if .Values.admissionPolicies.enabled }}
{{- $prefix := include "hush.fullname" . }}
{{- $namespace := .Release.Namespace }}
{{- $serviceAccount := include "hush.serviceAccountName" . }}
{{- $enforcementLabelGroups := .Values.admissionPolicies.enforcementLabelGroups | toJson }}
"""
_CHART_FOOTER = "{{- end }}\n"


class _Dumper(yaml.SafeDumper):
    """CEL expressions as literal blocks: YAML quoting would double every CEL quote."""


def _represent_string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value or "'" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_string)


def render_yaml(manifests: Sequence[Manifest]) -> str:
    """The manifests as one multi-document YAML text."""
    return "".join(
        "---\n" + yaml.dump(manifest, Dumper=_Dumper, sort_keys=False, width=100)
        for manifest in manifests
    )


def render_chart_template() -> str:
    """The chart's ``templates/validating-admission-policies.yaml``."""
    return _CHART_HEADER + render_yaml(all_manifests(CHART_SETTINGS)) + _CHART_FOOTER


def write_chart_template(directory: Path) -> Path:
    """Write the chart template into ``directory`` (the chart's ``templates/``)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CHART_TEMPLATE_NAME
    path.write_text(render_chart_template(), encoding="utf-8")
    return path
