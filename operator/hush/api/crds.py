"""The CustomResourceDefinitions of Hush, generated from the pydantic models.

This is the single source of truth for ``crds/*.yaml`` and the Helm chart's copy:
``make manifests`` writes them with ``hush manifests`` and a unit test fails when the
checked-in files drift from what this module produces. ``hush dev up`` installs the same
objects straight from here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pydantic
import yaml

from hush.api import common, dppolicy, privacybudget, schema

Manifest = dict[str, Any]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ResourceKind:
    """Naming and presentation of one custom resource kind."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    spec_model: type[pydantic.BaseModel]
    status_model: type[pydantic.BaseModel]
    description: str
    printer_columns: tuple[Manifest, ...]
    root_rules: tuple[tuple[str, str], ...] = ()

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{common.API_GROUP}"


def _column(name: str, json_path: str, kind: str = "string", priority: int = 0) -> Manifest:
    column: Manifest = {"name": name, "type": kind, "jsonPath": json_path}
    if priority:
        column["priority"] = priority
    return column


_AGE = _column("Age", ".metadata.creationTimestamp", "date")

PRIVACY_BUDGET = ResourceKind(
    kind="PrivacyBudget",
    plural="privacybudgets",
    singular="privacybudget",
    short_names=("pb", "budget"),
    spec_model=privacybudget.PrivacyBudgetSpec,
    status_model=privacybudget.PrivacyBudgetStatus,
    description=(
        "The differential-privacy budget of one protected dataset, carved into team quotas. "
        "Every charge must fit both its team's quota and the dataset's total."
    ),
    # Transition rules: once something is spent, the totals may not be lowered below it and
    # neither the accounting mode nor the renewal may change (privacybudget.TRANSITION_RULES).
    root_rules=privacybudget.TRANSITION_RULES,
    printer_columns=(
        _column("Dataset", ".spec.dataset"),
        _column("Epsilon", ".spec.epsilon", "number"),
        _column("Spent", ".status.epsilon.spent"),
        _column("Remaining", ".status.epsilon.remaining"),
        _column("Teams", ".status.teamCount", "integer"),
        _column("Status", ".status.state"),
        _AGE,
    ),
)

DP_POLICY = ResourceKind(
    kind="DPPolicy",
    plural="dppolicies",
    singular="dppolicy",
    short_names=("dpp",),
    spec_model=dppolicy.DPPolicySpec,
    status_model=dppolicy.DPPolicyStatus,
    description=(
        "What each route of an application's aggregate API may release, with which noise, "
        "charged to which PrivacyBudget and team."
    ),
    printer_columns=(
        _column("Budget", ".spec.budgetRef.name"),
        _column("Team", ".spec.budgetRef.team"),
        _column("Ready", '.status.conditions[?(@.type=="Ready")].status'),
        _column("Reason", '.status.conditions[?(@.type=="Ready")].reason'),
        _column("Hash", ".status.policyHash", priority=1),
        _AGE,
    ),
)

KINDS: tuple[ResourceKind, ...] = (PRIVACY_BUDGET, DP_POLICY)


def build_crd(resource: ResourceKind) -> Manifest:
    """The CustomResourceDefinition manifest of one kind."""
    open_api_schema: Manifest = {
        "type": "object",
        "description": resource.description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": schema.structural_schema(resource.spec_model),
            "status": schema.structural_schema(resource.status_model),
        },
    }
    if resource.root_rules:
        open_api_schema["x-kubernetes-validations"] = [
            {"rule": rule, "message": message} for rule, message in resource.root_rules
        ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": resource.crd_name,
            "labels": {"app.kubernetes.io/part-of": "hush"},
        },
        "spec": {
            "group": common.API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": resource.kind,
                "listKind": f"{resource.kind}List",
                "plural": resource.plural,
                "singular": resource.singular,
                "shortNames": list(resource.short_names),
                "categories": ["hush"],
            },
            "versions": [
                {
                    "name": common.API_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": list(resource.printer_columns),
                    "schema": {"openAPIV3Schema": open_api_schema},
                }
            ],
        },
    }


def all_crds() -> list[Manifest]:
    """Every Hush CRD, in a stable order."""
    return [build_crd(resource) for resource in KINDS]


def crd_file_name(resource: ResourceKind) -> str:
    return f"{common.API_GROUP}_{resource.plural}.yaml"


def render(manifest: Manifest) -> str:
    header = "# Generated by `make manifests` from operator/hush/api; do not edit by hand.\n"
    return header + yaml.safe_dump(manifest, sort_keys=False, width=100)


def rendered_files() -> dict[str, str]:
    """File name -> YAML text of every CRD, as checked in under crds/."""
    return {crd_file_name(resource): render(build_crd(resource)) for resource in KINDS}


def write(directory: Path) -> list[Path]:
    """Write every CRD into ``directory`` and return the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in rendered_files().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
