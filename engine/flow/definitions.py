"""Workflow definitions: validation, content-hash versions, and the versioned store of specs.

A version is the hash of the canonical spec, so registering the same spec twice is a no-op and a task row's
(name, version) always means exactly one spec. New tasks get the workflow's head version; running tasks keep the
version they started with, because specs are never updated in place.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from pydantic import ValidationError

from crds.workflow import WorkflowSpec
from engine.errors import InvalidRequestError, StepError, WorkflowNotFoundError
from engine.flow import cel
from engine.store.database import dialect_insert
from engine.store.schema import workflow_heads, workflows
from engine.store.types import dumps

VERSION_LENGTH = 16


def parse_spec(spec: WorkflowSpec | Mapping[str, Any]) -> WorkflowSpec:
    """Validate a spec (camelCase as in the CRD, or snake_case) including what the CRD checks with CEL."""
    if not isinstance(spec, WorkflowSpec):
        try:
            spec = WorkflowSpec.model_validate(spec)
        except ValidationError as exc:
            raise InvalidRequestError(f"invalid workflow spec: {exc}", field="spec") from exc
    _check_graph(spec)
    _check_cel(spec)
    return spec


def canonical(spec: WorkflowSpec) -> dict[str, Any]:
    return spec.model_dump(mode="json", by_alias=True, exclude_none=True)


def version_of(spec: WorkflowSpec) -> str:
    return hashlib.sha256(dumps(canonical(spec)).encode()).hexdigest()[:VERSION_LENGTH]


def _check_graph(spec: WorkflowSpec) -> None:
    # The apiserver enforces these with the CRD's x-kubernetes-validations; specs registered directly
    # (aiplane dev, tests, the gateway) are checked here the same way.
    names = [step.name for step in spec.steps]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise InvalidRequestError(f"step names must be unique; repeated: {', '.join(duplicates)}", field="steps")
    known = set(names)
    for step in spec.steps:
        block = getattr(step, step.type)
        if block is None:
            raise InvalidRequestError(
                f"step {step.name!r} has type {step.type} but no '{step.type}' block", field=f"steps.{step.name}"
            )
        for other in ("model", "connector", "rules", "approval"):
            if other != step.type and getattr(step, other) is not None:
                raise InvalidRequestError(
                    f"step {step.name!r} has type {step.type} and may not have a '{other}' block",
                    field=f"steps.{step.name}.{other}",
                )
        if step.next is not None and step.end:
            raise InvalidRequestError(f"step {step.name!r} sets both next and end", field=f"steps.{step.name}.next")
        references = {"next": step.next}
        if step.rules is not None:
            references["rules.default"] = step.rules.default
            references.update({f"rules.branches[{i}].next": b.next for i, b in enumerate(step.rules.branches)})
        if step.approval is not None:
            references["approval.onReject"] = step.approval.on_reject
            references["approval.onExpire"] = step.approval.on_expire
        for where, target in references.items():
            if target is not None and target not in known:
                raise InvalidRequestError(
                    f"step {step.name!r} {where} names {target!r}, which is not a step of this workflow",
                    field=f"steps.{step.name}.{where}",
                )
    if spec.sla is not None and spec.sla.escalate_to is not None and spec.sla.escalate_to not in known:
        raise InvalidRequestError(
            f"sla.escalateTo names {spec.sla.escalate_to!r}, which is not a step of this workflow",
            field="sla.escalateTo",
        )


def _check_cel(spec: WorkflowSpec) -> None:
    """Compile every CEL expression now, so a typo is refused at registration rather than dead-lettering tasks."""
    for step in spec.steps:
        expressions: dict[str, str] = {}
        if step.model is not None:
            expressions.update({f"model.input.{k}": v for k, v in step.model.input.items()})
        if step.connector is not None:
            expressions.update({f"connector.input.{k}": v for k, v in step.connector.input.items()})
        if step.rules is not None:
            expressions.update({f"rules.set.{k}": v for k, v in step.rules.set.items()})
            expressions.update({f"rules.branches[{i}].when": b.when for i, b in enumerate(step.rules.branches)})
        for where, expression in expressions.items():
            try:
                cel.compile_expression(expression, where=f"step {step.name!r} {where}")
            except StepError as exc:
                raise InvalidRequestError(exc.message, field=f"steps.{step.name}.{where}") from exc


def register(conn: sa.Connection, name: str, spec: WorkflowSpec, now: datetime) -> str:
    """Store ``spec`` under its content version (if new) and make it the version new tasks get."""
    version = version_of(spec)
    # Upserts: two processes registering the same workflow at once must both succeed.
    conn.execute(
        dialect_insert(conn, workflows)
        .values(name=name, version=version, spec=canonical(spec), created_at=now)
        .on_conflict_do_nothing()
    )
    conn.execute(
        dialect_insert(conn, workflow_heads)
        .values(name=name, version=version, updated_at=now)
        .on_conflict_do_update(index_elements=["name"], set_={"version": version, "updated_at": now})
    )
    return version


# Built once: every submission batch asks, and building the statement cost more than running it.
_HEAD_VERSION = sa.select(workflow_heads.c.version).where(workflow_heads.c.name == sa.bindparam("name"))


def head_version(conn: sa.Connection, name: str) -> str:
    version = conn.execute(_HEAD_VERSION, {"name": name}).scalar()
    if version is None:
        raise WorkflowNotFoundError(f"no workflow named {name!r} is registered", workflow=name)
    return str(version)


_cache_lock = threading.Lock()
_cache: dict[tuple[str, str], WorkflowSpec] = {}


def cached(name: str, version: str) -> WorkflowSpec | None:
    """The spec of one version if this process has loaded it before (no database needed)."""
    with _cache_lock:
        return _cache.get((name, version))


def load(conn: sa.Connection, name: str, version: str) -> WorkflowSpec:
    """The spec of one version; cached forever, since a version's content never changes."""
    key = (name, version)
    with _cache_lock:
        cached = _cache.get(key)
    if cached is not None:
        return cached
    raw = conn.execute(
        sa.select(workflows.c.spec).where(workflows.c.name == name, workflows.c.version == version)
    ).scalar()
    if raw is None:
        raise WorkflowNotFoundError(f"workflow {name!r} has no version {version!r}", workflow=name, version=version)
    spec = WorkflowSpec.model_validate(raw)
    with _cache_lock:
        _cache[key] = spec
    return spec
