"""Turns pydantic's JSON Schema into a Kubernetes structural OpenAPI v3 schema.

The apiserver accepts only a subset of JSON Schema (structural schemas): no $ref, no null types, boolean
exclusive bounds, no ``additionalProperties: false`` next to ``properties``. This module rewrites pydantic's
output into that subset so the CRD can be generated rather than hand-written.
"""

from __future__ import annotations

from typing import Any

JSONSchema = dict[str, Any]

# Keys pydantic emits that a structural schema either forbids or does not need.
_DROPPED_KEYS = frozenset({"title", "$defs", "discriminator", "examples"})
# Formats the apiserver knows; any other format would be rejected or silently ignored.
_KUBERNETES_FORMATS = frozenset({"date-time", "date", "byte", "int32", "int64", "float", "double", "uuid"})


# Reading order in the generated YAML: what a node is first, its children last.
_KEY_ORDER = ("type", "description", "default", "enum", "format")
_LAST_KEYS = ("properties", "additionalProperties", "items", "required", "x-kubernetes-validations")


def to_structural(schema: JSONSchema) -> JSONSchema:
    """Convert a pydantic ``model_json_schema(by_alias=True)`` result into a structural schema."""
    return _convert(schema, schema.get("$defs", {}))


def _ordered(node: JSONSchema) -> JSONSchema:
    first = [key for key in _KEY_ORDER if key in node]
    last = [key for key in _LAST_KEYS if key in node]
    middle = sorted(key for key in node if key not in first and key not in last)
    return {key: node[key] for key in (*first, *middle, *last)}


def _resolve(node: JSONSchema, defs: JSONSchema) -> JSONSchema:
    ref = node.get("$ref")
    if ref is None:
        return node
    target = defs[ref.rsplit("/", 1)[-1]]
    # Keys beside the $ref (the field's description, default) override the referenced class's.
    merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return _resolve(merged, defs)


def _strip_null(node: JSONSchema) -> JSONSchema:
    """Optional fields are ``anyOf: [X, null]`` in pydantic; in Kubernetes they are simply not required."""
    options = node.get("anyOf")
    if not options:
        return node
    non_null = [option for option in options if option.get("type") != "null"]
    if len(non_null) == len(options):
        return node
    rest = {k: v for k, v in node.items() if k != "anyOf"}
    if rest.get("default", ...) is None:
        del rest["default"]
    if len(non_null) == 1:
        return {**non_null[0], **rest}
    return {**rest, "anyOf": non_null}


def _convert(node: JSONSchema, defs: JSONSchema) -> JSONSchema:
    node = _resolve(_strip_null(_resolve(node, defs)), defs)
    out: JSONSchema = {}
    options = node.get("anyOf")
    if options is not None:
        types = sorted(_strip_null(_resolve(option, defs)).get("type", "") for option in options)
        if types != ["integer", "string"]:
            raise ValueError(f"unsupported union in CRD schema: {options}")
        # Quantities: the apiserver's int-or-string marker replaces the union.
        out["x-kubernetes-int-or-string"] = True
    for key, value in node.items():
        if key in _DROPPED_KEYS or key == "anyOf":
            continue
        if key == "properties":
            out["properties"] = {name: _convert(prop, defs) for name, prop in value.items()}
        elif key == "items":
            out["items"] = _convert(value, defs)
        elif key == "additionalProperties":
            if isinstance(value, dict):
                out["additionalProperties"] = _convert(value, defs)
            # ``false`` is dropped: the apiserver prunes unknown fields and reports them under --validate=strict.
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[bound] = value
            out[key] = True
        elif key == "format":
            if value in _KUBERNETES_FORMATS:
                out["format"] = value
        elif key == "const":
            out["enum"] = [value]
        else:
            out[key] = value
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        # A free-form object (e.g. a JSON Schema the user supplies) must say so, or the apiserver prunes it empty.
        out["x-kubernetes-preserve-unknown-fields"] = True
    if "additionalProperties" in out and "properties" not in out and "type" not in out:
        out["type"] = "object"
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return _ordered(out)
