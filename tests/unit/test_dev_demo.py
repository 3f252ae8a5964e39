"""The demo's pure parts: its manifests, the sample app, and the host sidecar command."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from hush.admission import mutation, validation
from hush.api import dppolicy, privacybudget
from hush.dev import demo, errors, host_sidecar, install, sample_app
from hush.dev import demo_objects as objects
from hush.sidecar import config
from tests.unit.test_admission_mutation import apply_patch

APP_PORT = 18080


def _ready(policy: dict[str, Any]) -> dict[str, Any]:
    return {
        **policy,
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Accepted"}]},
    }


def _injected_pod() -> dict[str, Any]:
    """A pod of the analytics Deployment as the real injector mutates it."""
    pod = objects.build_pod_from_template(objects.build_analytics_deployment(APP_PORT), "abc12")
    settings = mutation.Settings(
        image=install.SIDECAR_IMAGE, accountant_url="https://127.0.0.1:20001"
    )
    decided = mutation.mutate_pod(
        pod,
        namespace=objects.NAMESPACE,
        policy=_ready(objects.build_analytics_policy(APP_PORT)),
        settings=settings,
    )
    assert decided.injected, decided.message
    return apply_patch(pod, list(decided.patch))


# -- the story's objects ---------------------------------------------------------------------------


def test_the_budget_is_valid_and_its_quotas_add_up_to_the_total() -> None:
    spec = privacybudget.PrivacyBudgetSpec.model_validate(objects.build_budget()["spec"])
    assert sum(Decimal(str(quota.epsilon)) for quota in spec.quotas) == Decimal(
        str(objects.TOTAL_EPSILON)
    )
    assert {quota.team for quota in spec.quotas} == {objects.ANALYTICS, objects.GROWTH}


def test_the_story_arithmetic_three_analytics_releases_and_one_growth_release() -> None:
    per_release = Decimal(str(objects.ROUTE_EPSILON))
    assert Decimal(str(objects.QUOTAS[objects.ANALYTICS])) / per_release == 3
    assert Decimal(str(objects.QUOTAS[objects.GROWTH])) / per_release == 1
    # After the first query, the demo spends the quota on three distinct routes/queries and
    # still has one more distinct query to be refused.
    assert len(sample_app.REGIONS) >= 3


@pytest.mark.parametrize("build", [objects.build_analytics_policy, objects.build_growth_policy])
def test_the_policies_parse_and_point_at_the_app_port(build: Any) -> None:
    manifest = build(APP_PORT)
    spec = dppolicy.DPPolicySpec.model_validate(manifest["spec"])
    assert spec.upstream.port == APP_PORT
    assert spec.budget_ref.name == objects.BUDGET


def test_the_labelled_deployments_break_no_static_rule_and_the_unlabelled_one_does() -> None:
    for deployment in (
        objects.build_analytics_deployment(APP_PORT),
        objects.build_growth_deployment(APP_PORT),
    ):
        assert validation.static_violations(deployment) == []
    rules = {
        violation.rule
        for violation in validation.static_violations(objects.build_unlabelled_deployment(APP_PORT))
    }
    assert rules
    problems = validation.describe(
        validation.static_violations(objects.build_unlabelled_deployment(APP_PORT))
    )
    assert validation.TEAM_LABEL in problems
    assert validation.SENSITIVITY_LABEL in problems


def test_the_pod_excerpt_shows_the_sidecar_and_shortens_the_baked_configuration() -> None:
    excerpt = objects.pod_excerpt(_injected_pod())
    (sidecar,) = excerpt["spec"]["initContainers"]
    assert sidecar["name"] == "hush-sidecar"
    assert sidecar["restartPolicy"] == "Always"
    assert all(len(variable["value"]) <= 60 for variable in sidecar["env"])
    assert excerpt["spec"]["containers"][0]["ports"][0]["name"] == mutation.UPSTREAM_PORT_NAME


# -- the sample app --------------------------------------------------------------------------------


def test_the_sample_app_answers_raw_aggregates_over_a_fixed_dataset() -> None:
    total = sample_app.answer("/count", {})
    assert total == {"count": len(sample_app.PEOPLE)}
    by_region = [sample_app.answer("/count", {"region": region}) for region in sample_app.REGIONS]
    assert sum(answer["count"] for answer in by_region if answer) == len(sample_app.PEOPLE)
    ages = sample_app.answer("/ages", {"region": "north"})
    north = sample_app.answer("/count", {"region": "north"})
    assert ages is not None
    assert north is not None
    assert sum(ages["histogram"].values()) == north["count"]
    income = sample_app.answer("/income", {})
    assert income is not None
    assert income["sum"] <= sample_app.INCOME_UPPER_BOUND * len(sample_app.PEOPLE)
    assert sample_app.answer("/secret", {}) is None


def test_the_sample_app_serves_over_http() -> None:
    with sample_app.serving("127.0.0.1", 0) as port:
        reply = demo.http_get(f"http://127.0.0.1:{port}/count?region=north")
        missing = demo.http_get(f"http://127.0.0.1:{port}/nope")
    assert reply.status == 200
    assert reply.json() == sample_app.answer("/count", {"region": "north"})
    assert missing.status == 404


# -- the host sidecar ------------------------------------------------------------------------------


def test_the_host_sidecar_runs_the_pods_container_with_only_the_host_substitutions() -> None:
    pod = _injected_pod()
    container = host_sidecar.sidecar_container(pod)
    substitutions = host_sidecar.Substitutions(
        token_path=Path("/state/demo/pod.token"), ca_path=Path("/state/hush/tls.crt")
    )

    sidecar = host_sidecar.host_command(
        container, python="/venv/bin/python", substitutions=substitutions
    )

    assert sidecar.argv == ("/venv/bin/python", "-m", "hush", "sidecar", *container["args"])
    before = host_sidecar.baked_config(container)
    after = json.loads(sidecar.environment[config.ENVIRONMENT_VARIABLE])
    changed = {key for key in before.keys() | after.keys() if before.get(key) != after.get(key)}
    assert changed == {"tokenPath", "caPath", "listenHost"}
    assert after["tokenPath"] == "/state/demo/pod.token"
    assert after["caPath"] == "/state/hush/tls.crt"
    assert after["listenHost"] == "127.0.0.1"
    # The policy, its hash and the accountant URL are the pod's, and the sidecar accepts them
    # (``load`` checks the baked hash against the baked policy).
    loaded = config.load(sidecar.environment[config.ENVIRONMENT_VARIABLE])
    assert loaded.policy_hash == pod["metadata"]["annotations"][mutation.POLICY_HASH_ANNOTATION]
    assert loaded.accountant_url == "https://127.0.0.1:20001"
    every_variable = {variable["name"] for variable in container["env"]}
    assert set(sidecar.environment) == every_variable
    assert sidecar.listen_port == before["listenPort"]
    assert len(sidecar.changes) == 3


def test_the_host_sidecar_moves_ports_only_when_asked() -> None:
    container = host_sidecar.sidecar_container(_injected_pod())
    sidecar = host_sidecar.host_command(
        container,
        python="python",
        substitutions=host_sidecar.Substitutions(
            token_path=Path("/t"), ca_path=Path("/c"), listen_port=31000, admin_port=31001
        ),
    )
    after = json.loads(sidecar.environment[config.ENVIRONMENT_VARIABLE])
    assert (after["listenPort"], after["adminPort"]) == (31000, 31001)
    assert (sidecar.listen_port, sidecar.admin_port) == (31000, 31001)
    assert len(sidecar.changes) == 5
    config.load(sidecar.environment[config.ENVIRONMENT_VARIABLE])


def test_a_pod_without_the_sidecar_or_with_another_command_is_refused() -> None:
    plain = objects.build_pod_from_template(objects.build_unlabelled_deployment(APP_PORT), "x")
    with pytest.raises(errors.DevClusterError, match="not injected"):
        host_sidecar.sidecar_container(plain)
    container = dict(host_sidecar.sidecar_container(_injected_pod()))
    container["command"] = ["/bin/sh", "-c", "curl evil"]
    with pytest.raises(errors.DevClusterError, match="not the hush entry point"):
        host_sidecar.host_command(
            container,
            python="python",
            substitutions=host_sidecar.Substitutions(token_path=Path("/t"), ca_path=Path("/c")),
        )
