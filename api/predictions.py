"""Counting what a model predicted, per version, for the canary analysis's drift check.

The predicted class is the value of one top-level field of the model's JSON answer, named by the Model
(``spec.canary.analysis.predictionField``, e.g. ``claim_type``). The answer is not parsed: the gateway passes it
through as bytes, and a full ``json.loads`` of a claims answer costs about ten microseconds, several times the rest
of this bookkeeping. The field is found by its quoted name and its value read from there, which is exact for
answers whose first occurrence of that name is the top-level field (a pydantic model's output puts its fields in
declaration order, nested objects after the scalars before them).

Classes are labels, so their number is bounded per model version: values past ``MAX_CLASSES`` count as ``other``,
and a value is cut to ``MAX_CLASS_LENGTH`` characters.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from api.telemetry import MODEL_PREDICTIONS

MAX_CLASSES = 32
MAX_CLASS_LENGTH = 64
OTHER = "other"
_WHITESPACE = b" \t\r\n"
_LITERAL_END = b",}] \t\r\n"


# What a model resolver may know besides endpoints (``aiplane.kubemodels.KubeModelResolver`` knows both): the
# namespace of its Models, and per Model the answer field that holds the predicted class. Read by name, so the
# engine's ``ModelResolver`` protocol, which the static resolvers also implement, stays as it is.


def namespace_of(resolver: Any) -> str:
    """The namespace of the resolver's Models; empty for resolvers outside a cluster (``aiplane dev``)."""
    return str(getattr(resolver, "namespace", "") or "")


def prediction_field(resolver: Any, model: str) -> str | None:
    lookup = getattr(resolver, "prediction_field", None)
    return lookup(model) if lookup is not None else None


def prediction_class(content: bytes, field: str) -> str | None:
    """The value of ``field`` in the JSON object ``content`` (a string, or a literal such as a number or a
    boolean, as written), or None when the answer has no such field."""
    key = _keys.get(field)
    if key is None:
        key = _keys.setdefault(field, json.dumps(field).encode())
    at = content.find(key)
    if at < 0:
        return None
    i, n = at + len(key), len(content)
    while i < n and content[i] in _WHITESPACE:
        i += 1
    if i >= n or content[i] != 0x3A:  # ':' - the name was a value somewhere, not a key
        return None
    i += 1
    while i < n and content[i] in _WHITESPACE:
        i += 1
    if i >= n:
        return None
    if content[i] == 0x22:  # '"'
        end = content.find(b'"', i + 1)
        if end < 0:
            return None
        raw = content[i + 1 : end]
        if b"\\" in raw:  # escapes (rare in a class name): let the JSON decoder read the string properly
            return _decode_string(content, i)
        return raw[:MAX_CLASS_LENGTH].decode("utf-8", "replace")
    end = i
    while end < n and content[end] not in _LITERAL_END:
        end += 1
    literal = content[i:end]
    if not literal or literal[:1] in (b"{", b"["):
        return None  # an object or a list is no class
    return literal[:MAX_CLASS_LENGTH].decode("utf-8", "replace")


def _decode_string(content: bytes, start: int) -> str | None:
    try:
        value, _ = json.JSONDecoder().raw_decode(content.decode("utf-8", "replace"), _char_index(content, start))
    except (json.JSONDecodeError, ValueError):
        return None
    return str(value)[:MAX_CLASS_LENGTH]


def _char_index(content: bytes, byte_index: int) -> int:
    return len(content[:byte_index].decode("utf-8", "replace"))


_keys: dict[str, bytes] = {}
# (namespace, model, version) -> the classes seen so far, each with its counter (at most MAX_CLASSES).
_counters: dict[tuple[str, str, str], dict[str, Any]] = {}


def count(namespace: str, model: str, version: str, content: bytes, field: str) -> None:
    """Count the class of one successful answer; an answer without the field is not counted."""
    value = prediction_class(content, field)
    if value is None:
        return
    classes = _counters.get((namespace, model, version))
    if classes is None:
        classes = _counters.setdefault((namespace, model, version), {})
    counter = classes.get(value)
    if counter is None:
        label = value if len(classes) < MAX_CLASSES else OTHER
        counter = classes.get(label) or MODEL_PREDICTIONS.labels(namespace, model, version, label)
        classes[label] = counter
    counter.inc()


def classes_seen(namespace: str, model: str, version: str) -> Sequence[str]:
    return list(_counters.get((namespace, model, version), {}))
