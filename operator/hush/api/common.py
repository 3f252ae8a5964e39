"""Building blocks shared by every Hush resource model.

Owns: the base model configuration (camelCase aliases, closed objects), the ``Condition``
type that every status carries, and ``cel()``/``list_map()`` which attach Kubernetes-only
schema extensions to fields. Value rules that a user can get wrong (ε > 0, δ < 1, ...) are
CEL rules, so that ``kubectl apply`` itself refuses them with the rule's message.
"""

from __future__ import annotations

from typing import Any, Literal

import pydantic
from pydantic import alias_generators

API_GROUP = "hush.dev"
API_VERSION = "v1alpha1"
GROUP_VERSION = f"{API_GROUP}/{API_VERSION}"

# DNS-1123 label: what Kubernetes accepts as a namespace, and what a team name should be
# so that it can also be a label value and part of an object name.
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"


class ResourceModel(pydantic.BaseModel):
    """Base for every CRD model: camelCase on the wire, unknown fields refused."""

    model_config = pydantic.ConfigDict(
        alias_generator=alias_generators.to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )


def cel(*rules: tuple[str, str]) -> dict[str, Any]:
    """Field or model ``json_schema_extra`` carrying CEL rules as (rule, message) pairs."""
    return {"x-kubernetes-validations": [{"rule": rule, "message": msg} for rule, msg in rules]}


def list_map(*keys: str) -> dict[str, Any]:
    """Mark a list as a map keyed by ``keys``: the apiserver refuses duplicate keys."""
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": list(keys)}


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ResourceModel):
    """One entry of ``status.conditions``, with the standard Kubernetes meaning."""

    type: str = pydantic.Field(max_length=316, description="Condition type, e.g. Ready.")
    status: ConditionStatus
    reason: str = pydantic.Field(
        max_length=1024, description="CamelCase machine-readable reason for the status."
    )
    message: str = pydantic.Field(
        default="", max_length=32768, description="What is wrong and how to fix it."
    )
    observed_generation: int = pydantic.Field(
        default=0, ge=0, description="The metadata.generation this condition describes."
    )
    last_transition_time: str = pydantic.Field(
        description="When status last changed (RFC 3339).",
        json_schema_extra={"format": "date-time"},
    )


def conditions_field() -> Any:
    return pydantic.Field(
        default_factory=list,
        max_length=16,
        description="Current state of the resource (Ready, ...).",
        json_schema_extra=list_map("type"),
    )
