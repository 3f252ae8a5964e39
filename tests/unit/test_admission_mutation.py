"""The Pod mutation (``hush.admission.mutation``) and AdmissionReview parsing/answers."""

from __future__ import annotations

import base64
import contextlib
import copy
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hush.admission import mutation, review
from hush.api import dppolicy
from hush.injection import sidecar
from hush.reconcile import dppolicy as policy_reconcile
from hush.sidecar import config

IMAGE = "registry.example/hush@sha256:" + "b" * 64
SETTINGS = mutation.Settings(
    image=IMAGE, accountant_url="https://hush-accountant.hush-system.svc:8443"
)
SPEC: dict[str, Any] = {
    "budgetRef": {"name": "survey", "team": "analytics"},
    "upstream": {"port": 8080},
    "routes": [
        {
            "path": "/count",
            "mechanism": "laplace",
            "epsilon": 0.1,
            "fields": [{"path": "$.count", "kind": "count"}],
        }
    ],
}
POLICY: dict[str, Any] = {
    "apiVersion": "hush.dev/v1alpha1",
    "kind": "DPPolicy",
    "metadata": {"name": "survey", "namespace": "team-a"},
    "spec": SPEC,
    "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Ready"}]},
}
HASH = policy_reconcile.policy_hash(dppolicy.DPPolicySpec.model_validate(SPEC), IMAGE)


def _pod(**spec_overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [
            {
                "name": "app",
                "image": "registry.example/app@sha256:" + "c" * 64,
                "ports": [{"name": "http", "containerPort": 8080}],
            }
        ]
    }
    spec.update(spec_overrides)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "annotations": {"hush.dev/policy": "survey"}},
        "spec": spec,
    }


def _pointer(path: str) -> list[str]:
    return [token.replace("~1", "/").replace("~0", "~") for token in path.split("/")[1:]]


def apply_patch(document: dict[str, Any], patch: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 ``add``/``replace`` (all the injector emits), applied as the apiserver would."""
    result = copy.deepcopy(document)
    for operation in patch:
        *parents, last = _pointer(operation["path"])
        target: Any = result
        for token in parents:
            target = target[int(token)] if isinstance(target, list) else target[token]
        if operation["op"] == "add" and isinstance(target, list):
            if last == "-":
                target.append(operation["value"])
            else:
                target.insert(int(last), operation["value"])
        elif operation["op"] in ("add", "replace"):
            if operation["op"] == "replace":
                assert last in target or isinstance(target, list)
            if isinstance(target, list):
                target[int(last)] = operation["value"]
            else:
                target[last] = operation["value"]
        else:
            raise AssertionError(f"unexpected op {operation['op']}")
    return result


def _mutate(pod: dict[str, Any], policy: dict[str, Any] | None = POLICY) -> mutation.Mutation:
    return mutation.mutate_pod(pod, namespace="team-a", policy=policy, settings=SETTINGS)


def test_injects_a_native_sidecar_that_takes_the_apps_port_name() -> None:
    decided = _mutate(_pod())
    assert decided.allowed
    assert decided.injected
    assert decided.policy_hash == HASH
    pod = apply_patch(_pod(), list(decided.patch))
    (injected,) = pod["spec"]["initContainers"]
    assert injected["name"] == sidecar.CONTAINER_NAME
    assert injected["restartPolicy"] == "Always"
    assert injected["image"] == IMAGE
    assert injected["ports"][0] == {"name": "http", "containerPort": 15080, "protocol": "TCP"}
    assert pod["spec"]["containers"][0]["ports"][0]["name"] == mutation.UPSTREAM_PORT_NAME
    assert pod["metadata"]["labels"] == {mutation.POLICY_LABEL: "survey"}
    assert pod["metadata"]["annotations"] == {
        "hush.dev/policy": "survey",
        "hush.dev/injected": mutation.INJECTOR_VERSION,
        "hush.dev/policy-hash": HASH,
    }
    assert pod["spec"]["volumes"] == [
        sidecar.build_accountant_volume(ca_config_map=mutation.ACCOUNTANT_CA_CONFIG_MAP)
    ]
    security = injected["securityContext"]
    assert security["runAsNonRoot"]
    assert security["readOnlyRootFilesystem"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert injected["resources"]["limits"]
    assert injected["resources"]["requests"]
    baked = config.load(injected["env"][0]["value"])
    assert baked.policy_hash == HASH
    assert baked.upstream_port == 8080
    assert baked.listen_port == 15080
    assert baked.admin_port == 15090
    assert decided.warnings == ()


def test_running_the_webhook_on_its_own_output_changes_nothing() -> None:
    once = apply_patch(_pod(), list(_mutate(_pod()).patch))
    again = _mutate(once)
    assert again.allowed
    assert again.patch == ()


def test_existing_init_containers_and_volumes_are_kept_and_appended_to() -> None:
    pod = _pod(
        initContainers=[{"name": "migrate", "image": "x@sha256:" + "d" * 64}],
        volumes=[{"name": "data", "emptyDir": {}}],
    )
    patched = apply_patch(pod, list(_mutate(pod).patch))
    assert [c["name"] for c in patched["spec"]["initContainers"]] == ["migrate", "hush-sidecar"]
    assert [v["name"] for v in patched["spec"]["volumes"]] == ["data", sidecar.VOLUME_NAME]


def test_ports_the_pod_already_uses_are_not_taken() -> None:
    pod = _pod()
    pod["spec"]["containers"][0]["ports"].append({"containerPort": 15080})
    patched = apply_patch(pod, list(_mutate(pod).patch))
    ports = [port["containerPort"] for port in patched["spec"]["initContainers"][0]["ports"]]
    assert ports == [15090, 15081]


def test_an_unnamed_app_port_is_named_and_warned_about() -> None:
    pod = _pod()
    del pod["spec"]["containers"][0]["ports"][0]["name"]
    decided = _mutate(pod)
    patched = apply_patch(pod, list(decided.patch))
    assert patched["spec"]["containers"][0]["ports"][0]["name"] == mutation.UPSTREAM_PORT_NAME
    assert patched["spec"]["initContainers"][0]["ports"][0]["name"] == "hush-dp"
    assert any("bypass the sidecar" in warning for warning in decided.warnings)


def test_unannotated_pods_are_left_alone() -> None:
    pod = _pod()
    del pod["metadata"]["annotations"]
    assert _mutate(pod) == mutation.Mutation(allowed=True)


@pytest.mark.parametrize(
    ("pod", "policy", "expected"),
    [
        (_pod(hostNetwork=True), POLICY, "uses the host network"),
        (_pod(), None, "DPPolicy survey does not exist in namespace team-a"),
        (
            _pod(),
            {
                **POLICY,
                "status": {
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "False",
                            "reason": "BudgetNotFound",
                            "message": "PrivacyBudget survey does not exist",
                        }
                    ]
                },
            },
            "is not Ready (BudgetNotFound: PrivacyBudget survey does not exist)",
        ),
        (_pod(), {**POLICY, "spec": {"upstream": {"port": 1}}}, "does not parse"),
    ],
)
def test_refusals_say_why_and_how_to_fix(
    pod: dict[str, Any], policy: dict[str, Any] | None, expected: str
) -> None:
    decided = _mutate(pod, policy)
    assert not decided.allowed
    assert expected in decided.message
    assert decided.patch == ()


def test_the_sidecar_image_must_be_pinned_by_digest() -> None:
    with pytest.raises(ValueError, match="not pinned by digest"):
        mutation.Settings(image="registry.example/hush:1.0", accountant_url="https://a")


def _review(request: dict[str, Any]) -> bytes:
    return json.dumps(
        {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}
    ).encode()


def test_a_review_is_parsed_into_what_decisions_use() -> None:
    parsed = review.parse(
        _review(
            {
                "uid": "u-1",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "operation": "CREATE",
                "namespace": "team-a",
                "userInfo": {"username": "alice", "groups": ["devs"]},
                "object": {"metadata": {"generateName": "web-"}},
                "dryRun": True,
            }
        )
    )
    assert parsed.uid == "u-1"
    assert parsed.kind == "Pod"
    assert parsed.resource == "pods"
    assert parsed.user == review.UserInfo(username="alice", groups=("devs",))
    assert parsed.dry_run
    assert parsed.describe() == "Pod team-a/web-<generated>"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"not json", "not JSON"),
        (b"[]", "not a JSON object"),
        (json.dumps({"kind": "AdmissionReview"}).encode(), "admissionReviewVersions"),
        (_review({"kind": {"kind": "Pod"}}), "request.uid is missing"),
        (_review({"uid": "u", "operation": "CREATE"}), "request.kind.kind is missing"),
        (_review({"uid": "u", "kind": {"kind": "Pod"}}), "request.operation is missing"),
        (
            _review({"uid": "u", "kind": {"kind": "Pod"}, "operation": "CREATE", "object": 3}),
            "request.object must be an object",
        ),
    ],
)
def test_a_malformed_review_gets_a_well_formed_denial(body: bytes, expected: str) -> None:
    with pytest.raises(review.MalformedReviewError) as raised:
        review.parse(body)
    answer = review.deny_malformed(raised.value)
    assert answer["apiVersion"] == "admission.k8s.io/v1"
    assert answer["kind"] == "AdmissionReview"
    assert answer["response"]["allowed"] is False
    assert answer["response"]["status"]["code"] == 400
    assert expected in answer["response"]["status"]["message"]


@given(st.binary(max_size=512))
def test_parsing_never_raises_anything_but_malformed(body: bytes) -> None:
    with contextlib.suppress(review.MalformedReviewError):
        review.parse(body)


def test_an_allowed_answer_carries_a_base64_json_patch_and_clipped_warnings() -> None:
    patch = [{"op": "add", "path": "/metadata/labels", "value": {"a": "b"}}]
    answer = review.allow("u", patch=patch, warnings=["x" * 1000])
    response = answer["response"]
    assert response["patchType"] == "JSONPatch"
    assert json.loads(base64.b64decode(response["patch"])) == patch
    assert review.decode_patch(answer) == patch
    assert len(response["warnings"][0]) == review.MAX_WARNING_LENGTH


def test_existing_labels_are_kept_and_the_policy_label_added() -> None:
    pod = _pod()
    pod["metadata"]["labels"] = {"app": "web"}
    patched = apply_patch(pod, list(_mutate(pod).patch))
    assert patched["metadata"]["labels"] == {"app": "web", mutation.POLICY_LABEL: "survey"}


def test_a_policy_name_too_long_for_a_label_is_refused() -> None:
    pod = _pod()
    pod["metadata"]["annotations"]["hush.dev/policy"] = "p" * 64
    decided = _mutate(pod, {**POLICY, "metadata": {"name": "p" * 64}})
    assert not decided.allowed
    assert "longer than 63 characters" in decided.message


def test_the_encoded_patch_is_exactly_the_patch() -> None:
    for pod in (
        _pod(),
        _pod(initContainers=[{"name": "migrate", "image": "x@sha256:" + "d" * 64}]),
    ):
        decided = _mutate(pod)
        assert json.loads(decided.patch_json) == list(decided.patch)
        assert review.decode_patch(review.allow("u", patch_json=decided.patch_json)) == list(
            decided.patch
        )
