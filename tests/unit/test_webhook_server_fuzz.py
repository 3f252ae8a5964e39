"""Hostile and malformed AdmissionReview bodies against the webhook server's HTTP handlers.

The server runs in-process (aiohttp's test server, plain HTTP: TLS is not what is under
test) with a fake lookup. Whatever the body, the answer must be HTTP 200 with a well-formed
AdmissionReview, and nothing malformed is ever allowed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

from aiohttp import test_utils
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hush.admission import mutation, review, webhooks
from hush.webhook import server

SETTINGS = mutation.Settings(
    image="registry.example/hush@sha256:" + "b" * 64, accountant_url="https://accountant"
)
POLICY: dict[str, Any] = {
    "spec": {
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
}


class FakeCluster:
    async def read_policy(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return POLICY if name == "survey" else None

    async def read_namespace_labels(self, name: str) -> Mapping[str, str] | None:
        return {webhooks.ENFORCEMENT_LABEL: "enforce"}

    async def read_pod(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return None

    async def record_event(self, pod: Mapping[str, Any], reason: str, message: str) -> None:
        raise AssertionError("no event expected")


async def _post_all(bodies: list[bytes]) -> list[tuple[int, Any]]:
    app = server.WebhookServer(FakeCluster(), injection=SETTINGS, validate=None).application()
    async with test_utils.TestClient(test_utils.TestServer(app)) as http:
        answers = []
        for body in bodies:
            for path in (webhooks.MUTATE_PATH, webhooks.VALIDATE_PATH):
                reply = await http.post(path, data=body)
                answers.append((reply.status, json.loads(await reply.read())))
        return answers


def _post(*bodies: bytes) -> list[tuple[int, Any]]:
    return asyncio.run(_post_all(list(bodies)))


def _assert_well_formed(status: int, answer: Any) -> dict[str, Any]:
    assert status == 200
    assert answer["apiVersion"] == review.API_VERSION
    assert answer["kind"] == review.KIND
    response: dict[str, Any] = answer["response"]
    assert isinstance(response["allowed"], bool)
    assert isinstance(response["uid"], str)
    if not response["allowed"]:
        assert response["status"]["message"]
    return response


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=256) | JSON.map(lambda value: json.dumps(value).encode()))
def test_garbage_is_always_answered_with_a_denial(body: bytes) -> None:
    for status, answer in _post(body):
        response = _assert_well_formed(status, answer)
        assert response["allowed"] is False


def _review_of(pod: Any) -> bytes:
    return json.dumps(
        {
            "apiVersion": review.API_VERSION,
            "kind": review.KIND,
            "request": {
                "uid": "fuzz",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "operation": "CREATE",
                "namespace": "team-a",
                "userInfo": {"username": "mallory", "groups": []},
                "object": pod,
            },
        }
    ).encode()


HOSTILE_POD = st.fixed_dictionaries(
    {
        "metadata": st.fixed_dictionaries(
            {"annotations": st.just({"hush.dev/policy": "survey"})},
            optional={"name": JSON, "labels": JSON},
        ),
        "spec": JSON
        | st.fixed_dictionaries(
            {},
            optional={
                "containers": JSON | st.lists(JSON, max_size=3),
                "initContainers": JSON,
                "volumes": JSON,
                "hostNetwork": JSON,
            },
        ),
    }
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(HOSTILE_POD)
def test_hostile_annotated_pods_are_injected_correctly_or_denied_never_passed_raw(
    pod: dict[str, Any],
) -> None:
    status, answer = _post(_review_of(pod))[0]
    response = _assert_well_formed(status, answer)
    if response["allowed"]:
        # Allowed only with the sidecar: an annotated pod never starts unguarded.
        patch = review.decode_patch(answer)
        injected = [
            operation["value"]
            for operation in patch
            if operation["path"].startswith("/spec/initContainers")
        ]
        assert injected, f"allowed without injecting: {pod}"


def test_a_valid_review_is_mutated_and_an_unknown_policy_denied() -> None:
    pod: dict[str, Any] = {
        "metadata": {"name": "web", "annotations": {"hush.dev/policy": "survey"}},
        "spec": {"containers": [{"name": "app", "ports": [{"containerPort": 8080}]}]},
    }
    status, answer = _post(_review_of(pod))[0]
    assert _assert_well_formed(status, answer)["allowed"] is True
    assert review.decode_patch(answer)
    pod["metadata"]["annotations"]["hush.dev/policy"] = "other"
    status, answer = _post(_review_of(pod))[0]
    response = _assert_well_formed(status, answer)
    assert response["allowed"] is False
    assert "DPPolicy other does not exist" in response["status"]["message"]
