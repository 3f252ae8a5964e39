"""Turn pydantic JSON Schema into a Kubernetes *structural* OpenAPI v3 schema.

Pydantic emits JSON Schema 2020-12: ``$ref``/``$defs``, ``anyOf`` for optionals, titles,
``const``, numeric ``exclusiveMinimum``. The apiserver only accepts a structural subset of
OpenAPI v3.0 (every node typed, no references, no ``anyOf`` that changes the type). This
module owns that translation and nothing else: which rules a resource has lives with its
model (``x-kubernetes-validations`` attached through ``json_schema_extra``).

Deliberately unsupported (raises ``UnsupportedSchemaError``): free-form dicts, unions of
different types, recursive models. A model that needs them is not a good CRD model.
"""

from __future__ import annotations

from typing import Any

import pydantic

JsonSchema = dict[str, Any]

# JSON-Schema keys that mean nothing to the apiserver or that it rejects.
_DROPPED_KEYS = frozenset({"title", "$defs", "examples", "discriminator"})


class UnsupportedSchemaError(ValueError):
    """The model uses a construct that has no structural OpenAPI equivalent."""


def structural_schema(model: type[pydantic.BaseModel]) -> JsonSchema:
    """The structural OpenAPI v3 schema of ``model`` (aliases used as property names)."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    definitions: dict[str, JsonSchema] = raw.get("$defs", {})
    return _convert(raw, definitions, seen=())


def _convert(
    node: JsonSchema, definitions: dict[str, JsonSchema], seen: tuple[str, ...]
) -> JsonSchema:
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        if name in seen:
            raise UnsupportedSchemaError(f"Recursive model {name} cannot be a CRD schema")
        siblings = {key: value for key, value in node.items() if key != "$ref"}
        return _convert({**definitions[name], **siblings}, definitions, (*seen, name))

    if "anyOf" in node:
        return _convert(_collapse_optional(node), definitions, seen)

    converted: JsonSchema = {}
    for key, value in node.items():
        if key in _DROPPED_KEYS:
            continue
        if key == "properties":
            converted[key] = {
                name: _convert(child, definitions, seen) for name, child in value.items()
            }
        elif key == "items":
            converted[key] = _convert(value, definitions, seen)
        elif key == "additionalProperties":
            if value is False:
                continue  # structural schemas forbid unknown fields by pruning them
            if value is True or not isinstance(value, dict):
                raise UnsupportedSchemaError("Free-form objects are not structural")
            converted[key] = _convert(value, definitions, seen)
        elif key == "const":
            converted["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            converted[bound] = value
            converted[key] = True
        elif key == "default" and value is None:
            continue
        else:
            converted[key] = value

    if "enum" in converted and "type" not in converted:
        converted["type"] = _enum_type(converted["enum"])
    if "type" not in converted and "x-kubernetes-int-or-string" not in converted:
        raise UnsupportedSchemaError(f"Schema node without a type: {sorted(node)}")
    return converted


def _collapse_optional(node: JsonSchema) -> JsonSchema:
    """``anyOf: [X, {type: null}]`` (an ``Optional``) becomes X plus the node's own keys."""
    variants = [variant for variant in node["anyOf"] if variant.get("type") != "null"]
    if len(variants) != 1:
        raise UnsupportedSchemaError("Unions of different types are not structural")
    rest = {key: value for key, value in node.items() if key != "anyOf"}
    return {**variants[0], **rest}


def _enum_type(values: list[Any]) -> str:
    kinds = {type(value) for value in values}
    if kinds == {str}:
        return "string"
    if kinds <= {int}:
        return "integer"
    if kinds <= {int, float}:
        return "number"
    if kinds == {bool}:
        return "boolean"
    raise UnsupportedSchemaError(f"Enum mixes types: {values}")
