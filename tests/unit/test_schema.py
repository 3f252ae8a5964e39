"""Pydantic JSON Schema -> structural OpenAPI translation."""

from __future__ import annotations

from typing import Literal

import pydantic
import pytest

from hush.api import common, schema


class Inner(common.ResourceModel):
    value: int = pydantic.Field(gt=0)


class Outer(common.ResourceModel):
    inner: Inner | None = None
    kind: Literal["a", "b"] = "a"
    fixed: Literal["only"] = "only"
    items: list[Inner] = pydantic.Field(default_factory=list, max_length=3)


def test_references_and_optionals_are_inlined() -> None:
    result = schema.structural_schema(Outer)
    inner = result["properties"]["inner"]
    assert inner["type"] == "object"
    assert inner["properties"]["value"] == {
        "type": "integer",
        "minimum": 0,
        "exclusiveMinimum": True,
    }
    assert result["properties"]["items"]["items"]["type"] == "object"
    assert "default" not in inner


def test_literals_become_typed_enums() -> None:
    properties = schema.structural_schema(Outer)["properties"]
    assert properties["kind"] == {"type": "string", "enum": ["a", "b"], "default": "a"}
    assert properties["fixed"]["enum"] == ["only"]
    assert properties["fixed"]["type"] == "string"


def test_camel_case_aliases_are_property_names() -> None:
    class Snake(common.ResourceModel):
        some_field: int

    assert list(schema.structural_schema(Snake)["properties"]) == ["someField"]


def test_free_form_dicts_are_refused() -> None:
    class FreeForm(pydantic.BaseModel):
        anything: dict[str, object]

    with pytest.raises(schema.UnsupportedSchemaError, match="Free-form"):
        schema.structural_schema(FreeForm)


def test_unions_of_different_types_are_refused() -> None:
    class Union(pydantic.BaseModel):
        value: int | str

    with pytest.raises(schema.UnsupportedSchemaError, match="Unions"):
        schema.structural_schema(Union)


def test_cel_rules_are_carried_through() -> None:
    class Ruled(common.ResourceModel):
        model_config = pydantic.ConfigDict(json_schema_extra=common.cel(("self.a < 3", "small")))
        a: int

    assert schema.structural_schema(Ruled)["x-kubernetes-validations"] == [
        {"rule": "self.a < 3", "message": "small"}
    ]
