"""The workload rules, the restricted-pod access decision and the enforcement modes."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

from hush.admission import review, validation
from hush.webhook import validation as webhook_validation

DIGEST = "sha256:" + "ab" * 32
PINNED = f"ghcr.io/acme/app@{DIGEST}"
GOOD_LABELS = {"app": "web", "hush.dev/team": "payments", "hush.dev/sensitivity": "internal"}


def build_workload(
    kind: str,
    *,
    labels: dict[str, str] | None = None,
    template_labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    images: tuple[str, ...] = ("nginx:1.27",),
    init_images: tuple[str, ...] = (),
    name: str = "web",
) -> dict[str, Any]:
    """A workload of ``kind`` whose pod template carries ``template_labels``/``annotations``.

    For a Pod, ``labels`` and ``annotations`` are the Pod's own (``template_labels`` unused).
    """
    workload_labels = dict(GOOD_LABELS if labels is None else labels)
    pod_labels = dict(GOOD_LABELS if template_labels is None else template_labels)
    pod_spec: dict[str, Any] = {
        "containers": [{"name": f"c{index}", "image": image} for index, image in enumerate(images)]
    }
    if init_images:
        pod_spec["initContainers"] = [
            {"name": f"init{index}", "image": image} for index, image in enumerate(init_images)
        ]
    template_metadata: dict[str, Any] = {"labels": pod_labels}
    if annotations is not None:
        template_metadata["annotations"] = dict(annotations)
    template = {"metadata": template_metadata, "spec": pod_spec}
    kind_info = next(k for k in validation.WORKLOAD_KINDS if k.kind == kind)
    metadata: dict[str, Any] = {"name": name, "namespace": "team-a", "labels": workload_labels}
    if kind == "Pod":
        if annotations is not None:
            metadata["annotations"] = dict(annotations)
        return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}
    if kind == "CronJob":
        spec: dict[str, Any] = {
            "schedule": "@hourly",
            "jobTemplate": {"spec": {"template": template}},
        }
    else:
        spec = {"template": template}
    return {"apiVersion": kind_info.api_version, "kind": kind, "metadata": metadata, "spec": spec}


ALL_KINDS = [kind.kind for kind in validation.WORKLOAD_KINDS]
TEMPLATE_KINDS = [kind for kind in ALL_KINDS if kind != "Pod"]
TEMPLATE_LABELS = {
    "Deployment": "spec.template.metadata.labels",
    "StatefulSet": "spec.template.metadata.labels",
    "DaemonSet": "spec.template.metadata.labels",
    "ReplicaSet": "spec.template.metadata.labels",
    "Job": "spec.template.metadata.labels",
    "CronJob": "spec.jobTemplate.spec.template.metadata.labels",
}


def rules(violations: list[validation.Violation]) -> list[str]:
    return [violation.rule for violation in violations]


# -- kinds and templates ----------------------------------------------------------------------


def test_the_seven_kinds_are_covered() -> None:
    assert ALL_KINDS == [
        "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod",
    ]  # fmt: skip


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("sensitivity", ["public", "internal"])
def test_a_well_labelled_workload_passes(kind: str, sensitivity: str) -> None:
    labels = {**GOOD_LABELS, "hush.dev/sensitivity": sensitivity}
    workload = build_workload(kind, labels=labels, template_labels=labels)
    assert validation.static_violations(workload) == []


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("sensitivity", ["confidential", "restricted"])
def test_a_sensitive_workload_passes_with_digests_and_a_policy(kind: str, sensitivity: str) -> None:
    labels = {**GOOD_LABELS, "hush.dev/sensitivity": sensitivity}
    workload = build_workload(
        kind,
        labels=labels,
        template_labels=labels,
        images=(PINNED, f"nginx:1.27@{DIGEST}"),
        init_images=(PINNED,),
        annotations={"hush.dev/policy": "census"},
    )
    assert validation.static_violations(workload) == []


@pytest.mark.parametrize("kind", TEMPLATE_KINDS)
def test_labels_are_required_on_the_workload_and_on_its_pod_template(kind: str) -> None:
    workload = build_workload(kind, labels={}, template_labels={"app": "web"})
    violations = validation.static_violations(workload)
    assert [(v.rule, v.problem.rsplit(" ", 1)[-1]) for v in violations] == [
        ("team-label", "metadata.labels"),
        ("sensitivity-label", "metadata.labels"),
        ("team-label", TEMPLATE_LABELS[kind]),
        ("sensitivity-label", TEMPLATE_LABELS[kind]),
    ]
    assert {v.kind for v in violations} == {kind}
    assert {(v.namespace, v.name) for v in violations} == {("team-a", "web")}


@pytest.mark.parametrize("kind", TEMPLATE_KINDS)
def test_the_pod_template_alone_can_be_missing_labels(kind: str) -> None:
    workload = build_workload(kind, template_labels={"app": "web"})
    violations = validation.static_violations(workload)
    assert rules(violations) == ["team-label", "sensitivity-label"]
    assert all(TEMPLATE_LABELS[kind] in v.problem for v in violations)


def test_a_bare_pod_is_its_own_template_and_is_reported_once() -> None:
    pod = build_workload("Pod", labels={})
    violations = validation.static_violations(pod)
    assert rules(violations) == ["team-label", "sensitivity-label"]
    assert violations[0].message == (
        "Pod team-a/web: label hush.dev/team is missing from metadata.labels "
        "(fix: add `hush.dev/team: <team>` to metadata.labels)"
    )


def test_an_empty_label_value_counts_as_missing() -> None:
    workload = build_workload("Deployment", labels={**GOOD_LABELS, "hush.dev/team": ""})
    assert rules(validation.static_violations(workload)) == ["team-label"]


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_an_unknown_sensitivity_is_refused_with_the_allowed_values(kind: str) -> None:
    labels = {**GOOD_LABELS, "hush.dev/sensitivity": "secret"}
    workload = build_workload(kind, labels=labels, template_labels=labels)
    violations = validation.static_violations(workload)
    assert set(rules(violations)) == {"sensitivity-value"}
    assert violations[0].text == (
        "label hush.dev/sensitivity on metadata.labels is secret, not one of public, internal, "
        "confidential, restricted (fix: set `hush.dev/sensitivity: "
        "<public|internal|confidential|restricted>` on metadata.labels)"
    )


@pytest.mark.parametrize("label", ["hush.dev/team", "hush.dev/sensitivity"])
def test_workload_and_template_must_agree(label: str) -> None:
    other = {"hush.dev/team": "fraud", "hush.dev/sensitivity": "public"}[label]
    workload = build_workload("StatefulSet", template_labels={**GOOD_LABELS, label: other})
    (violation,) = validation.static_violations(workload)
    assert violation.rule == "labels-match"
    assert violation.problem == (
        f"label {label} is {GOOD_LABELS[label]} on metadata.labels but {other} on "
        "spec.template.metadata.labels"
    )
    assert violation.fix == f"set `{label}: {GOOD_LABELS[label]}` on spec.template.metadata.labels"


def test_the_strictest_sensitivity_decides_the_image_rules() -> None:
    workload = build_workload(
        "Deployment",
        labels={**GOOD_LABELS, "hush.dev/sensitivity": "public"},
        template_labels={**GOOD_LABELS, "hush.dev/sensitivity": "restricted"},
    )
    assert validation.effective_sensitivity(workload) == "restricted"
    found = rules(validation.static_violations(workload))
    assert found == ["labels-match", "image-digest", "policy-annotation"]


# -- images and the policy annotation ---------------------------------------------------------


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("sensitivity", ["confidential", "restricted"])
def test_sensitive_workloads_need_every_image_pinned(kind: str, sensitivity: str) -> None:
    labels = {**GOOD_LABELS, "hush.dev/sensitivity": sensitivity}
    workload = build_workload(
        kind,
        labels=labels,
        template_labels=labels,
        images=("registry.local:5000/team/app:1.2", PINNED),
        init_images=("busybox",),
        annotations={"hush.dev/policy": "census"},
    )
    violations = validation.static_violations(workload)
    assert rules(violations) == ["image-digest", "image-digest"]
    assert violations[0].problem == (
        "container c0 runs image registry.local:5000/team/app:1.2, which is not pinned by "
        f"digest as hush.dev/sensitivity={sensitivity} requires"
    )
    assert violations[0].fix == (
        "pin image registry.local:5000/team/app:1.2 as registry.local:5000/team/app@sha256:<digest>"
    )
    assert violations[1].fix == "pin image busybox as busybox@sha256:<digest>"


@pytest.mark.parametrize(
    ("image", "pinned"),
    [
        ("nginx", False),
        ("nginx:1.27", False),
        ("nginx@sha256:abc", False),  # not a whole digest
        (f"nginx@{DIGEST}", True),
        (f"nginx:1.27@{DIGEST}", True),
        (f"localhost:5000/a/b@{DIGEST}", True),
        (f"nginx@{DIGEST.upper()}", False),  # digests are lowercase hex
    ],
)
def test_digest_pinning(image: str, pinned: bool) -> None:
    assert validation.is_pinned_by_digest(image) is pinned


@pytest.mark.parametrize(
    ("image", "repository"),
    [
        ("nginx", "nginx"),
        ("nginx:1.27", "nginx"),
        ("localhost:5000/nginx", "localhost:5000/nginx"),
        ("localhost:5000/team/nginx:1.27", "localhost:5000/team/nginx"),
        ("nginx@sha256:abc", "nginx"),
        ("ghcr.io/a/b:1@sha256:abc", "ghcr.io/a/b"),
    ],
)
def test_the_suggested_pin_keeps_registry_and_repository(image: str, repository: str) -> None:
    assert validation.image_repository(image) == repository


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_public_and_internal_workloads_may_run_tags(kind: str) -> None:
    workload = build_workload(kind, images=("nginx:latest",))
    assert validation.static_violations(workload) == []


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_sensitive_workloads_need_a_policy_annotation_on_the_pod_template(kind: str) -> None:
    labels = {**GOOD_LABELS, "hush.dev/sensitivity": "confidential"}
    workload = build_workload(kind, labels=labels, template_labels=labels, images=(PINNED,))
    (violation,) = validation.static_violations(workload)
    location = TEMPLATE_LABELS.get(kind, "metadata.labels").replace(".labels", ".annotations")
    assert violation.rule == "policy-annotation"
    assert violation.text == (
        f"annotation hush.dev/policy is missing from {location}, which "
        "hush.dev/sensitivity=confidential requires (fix: add `hush.dev/policy: "
        f"<dppolicy-name>` to {location})"
    )


def test_a_policy_annotation_on_the_workload_itself_does_not_count() -> None:
    labels = {**GOOD_LABELS, "hush.dev/sensitivity": "confidential"}
    workload = build_workload("Deployment", labels=labels, template_labels=labels, images=(PINNED,))
    workload["metadata"]["annotations"] = {"hush.dev/policy": "census"}
    assert rules(validation.static_violations(workload)) == ["policy-annotation"]


# -- the lookup rule --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_the_named_policy_must_exist(kind: str) -> None:
    workload = build_workload(kind, annotations={"hush.dev/policy": "census"})
    assert (
        validation.policy_reference_violations(workload, policy_exists={"census"}.__contains__)
        == []
    )
    (violation,) = validation.policy_reference_violations(workload, policy_exists=lambda _: False)
    location = TEMPLATE_LABELS.get(kind, "metadata.labels").replace(".labels", ".annotations")
    assert violation.rule == "policy-exists"
    assert violation.message == (
        f"{kind} team-a/web: annotation hush.dev/policy on {location} names DPPolicy census, "
        "which does not exist in namespace team-a (fix: create DPPolicy team-a/census, or set "
        f"`hush.dev/policy` on {location} to one that `kubectl get dppolicies -n team-a` lists)"
    )


def test_no_policy_annotation_means_no_lookup() -> None:
    def must_not_be_called(name: str) -> bool:
        raise AssertionError(f"looked up {name}")

    workload = build_workload("Deployment")
    assert validation.policy_reference_violations(workload, policy_exists=must_not_be_called) == []


def test_all_violations_is_static_then_lookup() -> None:
    workload = build_workload("Job", labels={}, annotations={"hush.dev/policy": "gone"})
    found = validation.all_violations(workload, policy_exists=lambda _: False)
    assert rules(found) == ["team-label", "sensitivity-label", "policy-exists"]


def test_the_request_namespace_wins_over_metadata() -> None:
    workload = build_workload("Deployment", labels={})
    del workload["metadata"]["namespace"]
    violations = validation.static_violations(workload, namespace="team-b")
    assert {v.namespace for v in violations} == {"team-b"}


def test_an_object_named_by_the_apiserver_is_called_by_its_generate_name() -> None:
    pod = build_workload("Pod", labels={})
    pod["metadata"] = {"generateName": "web-", "namespace": "team-a"}
    assert validation.static_violations(pod)[0].object_reference == "Pod team-a/web-<generated>"


def test_other_kinds_are_refused_with_the_supported_ones() -> None:
    with pytest.raises(validation.UnsupportedKindError, match="Deployment, StatefulSet"):
        validation.static_violations({"kind": "ConfigMap", "metadata": {"name": "x"}})


# -- messages and commands --------------------------------------------------------------------


def test_a_denial_names_the_object_once_then_every_problem_and_fix() -> None:
    workload = build_workload(
        "Deployment",
        labels={"hush.dev/team": "payments", "hush.dev/sensitivity": "restricted"},
        template_labels={"hush.dev/team": "fraud"},
        images=("registry:5000/nginx:1.27",),
    )
    assert validation.describe(validation.static_violations(workload)) == (
        "Deployment team-a/web: "
        "label hush.dev/sensitivity is missing from spec.template.metadata.labels (fix: add "
        "`hush.dev/sensitivity: <public|internal|confidential|restricted>` to "
        "spec.template.metadata.labels); "
        "label hush.dev/team is payments on metadata.labels but fraud on "
        "spec.template.metadata.labels (fix: set `hush.dev/team: payments` on "
        "spec.template.metadata.labels); "
        "container c0 runs image registry:5000/nginx:1.27, which is not pinned by digest as "
        "hush.dev/sensitivity=restricted requires (fix: pin image registry:5000/nginx:1.27 as "
        "registry:5000/nginx@sha256:<digest>); "
        "annotation hush.dev/policy is missing from spec.template.metadata.annotations, which "
        "hush.dev/sensitivity=restricted requires (fix: add `hush.dev/policy: <dppolicy-name>` "
        "to spec.template.metadata.annotations)"
    )


def test_describe_groups_problems_by_object() -> None:
    first = validation.static_violations(build_workload("Pod", labels={}, name="a"))
    second = validation.static_violations(build_workload("Pod", labels={}, name="b"))
    lines = validation.describe([*first, *second]).splitlines()
    assert [line.split(":")[0] for line in lines] == ["Pod team-a/a", "Pod team-a/b"]


def test_commands_fix_existing_objects() -> None:
    labels = {"hush.dev/sensitivity": "restricted"}
    workload = build_workload("CronJob", labels=labels, template_labels=labels)
    commands = [v.command for v in validation.static_violations(workload)]
    assert commands == [
        "kubectl label --overwrite -n team-a cronjob/web hush.dev/team=<team>",
        "kubectl patch -n team-a cronjob/web --type=merge -p "
        '\'{"spec":{"jobTemplate":{"spec":{"template":{"metadata":{"labels":'
        '{"hush.dev/team":"<team>"}}}}}}}\'',
        "kubectl set image -n team-a cronjob/web c0=nginx@sha256:<digest>",
        "kubectl patch -n team-a cronjob/web --type=merge -p "
        '\'{"spec":{"jobTemplate":{"spec":{"template":{"metadata":{"annotations":'
        '{"hush.dev/policy":"<dppolicy-name>"}}}}}}}\'',
    ]


def test_a_job_template_cannot_be_patched_so_only_the_manifest_fix_is_given() -> None:
    labels = {"hush.dev/sensitivity": "restricted", "hush.dev/team": "a"}
    workload = build_workload(
        "Job", labels=labels, template_labels={"hush.dev/sensitivity": "restricted"}
    )
    violations = validation.static_violations(workload)
    assert [(v.rule, v.command) for v in violations] == [
        ("team-label", None),
        ("image-digest", None),
        ("policy-annotation", None),
    ]


def test_a_bare_pod_is_labelled_in_place_but_not_annotated() -> None:
    labels = {"hush.dev/sensitivity": "restricted"}
    violations = validation.static_violations(
        build_workload("Pod", labels=labels, images=(PINNED,))
    )
    assert [(v.rule, v.command) for v in violations] == [
        ("team-label", "kubectl label --overwrite -n team-a pod/web hush.dev/team=<team>"),
        ("policy-annotation", None),  # injection happens at creation: recreate the pod
    ]


# -- ownership and system controllers ---------------------------------------------------------


def test_controller_owned_objects_are_recognised() -> None:
    pod = build_workload("Pod")
    assert not validation.has_controller_owner(pod)
    pod["metadata"]["ownerReferences"] = [{"kind": "ReplicaSet", "name": "x", "controller": False}]
    assert not validation.has_controller_owner(pod)
    pod["metadata"]["ownerReferences"].append(
        {"kind": "ReplicaSet", "name": "y", "controller": True}
    )
    assert validation.has_controller_owner(pod)


@pytest.mark.parametrize(
    ("username", "exempt"),
    [
        ("system:serviceaccount:kube-system:replicaset-controller", True),
        ("system:serviceaccount:kube-system:generic-garbage-collector", True),
        ("system:kube-controller-manager", True),
        ("system:serviceaccount:team-a:kube-system", False),
        ("alice", False),
    ],
)
def test_system_controllers(username: str, exempt: bool) -> None:
    assert validation.is_system_controller(username) is exempt


# -- exec, attach, ephemeral containers -------------------------------------------------------


def restricted_pod() -> dict[str, Any]:
    labels = {**GOOD_LABELS, "hush.dev/sensitivity": "restricted"}
    return build_workload("Pod", labels=labels, name="db-0")


@pytest.mark.parametrize("subresource", validation.POD_SUBRESOURCES)
def test_access_to_pods_that_are_not_restricted_is_allowed(
    subresource: validation.PodSubresource,
) -> None:
    for sensitivity in ("public", "internal", "confidential"):
        pod = build_workload("Pod", labels={**GOOD_LABELS, "hush.dev/sensitivity": sensitivity})
        decision = validation.decide_pod_access(
            pod=pod,
            subresource=subresource,
            username="alice",
            user_groups=[],
            break_glass_group="hush-break-glass",
        )
        assert decision == validation.PodAccessDecision(verdict="allowed")


@pytest.mark.parametrize(
    ("subresource", "action"),
    [
        ("exec", "exec into"),
        ("attach", "attach to"),
        ("ephemeralcontainers", "add an ephemeral container to"),
    ],
)
def test_access_to_restricted_pods_is_denied_with_the_way_out(
    subresource: validation.PodSubresource, action: str
) -> None:
    decision = validation.decide_pod_access(
        pod=restricted_pod(),
        subresource=subresource,
        username="alice",
        user_groups=["developers", "system:authenticated"],
        break_glass_group="hush-break-glass",
    )
    assert decision.verdict == "denied"
    assert decision.violation is not None
    assert decision.violation.rule == "restricted-pod-access"
    assert decision.violation.message == (
        f"Pod team-a/db-0: alice may not {action} a pod labelled hush.dev/sensitivity=restricted "
        "(fix: ask a member of group hush-break-glass (break-glass; each use is recorded in an "
        "Event), or reproduce the problem in a pod that is not restricted)"
    )
    assert decision.event_message == ""


def test_port_forward_to_a_restricted_pod_is_denied_and_points_at_the_service() -> None:
    decision = validation.decide_pod_access(
        pod=restricted_pod(),
        subresource="portforward",
        username="alice",
        user_groups=["developers"],
        break_glass_group="hush-break-glass",
    )
    assert decision.verdict == "denied"
    assert decision.violation is not None
    assert decision.violation.rule == "restricted-pod-access"
    assert decision.violation.message == (
        "Pod team-a/db-0: alice may not port-forward to a pod labelled "
        "hush.dev/sensitivity=restricted (fix: ask a member of group hush-break-glass "
        "(break-glass; each use is recorded in an Event), or query it through its Service "
        "(the hush-sidecar's port answers with noise), or reproduce the problem in a pod "
        "that is not restricted)"
    )


def test_port_forward_break_glass_is_recorded_like_exec() -> None:
    decision = validation.decide_pod_access(
        pod=restricted_pod(),
        subresource="portforward",
        username="oncall@example.com",
        user_groups=["hush-break-glass"],
        break_glass_group="hush-break-glass",
    )
    assert decision.verdict == "break-glass"
    assert decision.event_message == (
        "User oncall@example.com used break-glass group hush-break-glass to port-forward to "
        "Pod team-a/db-0 (hush.dev/sensitivity=restricted)"
    )


def test_without_a_break_glass_group_nobody_gets_in() -> None:
    decision = validation.decide_pod_access(
        pod=restricted_pod(),
        subresource="exec",
        username="admin",
        user_groups=["system:masters"],
        break_glass_group=None,
    )
    assert decision.verdict == "denied"
    assert decision.violation is not None
    assert "no break-glass group is configured" in decision.violation.fix


def test_break_glass_is_allowed_and_says_what_to_record() -> None:
    decision = validation.decide_pod_access(
        pod=restricted_pod(),
        subresource="exec",
        username="oncall@example.com",
        user_groups=["hush-break-glass"],
        break_glass_group="hush-break-glass",
    )
    assert decision == validation.PodAccessDecision(
        verdict="break-glass",
        event_message=(
            "User oncall@example.com used break-glass group hush-break-glass to exec into Pod "
            "team-a/db-0 (hush.dev/sensitivity=restricted)"
        ),
    )
    assert validation.BREAK_GLASS_EVENT_REASON == "BreakGlassAccess"


# -- namespaces and modes ---------------------------------------------------------------------


def namespace(name: str, mode: str | None) -> dict[str, Any]:
    labels = {"kubernetes.io/metadata.name": name}
    if mode is not None:
        labels["hush.dev/enforcement"] = mode
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


@pytest.mark.parametrize("mode", ["enforce", "warn", "audit"])
def test_the_label_gives_the_mode(mode: str) -> None:
    assert validation.enforcement_mode(namespace("team-a", mode), hush_namespace="hush") == mode


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("team-a", None),
        ("team-a", ""),
        ("team-a", "Enforce"),
        ("kube-system", "enforce"),
        ("kube-public", "enforce"),
        ("kube-node-lease", "enforce"),
        ("hush", "enforce"),
    ],
)
def test_unlabelled_invalid_and_excluded_namespaces_are_not_enforced(
    name: str, mode: str | None
) -> None:
    assert validation.enforcement_mode(namespace(name, mode), hush_namespace="hush") is None


def some_violations() -> list[validation.Violation]:
    return validation.static_violations(build_workload("Deployment", labels={}))


def test_enforce_denies_with_the_whole_description() -> None:
    violations = some_violations()
    outcome = validation.decide_outcome("enforce", violations)
    assert outcome == validation.AdmissionOutcome(
        allowed=False, message=validation.describe(violations)
    )
    assert outcome.message.startswith("Deployment team-a/web: label hush.dev/team is missing")


def test_warn_allows_with_one_warning_per_violation() -> None:
    violations = some_violations()
    outcome = validation.decide_outcome("warn", violations)
    assert outcome.allowed
    assert outcome.message == ""
    assert outcome.warnings == tuple(v.message for v in violations)
    assert outcome.audit_annotations == {}


def test_audit_allows_and_records() -> None:
    violations = some_violations()
    outcome = validation.decide_outcome("audit", violations)
    assert outcome.allowed
    assert outcome.warnings == ()
    assert outcome.audit_annotations == {"violations": validation.describe(violations)}


@pytest.mark.parametrize("mode", ["enforce", "warn", "audit"])
def test_no_violations_is_a_plain_allow(mode: validation.EnforcementMode) -> None:
    assert validation.decide_outcome(mode, []) == validation.AdmissionOutcome(allowed=True)


def test_exec_denials_follow_the_mode_too() -> None:
    decision = validation.decide_pod_access(
        pod=restricted_pod(),
        subresource="attach",
        username="alice",
        user_groups=[],
        break_glass_group=None,
    )
    assert decision.violation is not None
    assert not validation.decide_outcome("enforce", [decision.violation]).allowed
    assert validation.decide_outcome("warn", [decision.violation]).warnings


def test_the_rules_do_not_change_their_input() -> None:
    workload = build_workload("CronJob", labels={}, annotations={"hush.dev/policy": "x"})
    before = copy.deepcopy(workload)
    validation.all_violations(workload, policy_exists=lambda _: False)
    assert workload == before


# -- the webhook's pod-access path, with fake lookups -----------------------------------------


class _FakeCluster:
    def __init__(self, pod: dict[str, Any] | None) -> None:
        self.pod = pod
        self.events: list[tuple[str, str]] = []

    async def read_policy(self, namespace: str, name: str) -> dict[str, Any] | None:
        return None

    async def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.pod

    async def record_event(self, pod: Any, reason: str, message: str) -> None:
        self.events.append((reason, message))


def _connect(sub_resource: str, groups: tuple[str, ...] = ()) -> review.Request:
    return review.Request(
        uid="u-1",
        kind="PodPortForwardOptions",
        group="",
        resource="pods",
        sub_resource=sub_resource,
        operation="CONNECT",
        namespace="team-a",
        name="db-0",
        user=review.UserInfo(username="alice", groups=groups),
        object={"kind": "PodPortForwardOptions", "apiVersion": "v1"},
        old_object=None,
        dry_run=False,
    )


def test_the_webhook_refuses_port_forward_into_a_restricted_pod() -> None:
    cluster = _FakeCluster(restricted_pod())
    validator = webhook_validation.Validator(break_glass_group="hush-break-glass")
    answer = asyncio.run(validator(_connect("portforward"), "enforce", cluster))
    response = answer["response"]
    assert response["allowed"] is False
    assert "alice may not port-forward to a pod labelled" in response["status"]["message"]
    assert cluster.events == []


def test_the_webhook_lets_port_forward_into_other_pods_through() -> None:
    pod = build_workload("Pod", labels={**GOOD_LABELS, "hush.dev/sensitivity": "internal"})
    answer = asyncio.run(
        webhook_validation.Validator(break_glass_group=None)(
            _connect("portforward"), "enforce", _FakeCluster(pod)
        )
    )
    assert answer["response"]["allowed"] is True


def test_port_forward_with_break_glass_is_allowed_and_recorded() -> None:
    cluster = _FakeCluster(restricted_pod())
    validator = webhook_validation.Validator(break_glass_group="hush-break-glass")
    request = _connect("portforward", groups=("hush-break-glass",))
    answer = asyncio.run(validator(request, "enforce", cluster))
    assert answer["response"]["allowed"] is True
    assert cluster.events == [
        (
            "BreakGlassAccess",
            "User alice used break-glass group hush-break-glass to port-forward to Pod "
            "team-a/db-0 (hush.dev/sensitivity=restricted)",
        )
    ]
