"""The ValidatingAdmissionPolicies on a real apiserver, and ``hush audit`` on what they let by.

The module installs the generated policies under a unique name prefix, with a throwaway
namespace as "Hush's namespace" and an impersonated ServiceAccount as the operator, and
removes them afterwards: the bindings only bite in namespaces labelled
``hush.dev/enforcement``, and the namespace guard is gone before the next module runs.

Every denial and warning is compared with ``validation.describe`` of the same object: the
CEL in the apiserver and the Python rules must say the same thing.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from hush.admission import policies, validation

import devcluster
import waiting

DIGEST = "sha256:" + "0123456789abcdef" * 4
PINNED_IMAGE = f"registry.k8s.io/pause@{DIGEST}"
OPERATOR_SERVICE_ACCOUNT = "hush-operator"
PLATFORM_GROUP = "hush-e2e-platform-admins"


@dataclasses.dataclass(frozen=True)
class Installed:
    settings: policies.PolicySettings
    operator: client.ApiClient  # impersonates the operator's ServiceAccount
    intruder: client.ApiClient  # a ServiceAccount that may patch namespaces, but is not Hush
    platform_admin: client.ApiClient  # a user in the configured enforcement-label group
    probe_namespace: str  # labelled back and forth by wait_for_namespace_labels

    def wait_for_namespace_labels(self, api_client: client.ApiClient) -> None:
        """Wait until the policies see every namespace label written so far.

        Bindings select namespaces through the apiserver's namespace informer, which lags
        the write by a few milliseconds: a workload created right after its namespace was
        labelled may not be judged yet. The informer applies changes in order, so once a
        *later* change of the probe namespace shows in an admission answer, every earlier
        label does too (including ``audit``, which no answer shows).
        """
        probe = self.probe_namespace
        current = client.CoreV1Api(api_client).read_namespace(probe).metadata.labels or {}
        enforce = current.get(validation.ENFORCEMENT_LABEL) != "enforce"
        answer = label_namespace(self.operator, probe, "enforce" if enforce else None)
        assert answer.status == 200, answer.body
        expected_status = 403 if enforce else 201
        waiting.wait_for(
            lambda: (
                create(api_client, probe, violating("Pod"), dry_run=True).status == expected_status
            ),
            timeout=30,
            interval=0.05,
            description=f"the policies to see namespace {probe} {'' if enforce else 'un'}enforced",
        )


@dataclasses.dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    warnings: list[str]

    @property
    def message(self) -> str:
        return str(self.body.get("message", ""))


# -- talking to the apiserver -----------------------------------------------------------------


def impersonating(kubeconfig: Path, user: str, group: str | None = None) -> client.ApiClient:
    """A client acting as ``user`` (and ``group``): the admin's certificate may impersonate."""
    api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig)
    )
    api.set_default_header("Impersonate-User", user)  # type: ignore[no-untyped-call]
    if group is not None:
        api.set_default_header("Impersonate-Group", group)  # type: ignore[no-untyped-call]
    return api


_WARNING = re.compile(r'^\d{3} \S+ "(?P<text>(?:[^"\\]|\\.)*)"')


def send(
    api: client.ApiClient,
    method: str,
    path: str,
    body: object = None,
    *,
    content_type: str = "application/json",
    dry_run: bool = False,
) -> Answer:
    """One request; the answer with its admission warnings (the ``Warning`` headers)."""
    query = [("dryRun", "All")] if dry_run else []
    method, url, headers, serialized, _ = api.param_serialize(
        method,
        path,
        query_params=query,
        body=body,
        header_params={"Content-Type": content_type, "Accept": "application/json"},
        auth_settings=["BearerToken"],
    )
    response = api.call_api(method, url, header_params=headers, body=serialized)
    data = response.read()
    warnings = []
    for value in response.headers.getlist("Warning"):
        match = _WARNING.match(value)
        warnings.append(match.group("text").replace('\\"', '"') if match else value)
    return Answer(int(response.status), json.loads(data) if data else {}, warnings)


def collection_path(manifest: dict[str, Any], namespace: str) -> str:
    kind = validation.workload_kind(manifest)
    prefix = f"/apis/{kind.group}/{kind.version}" if kind.group else f"/api/{kind.version}"
    return f"{prefix}/namespaces/{namespace}/{kind.plural}"


def create(api: client.ApiClient, namespace: str, manifest: dict[str, Any], **kw: Any) -> Answer:
    return send(api, "POST", collection_path(manifest, namespace), manifest, **kw)


def label_namespace(api: client.ApiClient, name: str, value: str | None, **kw: Any) -> Answer:
    patch = {"metadata": {"labels": {validation.ENFORCEMENT_LABEL: value}}}
    return send(
        api,
        "PATCH",
        f"/api/v1/namespaces/{name}",
        patch,
        content_type="application/merge-patch+json",
        **kw,
    )


# -- workloads --------------------------------------------------------------------------------


def build_workload(
    kind: str,
    name: str,
    *,
    labels: dict[str, str],
    template_labels: dict[str, str] | None = None,
    image: str = "nginx:1.27",
    policy: str | None = None,
) -> dict[str, Any]:
    """A valid object of ``kind``; for a Pod, ``labels`` are the Pod's own."""
    pod_spec: dict[str, Any] = {"containers": [{"name": "app", "image": image}]}
    if kind in ("Job", "CronJob"):
        pod_spec["restartPolicy"] = "Never"
    template_metadata: dict[str, Any] = {
        "labels": {"app": name, **(labels if template_labels is None else template_labels)}
    }
    if policy is not None:
        template_metadata["annotations"] = {validation.POLICY_ANNOTATION: policy}
    template = {"metadata": template_metadata, "spec": pod_spec}
    selector = {"matchLabels": {"app": name}}
    info = next(k for k in validation.WORKLOAD_KINDS if k.kind == kind)
    metadata = {"name": name, "labels": dict(labels)}
    specs: dict[str, dict[str, Any]] = {
        "Deployment": {"replicas": 1, "selector": selector, "template": template},
        "StatefulSet": {"serviceName": name, "selector": selector, "template": template},
        "DaemonSet": {"selector": selector, "template": template},
        "ReplicaSet": {"replicas": 1, "selector": selector, "template": template},
        "Job": {"backoffLimit": 0, "template": template},
        "CronJob": {"schedule": "0 0 1 1 *", "jobTemplate": {"spec": {"template": template}}},
    }
    if kind == "Pod":
        metadata = {**template_metadata, "name": name}
        metadata["labels"] = dict(labels)
        return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}
    return {"apiVersion": info.api_version, "kind": kind, "metadata": metadata, "spec": specs[kind]}


ALL_KINDS = [kind.kind for kind in validation.WORKLOAD_KINDS]
GOOD = {validation.TEAM_LABEL: "payments", validation.SENSITIVITY_LABEL: "internal"}
RESTRICTED = {validation.TEAM_LABEL: "payments", validation.SENSITIVITY_LABEL: "restricted"}


def violating(kind: str, name: str = "bad") -> dict[str, Any]:
    """Several problems at once: missing and mismatched labels, a tag, no policy."""
    return build_workload(
        kind,
        name,
        labels={validation.SENSITIVITY_LABEL: "restricted"} if kind == "Pod" else RESTRICTED,
        template_labels={validation.TEAM_LABEL: "fraud"},
        image="registry.local:5000/team/app:1.2",
    )


def expected_message(manifest: dict[str, Any], namespace: str) -> str:
    return validation.describe(validation.static_violations(manifest, namespace=namespace))


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def installed(api_client: client.ApiClient, kubeconfig: Path) -> Iterator[Installed]:
    core = client.CoreV1Api(api_client)
    rbac = client.RbacAuthorizationV1Api(api_client)
    admission = client.AdmissionregistrationV1Api(api_client)
    token = secrets.token_hex(4)
    hush_namespace = f"hush-e2e-operator-{token}"
    settings = policies.PolicySettings(
        name_prefix=f"hush-e2e-{token}",
        hush_namespace=hush_namespace,
        operator_service_account=OPERATOR_SERVICE_ACCOUNT,
        enforcement_label_groups=(PLATFORM_GROUP,),
    )
    # The injected-pods policy is installed (so that it is type-checked) but not bound: no
    # injecting webhook runs in this module; refusing annotated pods without the sidecar is
    # tested with the webhook in e2e/test_admission_enforcement.py.
    injected = policies.injected_pods_policy_name(settings)
    manifests = [
        manifest
        for manifest in policies.all_manifests(settings)
        if not (
            manifest["kind"] == "ValidatingAdmissionPolicyBinding"
            and manifest["spec"]["policyName"] == injected
        )
    ]
    role_name = f"hush-e2e-{token}-namespaces"
    # Both ServiceAccounts and the group may patch namespaces: a refusal then comes from the
    # policy, not from RBAC.
    subjects = [
        {"kind": "ServiceAccount", "name": account, "namespace": hush_namespace}
        for account in (OPERATOR_SERVICE_ACCOUNT, "intruder")
    ]
    subjects.append(
        {"kind": "Group", "name": PLATFORM_GROUP, "apiGroup": "rbac.authorization.k8s.io"}
    )
    found = Installed(
        settings=settings,
        operator=impersonating(kubeconfig, settings.operator_username),
        intruder=impersonating(kubeconfig, f"system:serviceaccount:{hush_namespace}:intruder"),
        platform_admin=impersonating(kubeconfig, "carol", PLATFORM_GROUP),
        probe_namespace=f"{settings.name_prefix}-probe",
    )
    try:
        core.create_namespace({"metadata": {"name": hush_namespace}})
        core.create_namespace({"metadata": {"name": found.probe_namespace}})
        rbac.create_cluster_role(
            {
                "metadata": {"name": role_name},
                "rules": [
                    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "patch"]}
                ],
            }
        )
        rbac.create_cluster_role_binding(
            {
                "metadata": {"name": role_name},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": role_name,
                },
                "subjects": subjects,
            }
        )
        for manifest in manifests:
            if manifest["kind"] == "ValidatingAdmissionPolicy":
                admission.create_validating_admission_policy(manifest)
            else:
                admission.create_validating_admission_policy_binding(manifest)
        _wait_until_enforced(api_client, found)
        yield found
    finally:
        # Bindings first: a policy without bindings does nothing, the reverse would be a
        # binding to nothing. Then the rest; whatever was never created is skipped.
        deletions = [
            (
                admission.delete_validating_admission_policy
                if manifest["kind"] == "ValidatingAdmissionPolicy"
                else admission.delete_validating_admission_policy_binding,
                manifest["metadata"]["name"],
            )
            for manifest in reversed(manifests)
        ]
        deletions += [
            (rbac.delete_cluster_role_binding, role_name),
            (rbac.delete_cluster_role, role_name),
            (core.delete_namespace, hush_namespace),
            (core.delete_namespace, found.probe_namespace),
        ]
        for delete, name in deletions:
            try:
                delete(name)
            except ApiException as error:
                if error.status != 404:
                    raise
        for api in (found.operator, found.intruder, found.platform_admin):
            api.close()  # type: ignore[no-untyped-call]


def _wait_until_enforced(api_client: client.ApiClient, installed: Installed) -> None:
    """Policies take effect when the apiserver's informers have seen them: probe, bounded."""
    probe = installed.probe_namespace
    waiting.wait_for(
        lambda: label_namespace(api_client, probe, "enforce", dry_run=True).status == 403,
        timeout=60,
        description="the namespace guard to refuse the admin's label change",
    )
    assert label_namespace(installed.operator, probe, "enforce").status == 200
    waiting.wait_for(
        lambda: all(
            create(api_client, probe, violating(kind), dry_run=True).status == 403
            for kind in ("Deployment", "CronJob", "Pod")
        ),
        timeout=60,
        description="the workload policies to refuse workloads in an enforced namespace",
    )


@pytest.fixture
def enforced(
    api_client: client.ApiClient, installed: Installed, namespace: str
) -> Callable[[str], str]:
    """Labels the test namespace with a mode, as the operator; returns the namespace."""

    def label(mode: str) -> str:
        answer = label_namespace(installed.operator, namespace, mode)
        assert answer.status == 200, answer.body
        installed.wait_for_namespace_labels(api_client)
        return namespace

    return label


# -- the policies themselves ------------------------------------------------------------------


def test_every_expression_type_checks(api_client: client.ApiClient, installed: Installed) -> None:
    admission = client.AdmissionregistrationV1Api(api_client)
    names = [
        manifest["metadata"]["name"]
        for manifest in policies.all_manifests(installed.settings)
        if manifest["kind"] == "ValidatingAdmissionPolicy"
    ]

    def checked() -> list[dict[str, Any]] | None:
        found = [
            api_client.sanitize_for_serialization(  # type: ignore[no-untyped-call]
                admission.read_validating_admission_policy(name)
            )
            for name in names
        ]
        done = all(p.get("status", {}).get("observedGeneration") == 1 for p in found)
        return found if done else None

    for policy in waiting.wait_for(
        checked, timeout=60, description="type checking of the policies"
    ):
        assert policy["status"].get("typeChecking", {}).get("expressionWarnings") is None, policy


# -- workloads in enforce, warn, audit --------------------------------------------------------


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_enforce_denies_with_every_problem_and_its_fix(
    api_client: client.ApiClient, enforced: Callable[[str], str], kind: str
) -> None:
    namespace = enforced("enforce")
    manifest = violating(kind)
    answer = create(api_client, namespace, manifest)
    assert answer.status == 403, answer.body
    expected = expected_message(manifest, namespace)
    assert answer.message.endswith(f"denied request: {expected}"), answer.message
    assert f"{kind} {namespace}/bad:" in expected
    assert (
        "image registry.local:5000/team/app:1.2 as registry.local:5000/team/app@sha256:" in expected
    )


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_enforce_admits_well_marked_workloads(
    api_client: client.ApiClient, enforced: Callable[[str], str], kind: str
) -> None:
    namespace = enforced("enforce")
    public = create(api_client, namespace, build_workload(kind, "public", labels=GOOD))
    assert (public.status, public.warnings) == (201, []), public.body
    restricted = build_workload(
        kind, "restricted", labels=RESTRICTED, image=PINNED_IMAGE, policy="census"
    )
    answer = create(api_client, namespace, restricted)
    assert (answer.status, answer.warnings) == (201, []), answer.body


def test_controllers_still_create_pods_for_admitted_workloads(
    api_client: client.ApiClient, enforced: Callable[[str], str]
) -> None:
    namespace = enforced("enforce")
    assert (
        create(api_client, namespace, build_workload("Deployment", "web", labels=GOOD)).status
        == 201
    )
    core = client.CoreV1Api(api_client)
    waiting.wait_for(
        lambda: core.list_namespaced_pod(namespace, label_selector="app=web").items,
        timeout=60,
        description="the Deployment's pod (created by the ReplicaSet controller)",
    )


def test_updates_are_checked_too(
    api_client: client.ApiClient, enforced: Callable[[str], str]
) -> None:
    namespace = enforced("enforce")
    manifest = build_workload("Deployment", "web", labels=GOOD)
    assert create(api_client, namespace, manifest).status == 201
    answer = send(
        api_client,
        "PATCH",
        f"{collection_path(manifest, namespace)}/web",
        {"metadata": {"labels": {validation.TEAM_LABEL: None}}},
        content_type="application/merge-patch+json",
    )
    assert answer.status == 403
    changed = copy.deepcopy(manifest)
    del changed["metadata"]["labels"][validation.TEAM_LABEL]
    assert answer.message.endswith(expected_message(changed, namespace))


@pytest.mark.parametrize("kind", ["Deployment", "CronJob", "Pod"])
def test_warn_admits_with_the_same_message_as_a_warning(
    api_client: client.ApiClient, enforced: Callable[[str], str], kind: str
) -> None:
    namespace = enforced("warn")
    manifest = violating(kind)
    answer = create(api_client, namespace, manifest)
    assert answer.status == 201, answer.body
    (warning,) = answer.warnings
    assert warning.endswith(f"-warn': {expected_message(manifest, namespace)}"), warning


@pytest.mark.parametrize("kind", ["Deployment", "CronJob", "Pod"])
def test_audit_admits_without_a_word(
    api_client: client.ApiClient, enforced: Callable[[str], str], kind: str
) -> None:
    namespace = enforced("audit")
    answer = create(api_client, namespace, violating(kind))
    assert (answer.status, answer.warnings) == (201, []), answer.body


def test_unlabelled_namespaces_are_not_checked(
    api_client: client.ApiClient, installed: Installed, namespace: str
) -> None:
    answer = create(api_client, namespace, violating("Deployment"))
    assert (answer.status, answer.warnings) == (201, []), answer.body


def test_hush_namespace_is_never_checked(
    api_client: client.ApiClient, installed: Installed
) -> None:
    hush_namespace = installed.settings.hush_namespace
    assert label_namespace(installed.operator, hush_namespace, "enforce").status == 200
    installed.wait_for_namespace_labels(api_client)
    answer = create(api_client, hush_namespace, violating("Pod"), dry_run=True)
    assert (answer.status, answer.warnings) == (201, []), answer.body


# -- the enforcement label --------------------------------------------------------------------


def test_only_the_operator_changes_the_enforcement_label(
    api_client: client.ApiClient, installed: Installed, namespace: str
) -> None:
    operator_user = installed.settings.operator_username
    refused = label_namespace(installed.intruder, namespace, "audit")
    assert refused.status == 403, refused.body
    assert refused.message.endswith(
        f"Namespace {namespace}: only the Hush operator ({operator_user}) may add, change or "
        f"remove label hush.dev/enforcement; system:serviceaccount:"
        f"{installed.settings.hush_namespace}:intruder tried to change it from (none) to audit "
        "(fix: leave hush.dev/enforcement as it is; ask the platform team that runs Hush to "
        "change the enforcement mode)"
    ), refused.message
    assert label_namespace(api_client, namespace, "audit").status == 403  # cluster admin too

    assert label_namespace(installed.operator, namespace, "enforce").status == 200
    assert label_namespace(installed.intruder, namespace, None).status == 403  # no removal
    assert label_namespace(installed.intruder, namespace, "warn").status == 403

    # Other changes to an enforced namespace go through.
    unrelated = send(
        installed.intruder,
        "PATCH",
        f"/api/v1/namespaces/{namespace}",
        {"metadata": {"labels": {"team": "payments"}}},
        content_type="application/merge-patch+json",
    )
    assert unrelated.status == 200, unrelated.body

    assert label_namespace(installed.operator, namespace, None).status == 200


def test_nobody_creates_a_namespace_with_the_label(
    api_client: client.ApiClient, installed: Installed
) -> None:
    answer = send(
        api_client,
        "POST",
        "/api/v1/namespaces",
        {
            "metadata": {
                "name": "hush-e2e-sneaky",
                "labels": {validation.ENFORCEMENT_LABEL: "audit"},
            }
        },
        dry_run=True,
    )
    assert answer.status == 403
    assert "tried to change it from (none) to audit" in answer.message


def test_the_operator_may_only_set_a_mode(installed: Installed, namespace: str) -> None:
    answer = label_namespace(installed.operator, namespace, "strict")
    assert answer.status == 403
    assert answer.message.endswith(
        f"Namespace {namespace}: label hush.dev/enforcement is strict, not one of enforce, warn, "
        "audit (fix: set `hush.dev/enforcement` to enforce, warn or audit, or remove it)"
    )


def test_the_configured_group_may_change_the_label(installed: Installed, namespace: str) -> None:
    assert label_namespace(installed.platform_admin, namespace, "warn").status == 200


# -- hush audit -------------------------------------------------------------------------------


def test_hush_audit_finds_a_workload_that_predates_enforcement(
    api_client: client.ApiClient, installed: Installed, namespace: str, kubeconfig: Path
) -> None:
    legacy = build_workload("Deployment", "legacy", labels={validation.TEAM_LABEL: "payments"})
    assert create(api_client, namespace, legacy).status == 201
    core = client.CoreV1Api(api_client)
    waiting.wait_for(
        lambda: core.list_namespaced_pod(namespace, label_selector="app=legacy").items,
        timeout=60,
        description="the legacy Deployment's pod",
    )
    assert label_namespace(installed.operator, namespace, "enforce").status == 200
    installed.wait_for_namespace_labels(api_client)

    environment = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    arguments = ("audit", "-n", namespace, "--hush-namespace", installed.settings.hush_namespace)
    result = devcluster.run_hush(*arguments, "--output", "json", env=environment, timeout=60)
    assert result.returncode == 1, result.stderr
    document = json.loads(result.stdout)
    assert document["namespaces"] == [{"name": namespace, "mode": "enforce"}]
    # The Deployment only: its ReplicaSet and Pod are the controllers' and are not reported.
    expected = validation.static_violations(legacy, namespace=namespace)
    assert [(v["kind"], v["name"], v["rule"], v["problem"]) for v in document["violations"]] == [
        ("Deployment", "legacy", v.rule, v.problem) for v in expected
    ]
    assert [v.rule for v in expected] == ["sensitivity-label", "sensitivity-label"]

    table = devcluster.run_hush(*arguments, env=environment, timeout=60)
    assert table.returncode == 1
    assert f"kubectl label --overwrite -n {namespace} deployment/legacy" in table.stdout
    assert "2 violation(s) in 1 object(s) across 1 namespace(s)" in table.stderr

    # Enforcement does not stop the existing workload from scaling (the scale subresource
    # and the ReplicaSet controller are not judged) ...
    apps = client.AppsV1Api(api_client)
    apps.patch_namespaced_deployment_scale("legacy", namespace, {"spec": {"replicas": 2}})
    waiting.wait_for(
        lambda: len(core.list_namespaced_pod(namespace, label_selector="app=legacy").items) == 2,
        timeout=60,
        description="the legacy Deployment to scale to 2 pods",
    )
    # ... but changing it requires fixing it.
    with pytest.raises(ApiException) as refused:
        apps.patch_namespaced_deployment(
            "legacy", namespace, {"spec": {"template": {"metadata": {"annotations": {"x": "y"}}}}}
        )
    assert refused.value.status == 403
    assert "label hush.dev/sensitivity is missing from metadata.labels" in refused.value.body

    # Once labelled (as its fix says), the audit is clean.
    apps.patch_namespaced_deployment(
        "legacy",
        namespace,
        {"metadata": {"labels": GOOD}, "spec": {"template": {"metadata": {"labels": GOOD}}}},
    )
    clean = devcluster.run_hush(*arguments, env=environment, timeout=60)
    assert clean.returncode == 0, clean.stdout + clean.stderr


# -- the chart --------------------------------------------------------------------------------


def test_the_chart_renders_the_same_policies(kubectl: Path, uses_dev_cluster: bool) -> None:
    helm = kubectl.parent / "helm" if uses_dev_cluster else Path(shutil.which("helm") or "")
    if not helm.is_file():
        pytest.skip("helm is not available")
    result = subprocess.run(
        [
            str(helm),
            "template",
            "hush",
            str(devcluster.REPO_ROOT / "charts" / "hush"),
            "--namespace=hush-system",
            "--kube-version=1.36.0",
            "--set=admissionPolicies.enforcementLabelGroups={platform-admins}",
            f"--set=image.digest={DIGEST}",  # sidecar injection needs the image pinned
            f"--show-only=templates/{policies.CHART_TEMPLATE_NAME}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    documents = [document for document in yaml.safe_load_all(result.stdout) if document]
    assert documents == policies.all_manifests(
        policies.PolicySettings(
            name_prefix="hush",
            hush_namespace="hush-system",
            operator_service_account="hush",
            enforcement_label_groups=("platform-admins",),
        )
    )
