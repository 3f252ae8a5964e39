"""Which workloads break Hush's admission rules, and the exact change that fixes each break.

Application teams mark workloads with two **labels** and opt pods into the noise sidecar with
one **annotation**:

- ``hush.dev/team`` and ``hush.dev/sensitivity`` are labels, on the workload *and* on its pod
  template: labels are what selectors, ``kubectl get -l`` and the metric labels work with,
  and the pod's own copy is what ``exec``/``attach`` decisions read (the apiserver hands the
  webhook a pod, not its owner).
- ``hush.dev/policy`` is an annotation on the pod template (on a bare Pod, on the Pod): it
  names a DPPolicy, which is configuration rather than identity, and it is the annotation
  the mutating webhook injects the sidecar for. It is not looked for on the workload itself.

The rules, each with a stable id (``Rule``) that reports and metrics use:

``team-label``, ``sensitivity-label``
    the label is missing (or empty) on the workload's ``metadata.labels`` or on its pod
    template's labels;
``sensitivity-value``
    ``hush.dev/sensitivity`` is not one of public, internal, confidential, restricted;
``labels-match``
    the workload and its pod template disagree on team or sensitivity (the pods would be
    judged by a label that the workload's owner did not choose);
``image-digest``
    a confidential or restricted workload runs an image not pinned by ``@sha256:`` digest
    (invariant 6: sensitive workloads run exactly what was reviewed);
``policy-annotation``
    a confidential or restricted workload has no ``hush.dev/policy`` annotation;
``policy-exists``
    the ``hush.dev/policy`` annotation names a DPPolicy that does not exist in the namespace
    (the only rule that needs a lookup; the caller passes the lookup in);
``restricted-pod-access``
    ``exec``, ``attach``, ``port-forward`` or an ephemeral container into a restricted pod
    (each reaches the application's own port or process without the sidecar).

The first six are *static*: they read only the object, so ``hush.admission.policies`` also
expresses them in CEL for ValidatingAdmissionPolicies that the apiserver evaluates without a
network hop, with the same texts in the same order (the e2e suite compares the two). This
module stays the reference: ``hush audit`` and the background audit run it over existing
objects, and the webhook runs the lookup rules. docs/design/0011 says which rule lives where.

A pod template's sensitivity is the strictest valid value found on the workload or the
template, so a mismatch never weakens the image and policy rules.

Nothing here does I/O; every function is a pure decision over plain dicts.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Final, Literal, get_args

TEAM_LABEL: Final = "hush.dev/team"
SENSITIVITY_LABEL: Final = "hush.dev/sensitivity"
POLICY_ANNOTATION: Final = "hush.dev/policy"
ENFORCEMENT_LABEL: Final = "hush.dev/enforcement"

Sensitivity = Literal["public", "internal", "confidential", "restricted"]
SENSITIVITIES: Final[tuple[Sensitivity, ...]] = get_args(Sensitivity)
# Sensitivities whose workloads need digest-pinned images and a DPPolicy.
SENSITIVE: Final[tuple[Sensitivity, ...]] = ("confidential", "restricted")

EnforcementMode = Literal["enforce", "warn", "audit"]
ENFORCEMENT_MODES: Final[tuple[EnforcementMode, ...]] = get_args(EnforcementMode)

# Never enforced, whatever their labels say: the cluster's own namespaces must keep working
# when Hush is broken (invariant 8). Hush's own namespace is added by the caller.
SYSTEM_NAMESPACES: Final = ("kube-system", "kube-public", "kube-node-lease")

# Users whose writes are exempt from the workload rules: the built-in controllers. They create
# ReplicaSets, Jobs and Pods on behalf of an owner that was itself admitted (or is reported by
# the audit), and the garbage collector updates objects to finish their deletion. Denying them
# would turn a pre-existing workload into a silent outage at its next scale-up. Acting as them
# needs kube-system credentials, which already bypass any policy.
SYSTEM_CONTROLLER_SERVICE_ACCOUNT_PREFIX: Final = "system:serviceaccount:kube-system:"
SYSTEM_CONTROLLER_MANAGER_USER: Final = "system:kube-controller-manager"

Rule = Literal[
    "team-label",
    "sensitivity-label",
    "sensitivity-value",
    "labels-match",
    "image-digest",
    "policy-annotation",
    "policy-exists",
    "restricted-pod-access",
]
RULES: Final[tuple[Rule, ...]] = get_args(Rule)

DIGEST_PATTERN: Final = r"@sha256:[0-9a-f]{64}$"
# The image reference without tag and digest: registry (with port) and repository path.
# The same regular expression is used in CEL (``find``), so both suggest the same fix.
REPOSITORY_PATTERN: Final = r"^([^@/]*/)*[^@/:]*"

SENSITIVITY_PLACEHOLDER: Final = "<" + "|".join(SENSITIVITIES) + ">"


@dataclasses.dataclass(frozen=True)
class MessageTemplate:
    """A problem and its fix with ``{placeholders}``: the one text Python and CEL both use.

    ``hush.admission.policies`` turns ``text`` into a CEL string expression, so a denial by a
    ValidatingAdmissionPolicy reads exactly like the same finding in ``hush audit``.
    """

    problem: str
    fix: str

    @property
    def text(self) -> str:
        return f"{self.problem} (fix: {self.fix})"


MISSING_TEAM: Final = MessageTemplate(
    f"label {TEAM_LABEL} is missing from {{location}}",
    f"add `{TEAM_LABEL}: <team>` to {{location}}",
)
MISSING_SENSITIVITY: Final = MessageTemplate(
    f"label {SENSITIVITY_LABEL} is missing from {{location}}",
    f"add `{SENSITIVITY_LABEL}: {SENSITIVITY_PLACEHOLDER}` to {{location}}",
)
INVALID_SENSITIVITY: Final = MessageTemplate(
    f"label {SENSITIVITY_LABEL} on {{location}} is {{value}}, not one of "
    + ", ".join(SENSITIVITIES),
    f"set `{SENSITIVITY_LABEL}: {SENSITIVITY_PLACEHOLDER}` on {{location}}",
)
LABELS_DIFFER: Final = MessageTemplate(
    "label {label} is {workload_value} on metadata.labels but {template_value} on {location}",
    "set `{label}: {workload_value}` on {location}",
)
IMAGE_NOT_PINNED: Final = MessageTemplate(
    "container {container} runs image {image}, which is not pinned by digest as "
    f"{SENSITIVITY_LABEL}={{sensitivity}} requires",
    "pin image {image} as {repository}@sha256:<digest>",
)
MISSING_POLICY: Final = MessageTemplate(
    f"annotation {POLICY_ANNOTATION} is missing from {{location}}, which "
    f"{SENSITIVITY_LABEL}={{sensitivity}} requires",
    f"add `{POLICY_ANNOTATION}: <dppolicy-name>` to {{location}}",
)
POLICY_NOT_FOUND: Final = MessageTemplate(
    f"annotation {POLICY_ANNOTATION} on {{location}} names DPPolicy {{policy}}, which does not "
    "exist in namespace {namespace}",
    f"create DPPolicy {{namespace}}/{{policy}}, or set `{POLICY_ANNOTATION}` on {{location}} "
    "to one that `kubectl get dppolicies -n {namespace}` lists",
)


class UnsupportedKindError(ValueError):
    """The object is not one of the workload kinds the rules apply to."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class WorkloadKind:
    """Where one workload kind keeps its pod template, and how kubectl names it."""

    kind: str
    group: str  # "" is the core group
    version: str
    plural: str
    # Path of the pod template inside the object; () for a Pod, which is its own template.
    template_path: tuple[str, ...]
    # Whether the template can be changed in place (a Job's cannot: it must be recreated).
    template_mutable: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def kubectl_name(self) -> str:
        return self.kind.lower()

    @property
    def is_pod(self) -> bool:
        return not self.template_path

    @property
    def template_metadata_path(self) -> str:
        """``spec.template.metadata``: where the pod template's labels and annotations are."""
        return ".".join((*self.template_path, "metadata"))


_TEMPLATE = ("spec", "template")
WORKLOAD_KINDS: Final[tuple[WorkloadKind, ...]] = (
    WorkloadKind(
        kind="Deployment", group="apps", version="v1", plural="deployments", template_path=_TEMPLATE
    ),
    WorkloadKind(
        kind="StatefulSet",
        group="apps",
        version="v1",
        plural="statefulsets",
        template_path=_TEMPLATE,
    ),
    WorkloadKind(
        kind="DaemonSet", group="apps", version="v1", plural="daemonsets", template_path=_TEMPLATE
    ),
    WorkloadKind(
        kind="ReplicaSet", group="apps", version="v1", plural="replicasets", template_path=_TEMPLATE
    ),
    WorkloadKind(
        kind="Job",
        group="batch",
        version="v1",
        plural="jobs",
        template_path=_TEMPLATE,
        template_mutable=False,
    ),
    WorkloadKind(
        kind="CronJob",
        group="batch",
        version="v1",
        plural="cronjobs",
        template_path=("spec", "jobTemplate", "spec", "template"),
    ),
    WorkloadKind(kind="Pod", group="", version="v1", plural="pods", template_path=()),
)
_KINDS_BY_NAME: Final = {kind.kind: kind for kind in WORKLOAD_KINDS}


def workload_kind(workload: Mapping[str, Any]) -> WorkloadKind:
    """The ``WorkloadKind`` of an object, from its ``kind`` field."""
    kind = workload.get("kind")
    found = _KINDS_BY_NAME.get(kind) if isinstance(kind, str) else None
    if found is None:
        supported = ", ".join(_KINDS_BY_NAME)
        raise UnsupportedKindError(
            f"Hush's workload rules apply to {supported}; got kind {kind!r}. "
            "Pass the whole object, including its kind"
        )
    return found


@dataclasses.dataclass(frozen=True, kw_only=True)
class Violation:
    """One broken rule of one object: what is wrong and the change that fixes it.

    ``fix`` is the change to make in the manifest (what a denied ``kubectl apply`` needs);
    ``command``, when there is one, applies the same fix to an existing object.
    """

    kind: str
    namespace: str
    name: str
    rule: Rule
    problem: str
    fix: str
    command: str | None = None

    @property
    def object_reference(self) -> str:
        """``Deployment team-a/web``: the object, as every message names it."""
        return f"{self.kind} {self.namespace}/{self.name}"

    @property
    def text(self) -> str:
        """The problem and its fix, without the object: ``... (fix: ...)``."""
        return f"{self.problem} (fix: {self.fix})"

    @property
    def message(self) -> str:
        """The object, the problem and the fix, as one sentence."""
        return f"{self.object_reference}: {self.text}"

    def as_dict(self) -> dict[str, str | None]:
        return {
            "kind": self.kind,
            "namespace": self.namespace,
            "name": self.name,
            "rule": self.rule,
            "problem": self.problem,
            "fix": self.fix,
            "command": self.command,
        }


def describe(violations: Sequence[Violation]) -> str:
    """One message for a list of violations: each object named once, then all its problems.

    This is the denial text of the webhook; the ValidatingAdmissionPolicies build the same
    text for the static rules.
    """
    by_object: dict[str, list[str]] = {}
    for violation in violations:
        by_object.setdefault(violation.object_reference, []).append(violation.text)
    return "\n".join(f"{reference}: {'; '.join(texts)}" for reference, texts in by_object.items())


# -- reading objects -------------------------------------------------------------------------


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _string_map(value: object) -> Mapping[str, str]:
    return {k: v for k, v in _mapping(value).items() if isinstance(v, str)}


def object_name(obj: Mapping[str, Any]) -> str:
    """The object's name; before the apiserver names it, ``<generateName><generated>``."""
    metadata = _mapping(obj.get("metadata"))
    name = metadata.get("name")
    if isinstance(name, str) and name:
        return name
    generate_name = metadata.get("generateName")
    return f"{generate_name if isinstance(generate_name, str) else ''}<generated>"


def pod_template(workload: Mapping[str, Any]) -> Mapping[str, Any]:
    """The pod template of any workload kind (for a Pod, the Pod itself)."""
    node: Mapping[str, Any] = workload
    for key in workload_kind(workload).template_path:
        node = _mapping(node.get(key))
    return node


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return _string_map(_mapping(obj.get("metadata")).get("labels"))


def _annotations(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return _string_map(_mapping(obj.get("metadata")).get("annotations"))


def has_controller_owner(obj: Mapping[str, Any]) -> bool:
    """True when a controller owns the object (a Deployment's ReplicaSet, a Job's Pod).

    Such objects are judged through their owner: reporting both would count one mistake
    several times, and the owner is where the fix goes.
    """
    owners = _mapping(obj.get("metadata")).get("ownerReferences")
    if not isinstance(owners, list):
        return False
    return any(isinstance(owner, Mapping) and owner.get("controller") is True for owner in owners)


def is_system_controller(username: str) -> bool:
    """True for the built-in controllers, whose writes the workload rules do not judge."""
    return (
        username.startswith(SYSTEM_CONTROLLER_SERVICE_ACCOUNT_PREFIX)
        or username == SYSTEM_CONTROLLER_MANAGER_USER
    )


def effective_sensitivity(workload: Mapping[str, Any]) -> Sensitivity | None:
    """The strictest valid sensitivity on the workload or its pod template, if any."""
    found = {
        _labels(workload).get(SENSITIVITY_LABEL),
        _labels(pod_template(workload)).get(SENSITIVITY_LABEL),
    }
    for sensitivity in reversed(SENSITIVITIES):
        if sensitivity in found:
            return sensitivity
    return None


def _containers(template: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    spec = _mapping(template.get("spec"))
    found: list[Mapping[str, Any]] = []
    # Ephemeral containers are left out: they cannot be set on create or through the main
    # resource, and adding one to a restricted pod is refused outright.
    for field in ("containers", "initContainers"):
        containers = spec.get(field)
        if isinstance(containers, list):
            found += [container for container in containers if isinstance(container, Mapping)]
    return found


def is_pinned_by_digest(image: str) -> bool:
    """True for ``repo@sha256:<64 hex>`` (with or without a tag before the digest)."""
    return re.search(DIGEST_PATTERN, image) is not None


def image_repository(image: str) -> str:
    """``registry:5000/team/app:1.2`` -> ``registry:5000/team/app`` (no tag, no digest)."""
    match = re.match(REPOSITORY_PATTERN, image)
    return match.group(0) if match else image


# -- the static rules ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Subject:
    """The object being judged, and how to write the commands that fix it in place."""

    kind: WorkloadKind
    namespace: str
    name: str

    @classmethod
    def of(cls, workload: Mapping[str, Any], namespace: str | None) -> _Subject:
        if namespace is None:
            namespace = str(_mapping(workload.get("metadata")).get("namespace", ""))
        return cls(workload_kind(workload), namespace, object_name(workload))

    def violation(
        self, rule: Rule, template: MessageTemplate, command: str | None, **values: str
    ) -> Violation:
        return Violation(
            kind=self.kind.kind,
            namespace=self.namespace,
            name=self.name,
            rule=rule,
            problem=template.problem.format(**values),
            fix=template.fix.format(**values),
            command=command,
        )

    @property
    def target(self) -> str:
        return f"-n {self.namespace} {self.kind.kubectl_name}/{self.name}"

    def label_command(self, label: str, value: str, *, on_template: bool) -> str | None:
        """The kubectl command that sets ``label`` on the object or on its pod template."""
        if not on_template or self.kind.is_pod:
            return f"kubectl label --overwrite {self.target} {label}={value}"
        return self._template_patch("labels", label, value)

    def annotation_command(self, annotation: str, value: str) -> str | None:
        # A Pod's sidecar is injected when it is created: annotating it later changes nothing.
        if self.kind.is_pod:
            return None
        return self._template_patch("annotations", annotation, value)

    def _template_patch(self, field: str, key: str, value: str) -> str | None:
        if not self.kind.template_mutable:
            return None  # a Job's template cannot change: the fix is in its manifest
        patch: dict[str, Any] = {"metadata": {field: {key: value}}}
        for step in reversed(self.kind.template_path):
            patch = {step: patch}
        patch_text = json.dumps(patch, separators=(",", ":"))
        return f"kubectl patch {self.target} --type=merge -p '{patch_text}'"

    def set_image_command(self, container: str, image: str) -> str | None:
        if not self.kind.template_mutable:
            return None
        return f"kubectl set image {self.target} {container}={image}"


def static_violations(
    workload: Mapping[str, Any], *, namespace: str | None = None
) -> list[Violation]:
    """Every static rule ``workload`` breaks (all but ``policy-exists``), in a fixed order.

    ``workload`` is any of the seven kinds, as the apiserver sends or lists it, including its
    ``kind``. ``namespace`` overrides ``metadata.namespace`` (an AdmissionReview carries the
    namespace in the request). The order is the one the ValidatingAdmissionPolicies use:
    labels on the workload, labels on the pod template, agreement of the two, images,
    policy annotation.
    """
    subject = _Subject.of(workload, namespace)
    kind = subject.kind
    template = pod_template(workload)
    workload_labels = _labels(workload)
    template_labels = _labels(template)
    template_labels_location = f"{kind.template_metadata_path}.labels"

    violations = _label_violations(subject, workload_labels, "metadata.labels", on_template=False)
    if not kind.is_pod:
        violations += _label_violations(
            subject, template_labels, template_labels_location, on_template=True
        )
        for label in (TEAM_LABEL, SENSITIVITY_LABEL):
            on_workload, on_pods = workload_labels.get(label, ""), template_labels.get(label, "")
            if on_workload and on_pods and on_workload != on_pods:
                violations.append(
                    subject.violation(
                        "labels-match",
                        LABELS_DIFFER,
                        subject.label_command(label, on_workload, on_template=True),
                        label=label,
                        workload_value=on_workload,
                        template_value=on_pods,
                        location=template_labels_location,
                    )
                )

    sensitivity = effective_sensitivity(workload)
    if sensitivity not in SENSITIVE:
        return violations
    for container in _containers(template):
        image = container.get("image")
        if not isinstance(image, str) or not image or is_pinned_by_digest(image):
            continue
        name = str(container.get("name", ""))
        repository = image_repository(image)
        violations.append(
            subject.violation(
                "image-digest",
                IMAGE_NOT_PINNED,
                subject.set_image_command(name, f"{repository}@sha256:<digest>"),
                container=name,
                image=image,
                repository=repository,
                sensitivity=sensitivity,
            )
        )
    if not _annotations(template).get(POLICY_ANNOTATION):
        violations.append(
            subject.violation(
                "policy-annotation",
                MISSING_POLICY,
                subject.annotation_command(POLICY_ANNOTATION, "<dppolicy-name>"),
                location=f"{kind.template_metadata_path}.annotations",
                sensitivity=sensitivity,
            )
        )
    return violations


def _label_violations(
    subject: _Subject, labels: Mapping[str, str], location: str, *, on_template: bool
) -> list[Violation]:
    found: list[Violation] = []
    if not labels.get(TEAM_LABEL):
        command = subject.label_command(TEAM_LABEL, "<team>", on_template=on_template)
        found.append(subject.violation("team-label", MISSING_TEAM, command, location=location))
    sensitivity = labels.get(SENSITIVITY_LABEL, "")
    command = subject.label_command(
        SENSITIVITY_LABEL, SENSITIVITY_PLACEHOLDER, on_template=on_template
    )
    if not sensitivity:
        found.append(
            subject.violation("sensitivity-label", MISSING_SENSITIVITY, command, location=location)
        )
    elif sensitivity not in SENSITIVITIES:
        found.append(
            subject.violation(
                "sensitivity-value",
                INVALID_SENSITIVITY,
                command,
                location=location,
                value=sensitivity,
            )
        )
    return found


# -- the lookup rule -------------------------------------------------------------------------


def policy_reference_violations(
    workload: Mapping[str, Any],
    *,
    policy_exists: Callable[[str], bool],
    namespace: str | None = None,
) -> list[Violation]:
    """``policy-exists``: the DPPolicy that the pod template's annotation names must exist.

    ``policy_exists(name)`` answers whether a DPPolicy of that name exists in the workload's
    namespace (a set's ``__contains__`` will do). Checked for every sensitivity: a pod that
    names a missing policy cannot get its sidecar.
    """
    subject = _Subject.of(workload, namespace)
    policy = _annotations(pod_template(workload)).get(POLICY_ANNOTATION, "")
    if not policy or policy_exists(policy):
        return []
    return [
        subject.violation(
            "policy-exists",
            POLICY_NOT_FOUND,
            subject.annotation_command(POLICY_ANNOTATION, "<dppolicy-name>"),
            location=f"{subject.kind.template_metadata_path}.annotations",
            policy=policy,
            namespace=subject.namespace,
        )
    ]


def all_violations(
    workload: Mapping[str, Any],
    *,
    policy_exists: Callable[[str], bool],
    namespace: str | None = None,
) -> list[Violation]:
    """Static and lookup rules together: what the background audit reports."""
    return [
        *static_violations(workload, namespace=namespace),
        *policy_reference_violations(workload, policy_exists=policy_exists, namespace=namespace),
    ]


# -- exec, attach, port-forward and ephemeral containers on restricted pods ----------------

PodSubresource = Literal["exec", "attach", "portforward", "ephemeralcontainers"]
POD_SUBRESOURCES: Final[tuple[PodSubresource, ...]] = get_args(PodSubresource)
AccessVerdict = Literal["allowed", "denied", "break-glass"]
BREAK_GLASS_EVENT_REASON: Final = "BreakGlassAccess"

_ACCESS_WORDS: Final[Mapping[PodSubresource, str]] = {
    "exec": "exec into",
    "attach": "attach to",
    # The kubelet forwards into the pod's network namespace: the application's own port
    # answers raw, past the sidecar and past any NetworkPolicy.
    "portforward": "port-forward to",
    "ephemeralcontainers": "add an ephemeral container to",
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class PodAccessDecision:
    """Whether a user may exec/attach/port-forward/debug into a pod, and what to record.

    ``denied`` carries the violation (whose outcome then follows the namespace's mode);
    ``break-glass`` is allowed but must be recorded: ``event_message`` is the Event's text,
    with reason ``BREAK_GLASS_EVENT_REASON``, on the pod.
    """

    verdict: AccessVerdict
    violation: Violation | None = None
    event_message: str = ""


def decide_pod_access(
    *,
    pod: Mapping[str, Any],
    subresource: PodSubresource,
    username: str,
    user_groups: Collection[str],
    break_glass_group: str | None,
) -> PodAccessDecision:
    """Refuse ``exec``, ``attach``, ``port-forward`` and ephemeral containers into restricted pods.

    A pod is restricted when its own ``hush.dev/sensitivity`` label says so (the label that
    the pod template gave it). Members of ``break_glass_group`` get in, and the caller
    records an Event saying who did what.
    """
    labels = _labels(pod)
    if labels.get(SENSITIVITY_LABEL) != "restricted":
        return PodAccessDecision(verdict="allowed")
    metadata = _mapping(pod.get("metadata"))
    namespace, name = str(metadata.get("namespace", "")), object_name(pod)
    action = _ACCESS_WORDS[subresource]
    if break_glass_group and break_glass_group in user_groups:
        return PodAccessDecision(
            verdict="break-glass",
            event_message=(
                f"User {username} used break-glass group {break_glass_group} to {action} "
                f"Pod {namespace}/{name} ({SENSITIVITY_LABEL}=restricted)"
            ),
        )
    # A port-forward usually wants answers: the Service's sidecar port gives noised ones.
    alternative = (
        "query it through its Service (the hush-sidecar's port answers with noise), or "
        "reproduce the problem in a pod that is not restricted"
        if subresource == "portforward"
        else "reproduce the problem in a pod that is not restricted"
    )
    if break_glass_group:
        fix = (
            f"ask a member of group {break_glass_group} (break-glass; each use is recorded in "
            f"an Event), or {alternative}"
        )
    else:
        fix = f"{alternative}; no break-glass group is configured for this cluster"
    return PodAccessDecision(
        verdict="denied",
        violation=Violation(
            kind="Pod",
            namespace=namespace,
            name=name,
            rule="restricted-pod-access",
            problem=f"{username} may not {action} a pod labelled {SENSITIVITY_LABEL}=restricted",
            fix=fix,
        ),
    )


# -- namespaces and enforcement modes --------------------------------------------------------


def excluded_namespaces(hush_namespace: str) -> tuple[str, ...]:
    """Namespaces never enforced: the system ones and Hush's own."""
    return (*SYSTEM_NAMESPACES, hush_namespace)


def enforcement_mode(
    namespace: Mapping[str, Any], *, hush_namespace: str
) -> EnforcementMode | None:
    """The namespace's mode from its ``hush.dev/enforcement`` label; None when not enforced.

    An excluded namespace, a missing label and a value that is not a mode (the namespace
    policy refuses to set one) all mean no enforcement.
    """
    name = _mapping(namespace.get("metadata")).get("name")
    if name in excluded_namespaces(hush_namespace):
        return None
    value = _labels(namespace).get(ENFORCEMENT_LABEL)
    for mode in ENFORCEMENT_MODES:
        if value == mode:
            return mode
    return None


@dataclasses.dataclass(frozen=True, kw_only=True)
class AdmissionOutcome:
    """What the webhook answers: allowed or not, the denial, warnings, audit annotations."""

    allowed: bool
    message: str = ""
    warnings: tuple[str, ...] = ()
    audit_annotations: Mapping[str, str] = dataclasses.field(default_factory=dict)


AUDIT_ANNOTATION_KEY: Final = "violations"


def decide_outcome(mode: EnforcementMode, violations: Sequence[Violation]) -> AdmissionOutcome:
    """Map the namespace's mode onto the answer: enforce denies, warn warns, audit records.

    ``warn`` gives one admission warning per violation (kubectl prints each on its own line);
    ``audit`` allows silently and leaves the violations in the apiserver's audit log through
    an audit annotation (and the background audit reports the object later).
    """
    if not violations:
        return AdmissionOutcome(allowed=True)
    if mode == "enforce":
        return AdmissionOutcome(allowed=False, message=describe(violations))
    if mode == "warn":
        return AdmissionOutcome(
            allowed=True, warnings=tuple(violation.message for violation in violations)
        )
    return AdmissionOutcome(
        allowed=True, audit_annotations={AUDIT_ANNOTATION_KEY: describe(violations)}
    )
