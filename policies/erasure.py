"""GDPR erasure: which tasks belong to a data subject, and how the erasure is recorded without naming them. Pure.

A task belongs to subject ``S`` when

- it was submitted with the ``subject`` policy annotation ``S`` (``{"policy": {"subject": "S"}}`` on the API,
  ``Submission(annotations={"subject": "S"})`` in code): the way to make erasure exact; or
- one of the input fields the erasure request names holds ``S`` (``aiplane erase --subject S --field
  customer.id``), for tasks submitted without the annotation (a dotted path into the input; numbers compare as
  their text).

The audit record of an erasure names the subject by ``subject_digest`` (sha256), never in clear: an auditor who
knows the id can check the record, and the log itself keeps no trace of the person.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

#: The policy annotation naming a task's data subject.
SUBJECT_ANNOTATION = "subject"


class ErasureRequestError(ValueError):
    """An erasure request that cannot be carried out as given (an empty subject, a malformed field path)."""


def subject_digest(subject: str) -> str:
    return "sha256:" + hashlib.sha256(subject.encode()).hexdigest()


def parse_fields(fields: Iterable[str]) -> tuple[tuple[str, ...], ...]:
    """Dotted input field paths (``customer.id``) as tuples of keys."""
    parsed = []
    for field in fields:
        parts = tuple(field.removeprefix("input.").split("."))
        if not field or any(not part for part in parts):
            raise ErasureRequestError(f"not a field path: {field!r} (use dotted keys, e.g. customer.id)")
        parsed.append(parts)
    return tuple(parsed)


def check_subject(subject: str) -> str:
    if not subject or not subject.strip():
        raise ErasureRequestError("an erasure needs a subject id")
    return subject


def _at(value: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


def belongs(
    subject: str, annotations: Mapping[str, Any] | None, input: Any, fields: tuple[tuple[str, ...], ...]
) -> bool:
    """Whether a task with these annotations and input belongs to ``subject`` (see the module docstring)."""
    if annotations and annotations.get(SUBJECT_ANNOTATION) == subject:
        return True
    for path in fields:
        found = _at(input, path)
        if found is not None and not isinstance(found, (dict, list, bool)) and str(found) == subject:
            return True
    return False
