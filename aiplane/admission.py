"""The CRDs' cross-field checks (CEL ``x-kubernetes-validations`` and list uniqueness), run without an apiserver.

``aiplane dev`` and ``aiplane validate`` read manifests that never reach a kube-apiserver; evaluating the very rules
the generated CRD carries, with cel-python, keeps the embedded mode from accepting what a cluster would refuse.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from typing import Any

import celpy
from celpy import celtypes
from celpy.adapter import json_to_cel

from crds.base import Resource
from crds.generate import crd_manifest

Schema = dict[str, Any]


def _is_sorted(values: Any) -> celtypes.BoolType:
    items: list[Any] = list(values)
    return celtypes.BoolType(all(a <= b for a, b in zip(items, items[1:], strict=False)))


def _join(values: Any, separator: Any = "") -> celtypes.StringType:
    return celtypes.StringType(str(separator).join(str(v) for v in values))


# Functions of the Kubernetes CEL library that the rules use and cel-python lacks.
_KUBERNETES_FUNCTIONS: Any = {"isSorted": _is_sorted, "join": _join}
_ENVIRONMENT = celpy.Environment()


@cache
def _program(expression: str) -> celpy.Runner:
    return _ENVIRONMENT.program(_ENVIRONMENT.compile(expression), functions=_KUBERNETES_FUNCTIONS)


@cache
def _schema(resource: type[Resource]) -> Schema:
    schema: Schema = crd_manifest(resource)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _evaluate(expression: str, value: Any) -> Any:
    return _program(expression).evaluate({"self": json_to_cel(value)})


def _walk(schema: Schema, value: Any, path: str) -> Iterator[str]:
    for rule in schema.get("x-kubernetes-validations", ()):
        if _evaluate(rule["rule"], value):
            continue
        message = rule["message"]
        if "messageExpression" in rule:
            message = str(_evaluate(rule["messageExpression"], value))
        yield f"{path}{rule.get('fieldPath', '')}: Invalid value: {message}"
    if isinstance(value, dict):
        for name, child in schema.get("properties", {}).items():
            if name in value:
                yield from _walk(child, value[name], f"{path}.{name}" if path else name)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key, child_value in value.items():
                yield from _walk(extra, child_value, f"{path}[{key}]")
    elif isinstance(value, list):
        yield from _duplicates(schema, value, path)
        for index, item in enumerate(value):
            yield from _walk(schema.get("items", {}), item, f"{path}[{index}]")


def _duplicates(schema: Schema, items: list[Any], path: str) -> Iterator[str]:
    list_type = schema.get("x-kubernetes-list-type")
    if list_type not in ("map", "set"):
        return
    keys = schema.get("x-kubernetes-list-map-keys", [])
    seen: set[str] = set()
    for index, item in enumerate(items):
        identity = repr([item.get(k) for k in keys]) if list_type == "map" else repr(item)
        if identity in seen:
            yield f"{path}[{index}]: Duplicate value: {identity}"
        seen.add(identity)


def violations(resource: Resource) -> list[str]:
    """What the apiserver's CEL rules and list-type checks would refuse in this (already schema-valid) resource."""
    document = resource.model_dump(mode="json", by_alias=True, exclude_none=True)
    return list(_walk(_schema(type(resource)), document, ""))
