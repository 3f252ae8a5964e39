"""The webhook configuration builders (invariant 8) and the chart's generated copy of them."""

from __future__ import annotations

import dataclasses
import re

import yaml

from hush.admission import policies, validation, webhooks

SETTINGS = webhooks.Settings(
    target=webhooks.ServiceTarget(namespace="hush-system", name="hush-webhook"),
    hush_namespace="hush-system",
)


def _entries() -> list[dict[str, object]]:
    return [
        entry
        for configuration in webhooks.all_configurations(SETTINGS)
        for entry in configuration["webhooks"]
    ]


def test_every_entry_spares_the_system_and_hush_namespaces_like_the_policies_do() -> None:
    for entry in _entries():
        selector = entry["namespaceSelector"]
        assert isinstance(selector, dict)
        excluded = selector["matchExpressions"][0]
        assert excluded["key"] == "kubernetes.io/metadata.name"
        assert excluded["operator"] == "NotIn"
        # The same list, in the same order, as the ValidatingAdmissionPolicies.
        assert excluded["values"] == list(validation.excluded_namespaces("hush-system"))
    workload_policy = policies.build_workload_policy(
        policies.PolicySettings(hush_namespace="hush-system", operator_service_account="hush"),
        policies.TEMPLATE_SHAPES[0],
    )
    policy_selector = workload_policy["spec"]["matchConstraints"]["namespaceSelector"]
    assert policy_selector["matchExpressions"][0]["values"] == excluded["values"]


def test_fail_only_where_enforcement_is_asked_for_short_timeouts_no_side_effects() -> None:
    decided = {
        entry["name"]: (entry["failurePolicy"], entry["timeoutSeconds"], entry["sideEffects"])
        for entry in _entries()
    }
    assert decided == {
        webhooks.INJECT_WEBHOOK: ("Ignore", 5, "None"),
        webhooks.VALIDATE_ENFORCED_WEBHOOK: ("Fail", 5, "None"),
        webhooks.VALIDATE_REPORTED_WEBHOOK: ("Ignore", 5, "None"),
    }


def test_names_labels_and_client_config_come_from_the_settings() -> None:
    settings = webhooks.Settings(
        target=webhooks.UrlTarget(url="https://127.0.0.1:9443/"),
        hush_namespace="ops",
        ca_bundle="Q0E=",
        mutating_name="blue-hush-injector",
        validating_name="blue-hush-validator",
        extra_labels={"app.kubernetes.io/instance": "blue"},
    )
    mutating, validating = webhooks.all_configurations(settings)
    assert mutating["metadata"] == {
        "name": "blue-hush-injector",
        "labels": {
            "app.kubernetes.io/name": "hush",
            "app.kubernetes.io/component": "admission",
            "app.kubernetes.io/instance": "blue",
        },
    }
    assert validating["metadata"]["name"] == "blue-hush-validator"
    assert mutating["webhooks"][0]["clientConfig"] == {
        "url": "https://127.0.0.1:9443/mutate-pods",
        "caBundle": "Q0E=",
    }
    # The defaults are the names a release called "hush" renders.
    assert [c["metadata"]["name"] for c in webhooks.all_configurations(SETTINGS)] == [
        "hush-injector",
        "hush-validator",
    ]


def _as_helm_renders(variables: dict[str, str], *, url: str) -> list[dict[str, object]]:
    """The chart template with its Helm variables and conditionals resolved by hand."""
    text = webhooks.render_chart_template()
    body = text.split("{{- $annotations", 1)[1].split("\n", 1)[1]
    body = body.replace('{{- if include "hush.injection" . }}\n', "").replace(
        "{{- end }}\n---", "---"
    )
    # Drop the annotations block (empty in self-signed mode) and pick the client config.
    body = re.sub(r" *\{\{- with \$annotations \}\}\n.*?\{\{- end \}\}\n", "", body, flags=re.S)
    keep = r"\1" if url else r"\2"
    body = re.sub(
        r" *\{\{- if \$url \}\}\n(.*?) *\{\{- else \}\}\n(.*?) *\{\{- end \}\}\n",
        keep,
        body,
        flags=re.S,
    )
    rendered = re.sub(r"\{\{\$(\w+)\}\}", lambda found: variables[found.group(1)], body)
    assert "{{" not in rendered, "a template action the test does not know"
    return [document for document in yaml.safe_load_all(rendered) if document]


def test_the_chart_template_is_the_builders_with_helm_variables() -> None:
    variables = {
        "release": "blue",
        "namespace": "ops",
        "service": "blue-hush-webhook",
        "servicePort": "443",
        "url": "https://10.1.2.3:9443",
        "mutatingName": "blue-hush-injector",
        "validatingName": "blue-hush-validator",
    }
    by_service = webhooks.Settings(
        target=webhooks.ServiceTarget(namespace="ops", name="blue-hush-webhook", port=443),
        hush_namespace="ops",
        mutating_name="blue-hush-injector",
        validating_name="blue-hush-validator",
        extra_labels={"app.kubernetes.io/instance": "blue"},
    )
    by_url = dataclasses.replace(by_service, target=webhooks.UrlTarget(url="https://10.1.2.3:9443"))
    assert _as_helm_renders(variables, url="") == webhooks.all_configurations(by_service)
    assert _as_helm_renders(variables, url="yes") == webhooks.all_configurations(by_url)
    assert not re.search(r"^ *caBundle:", webhooks.render_chart_template(), re.M)


def test_only_pods_that_ask_for_a_policy_reach_the_injector() -> None:
    (entry,) = webhooks.build_mutating_configuration(SETTINGS)["webhooks"]
    (condition,) = entry["matchConditions"]
    # The handler's own test for the annotation, in CEL, with the same annotation key.
    assert condition["expression"] == (
        "has(object.metadata.annotations) && "
        f"'{validation.POLICY_ANNOTATION}' in object.metadata.annotations"
    )
    # Validating entries keep every request: exec/attach options carry no annotations.
    validating = webhooks.build_validating_configuration(SETTINGS)["webhooks"]
    assert all("matchConditions" not in entry for entry in validating)


def test_port_forward_reaches_the_validating_webhook_like_exec() -> None:
    connects = [
        rule
        for entry in webhooks.build_validating_configuration(SETTINGS)["webhooks"]
        for rule in entry["rules"]
        if rule["operations"] == ["CONNECT"]
    ]
    assert connects  # one per enforcement mode's entry
    for rule in connects:
        assert rule["resources"] == ["pods/exec", "pods/attach", "pods/portforward"]
    # The chart's copy is generated from the same rules.
    assert "- pods/portforward" in webhooks.render_chart_template()
