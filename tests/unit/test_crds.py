"""The checked-in CRDs are exactly what the models generate, and they are structural."""

from __future__ import annotations

from typing import Any

import pytest

from hush.api import crds
from tests.conftest import REPO_ROOT

CHECKED_IN_DIRECTORIES = [REPO_ROOT / "crds", REPO_ROOT / "charts" / "hush" / "crds"]


@pytest.mark.parametrize("directory", CHECKED_IN_DIRECTORIES, ids=lambda path: path.name)
def test_checked_in_crds_match_the_models(directory: Any) -> None:
    expected = crds.rendered_files()
    actual = {path.name: path.read_text(encoding="utf-8") for path in directory.glob("*.yaml")}
    assert sorted(actual) == sorted(expected), "run `make manifests`"
    for name, text in expected.items():
        assert actual[name] == text, f"{directory.name}/{name} drifted: run `make manifests`"


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
