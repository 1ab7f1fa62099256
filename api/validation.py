"""Checking a task's input against its workflow's ``inputSchema`` (JSON Schema, any draft, via jsonschema-rs).

Validators are compiled once per workflow version (versions are content hashes, so a compiled validator never
goes stale). ``$ref``s to remote documents are not fetched: a schema is checked on its own.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import jsonschema_rs

from api.problems import FieldError, ProblemError, field_error, format_loc

MAX_DEPTH = 64
MAX_ERRORS = 20


class InputValidators:
    def __init__(self, max_cached: int = 512) -> None:
        self.max_cached = max_cached
        self._cache: OrderedDict[tuple[str, str], jsonschema_rs.Validator | None] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, workflow: str, version: str, schema: dict[str, Any] | None, value: Any) -> None:
        """Raise a 422 ``ProblemError`` naming every offending field of ``value`` (at ``input.*``)."""
        check_depth(value)
        validator = self._validator(workflow, version, schema)
        if validator is None:
            return
        errors: list[FieldError] = []
        for error in validator.iter_errors(value):
            path: list[str | int] = ["input", *error.instance_path]
            kind = error.kind
            if isinstance(kind, jsonschema_rs.ValidationErrorKind.Required):
                path.append(kind.property)
            errors.append(field_error(format_loc(path), error.message))
            if len(errors) >= MAX_ERRORS:
                break
        if errors:
            fields = ", ".join(dict.fromkeys(e.field for e in errors))
            raise ProblemError(
                422,
                "input-invalid",
                f"the input does not match the inputSchema of workflow {workflow!r}; fix: {fields}",
                errors=errors,
                workflow=workflow,
            )

    def _validator(self, workflow: str, version: str, schema: dict[str, Any] | None) -> jsonschema_rs.Validator | None:
        key = (workflow, version)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        validator = None
        if schema:
            try:
                validator = jsonschema_rs.validator_for(schema, offline=True)
            except (ValueError, jsonschema_rs.ValidationError) as exc:
                raise ProblemError(
                    409,
                    "workflow-invalid",
                    f"workflow {workflow!r} (version {version}) has an inputSchema that is not a valid JSON Schema "
                    f"({str(exc).splitlines()[0]}); fix the Workflow's spec.inputSchema",
                    workflow=workflow,
                ) from exc
        with self._lock:
            self._cache[key] = validator
            while len(self._cache) > self.max_cached:
                self._cache.popitem(last=False)
        return validator


def check_depth(value: Any, limit: int = MAX_DEPTH) -> None:
    """Refuse inputs nested deeper than ``limit`` (they would only exhaust the recursion limit further on)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                raise ProblemError(
                    422,
                    "input-too-deep",
                    f"the input is nested deeper than {limit} levels; flatten it",
                    errors=[field_error("input", f"nested deeper than {limit} levels")],
                )
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
