"""Samples are well-formed: valid ones parse with the models, invalid ones say what fails.

Whether the apiserver accepts or refuses them is checked against the real apiserver in
e2e/test_crds.py; here we only check what needs no cluster.
"""

from __future__ import annotations

import pydantic
import pytest

from hush.api import crds, dppolicy
from hush.privacy import route_cost
from tests import samples

SPEC_MODELS = {resource.kind: resource.spec_model for resource in crds.KINDS}


@pytest.mark.parametrize("sample", samples.load("valid"), ids=lambda sample: sample.id)
def test_valid_sample_parses_with_the_model(sample: samples.Sample) -> None:
    assert sample.expected_error is None
    model = SPEC_MODELS[sample.manifest["kind"]]
    model.model_validate(sample.manifest["spec"])


@pytest.mark.parametrize("sample", samples.load("invalid"), ids=lambda sample: sample.id)
def test_invalid_sample_names_the_error_it_expects(sample: samples.Sample) -> None:
    assert sample.expected_error, f"{sample.path} needs a '# expect-error: ...' line"
    assert sample.manifest["apiVersion"] == "hush.dev/v1alpha1"


def test_valid_samples_set_every_spec_field_of_every_kind() -> None:
    """'Samples for every field': each model field appears in at least one valid sample."""

    def paths(value: object, prefix: str) -> set[str]:
        found = set()
        if isinstance(value, dict):
            for key, child in value.items():
                found.add(f"{prefix}.{key}")
                found |= paths(child, f"{prefix}.{key}")
        elif isinstance(value, list):
            for child in value:
                found |= paths(child, prefix)
        return found

    def model_paths(model: type[pydantic.BaseModel], prefix: str) -> set[str]:
        found = set()
        for name, field in model.model_fields.items():
            alias = field.alias or name
            found.add(f"{prefix}.{alias}")
            for candidate in _nested_models(field.annotation):
                found |= model_paths(candidate, f"{prefix}.{alias}")
        return found

    for kind, model in SPEC_MODELS.items():
        used: set[str] = set()
        for sample in samples.load("valid"):
            if sample.manifest["kind"] == kind:
                used |= paths(sample.manifest["spec"], "spec")
        missing = model_paths(model, "spec") - used
        assert not missing, f"{kind} samples never set {sorted(missing)}"


def _nested_models(annotation: object) -> list[type[pydantic.BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return [annotation]
    nested = []
    for argument in getattr(annotation, "__args__", ()):
        nested += _nested_models(argument)
    return nested


@pytest.mark.parametrize(
    "sample",
    [sample for sample in samples.load("valid") if sample.manifest["kind"] == "DPPolicy"],
    ids=lambda sample: sample.id,
)
def test_valid_policies_declare_the_shape_they_release(sample: samples.Sample) -> None:
    """Every wildcard has its domain, nothing collides (only a quantile may be not Ready)."""
    spec = dppolicy.DPPolicySpec.model_validate(sample.manifest["spec"])
    for route in spec.routes:
        reasons = {reason for reason, _ in route_cost.route_problems(route)}
        assert reasons <= {"QuantileUnsupported"}, (route.path, route_cost.route_problems(route))
        if not reasons:
            route_cost.route_plan(route)  # and it can be planned
