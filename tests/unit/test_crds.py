"""The checked-in CRDs are exactly what the models generate, and they are structural."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from hush.api import crds
from hush.cli import manifests
from tests.conftest import REPO_ROOT

CRD_DIRECTORY = REPO_ROOT / "crds"
CHART_TEMPLATES = REPO_ROOT / "charts" / "hush" / "templates"


def test_checked_in_crds_match_the_models() -> None:
    expected = crds.rendered_files()
    actual = {path.name: path.read_text(encoding="utf-8") for path in CRD_DIRECTORY.glob("*.yaml")}
    assert sorted(actual) == sorted(expected), "run `make manifests`"
    for name, text in expected.items():
        assert actual[name] == text, f"crds/{name} drifted: run `make manifests`"


def test_the_chart_template_of_the_crds_matches_the_models() -> None:
    path = CHART_TEMPLATES / manifests.CRD_CHART_TEMPLATE_NAME
    assert path.read_text(encoding="utf-8") == manifests.render_crd_chart_template(), (
        f"{path.name} drifted: run `make manifests`"
    )
    # Templates, not crds/: Helm never upgrades crds/.
    assert not (REPO_ROOT / "charts" / "hush" / "crds").exists()


def test_the_charts_crds_are_the_same_crds_kept_on_uninstall() -> None:
    text = manifests.render_crd_chart_template()
    body = text.split("{{- if .Values.crds.install }}\n", 1)[1].removesuffix("{{- end }}\n")
    documents = [document for document in yaml.safe_load_all(body) if document]
    expected = crds.all_crds()
    assert len(documents) == len(expected)
    for document, crd in zip(documents, expected, strict=True):
        assert document["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        del document["metadata"]["annotations"]
        assert document == crd


def _walk(node: dict[str, Any], path: str) -> list[str]:
    problems = []
    if "type" not in node and not node.get("x-kubernetes-int-or-string"):
        problems.append(f"{path}: no type")
    for forbidden in ("$ref", "anyOf", "oneOf", "allOf", "title", "$defs", "const"):
        if forbidden in node:
            problems.append(f"{path}: {forbidden}")
    for name, child in node.get("properties", {}).items():
        problems += _walk(child, f"{path}.{name}")
    if "items" in node:
        problems += _walk(node["items"], f"{path}[]")
    return problems


@pytest.mark.parametrize("crd", crds.all_crds(), ids=lambda crd: crd["metadata"]["name"])
def test_schema_is_structural(crd: dict[str, Any]) -> None:
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert _walk(schema, "") == []


@pytest.mark.parametrize("crd", crds.all_crds(), ids=lambda crd: crd["metadata"]["name"])
def test_crd_has_status_subresource_short_names_and_columns(crd: dict[str, Any]) -> None:
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert crd["spec"]["names"]["shortNames"]
    assert [c["name"] for c in version["additionalPrinterColumns"]][-1] == "Age"


def test_privacy_budget_printer_columns_match_the_design() -> None:
    version = crds.build_crd(crds.PRIVACY_BUDGET)["spec"]["versions"][0]
    names = [column["name"].upper() for column in version["additionalPrinterColumns"]]
    assert names == ["DATASET", "EPSILON", "SPENT", "REMAINING", "TEAMS", "STATUS", "AGE"]


def test_every_list_has_a_bound_so_cel_cost_is_estimable() -> None:
    def unbounded(node: dict[str, Any], path: str) -> list[str]:
        found = []
        if node.get("type") == "array" and "maxItems" not in node:
            found.append(path)
        is_string = node.get("type") == "string" and "enum" not in node
        if is_string and "maxLength" not in node and path.startswith(".spec"):
            found.append(path)
        for name, child in node.get("properties", {}).items():
            found += unbounded(child, f"{path}.{name}")
        if "items" in node:
            found += unbounded(node["items"], f"{path}[]")
        return found

    for crd in crds.all_crds():
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        spec_and_status = {"properties": {k: schema["properties"][k] for k in ("spec", "status")}}
        assert unbounded(spec_and_status, "") == [], crd["metadata"]["name"]
