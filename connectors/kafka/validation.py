"""A message's value against its workflow's ``inputSchema`` (JSON Schema, via jsonschema-rs), as the gateway checks
a request's input: a source must not make tasks of input the gateway would refuse.

Validators are compiled once per workflow version (versions are content hashes, so one never goes stale).
"""

from __future__ import annotations

import threading
from typing import Any

import jsonschema_rs

_MAX_ERRORS = 5


class InputInvalidError(Exception):
    """The value does not match the workflow's inputSchema; the message says which fields and why."""


class InputSchemas:
    def __init__(self) -> None:
        self._validators: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def check(self, workflow: str, version: str, schema: dict[str, Any] | None, value: Any) -> None:
        if not schema:
            return
        key = (workflow, version)
        with self._lock:
            validator = self._validators.get(key)
        if validator is None:
            validator = jsonschema_rs.validator_for(schema, offline=True)
            with self._lock:
                self._validators[key] = validator
        if validator.is_valid(value):
            return
        problems = []
        for error in validator.iter_errors(value):
            where = "/".join(str(part) for part in error.instance_path) or "<root>"
            problems.append(f"{where}: {error.message}")
            if len(problems) >= _MAX_ERRORS:
                break
        if problems:
            raise InputInvalidError(
                f"the message does not match the inputSchema of workflow {workflow!r}: {'; '.join(problems)}"
            )
