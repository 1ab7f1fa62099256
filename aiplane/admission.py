"""The CRDs' cross-field checks (CEL ``x-kubernetes-validations`` and list uniqueness), run without an apiserver.

``aiplane dev`` and ``aiplane validate`` read manifests that never reach a kube-apiserver; evaluating the very rules
the generated CRD carries keeps the embedded mode from accepting what a cluster would refuse.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from functools import cache
from typing import Any

import cel

from crds.base import Resource
from crds.generate import crd_manifest

Schema = dict[str, Any]


def _is_sorted(values: list[Any]) -> bool:
    return all(a <= b for a, b in itertools.pairwise(values))


def _join(values: list[Any], separator: str = "") -> str:
    return separator.join(str(v) for v in values)


@cache
def _program(expression: str) -> cel.Program:
    return cel.compile(expression)


@cache
def _schema(resource: type[Resource]) -> Schema:
    schema: Schema = crd_manifest(resource)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _evaluate(expression: str, value: Any) -> Any:
    context = cel.Context({"self": value})
    # Functions of the Kubernetes CEL library that the rules use and the CEL standard library lacks.
    context.add_function("isSorted", _is_sorted)
    context.add_function("join", _join)
    return _program(expression).execute(context)


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
