"""Workflow definitions: validation, content-hash versions, and the versioned store of specs.

A version is the hash of the canonical spec, so registering the same spec twice is a no-op and a task row's
(name, version) always means exactly one spec. New tasks get the workflow's head version; running tasks keep the
version they started with, because specs are never updated in place.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from pydantic import ValidationError

from crds import checks
from crds.workflow import WorkflowSpec
from engine.errors import InvalidRequestError, WorkflowNotFoundError
from engine.store.database import dialect_insert
from engine.store.schema import workflow_heads, workflows

VERSION_LENGTH = checks.VERSION_LENGTH


def parse_spec(spec: WorkflowSpec | Mapping[str, Any]) -> WorkflowSpec:
    """Validate a spec (camelCase as in the CRD, or snake_case) including what the CRD checks with CEL."""
    if not isinstance(spec, WorkflowSpec):
        try:
            spec = WorkflowSpec.model_validate(spec)
        except ValidationError as exc:
            raise InvalidRequestError(f"invalid workflow spec: {exc}", field="spec") from exc
    # The same checks the Workflow operator reports as its Valid condition; the first one is refused here.
    found = checks.problems(spec)
    if found:
        raise InvalidRequestError(found[0].message, field=found[0].field)
    return spec


canonical = checks.canonical
version_of = checks.version_of


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
