"""One validation of one Workflow: parse, check against the namespace, write status when it changed.

Every trigger (the Workflow changed; a Model, Connector or Policy of its namespace came, went or changed
readiness) runs the same ``converge``, so the outcome never depends on which event came first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kubernetes
import pydantic

from crds import checks
from crds.workflow import WorkflowSpec, WorkflowStatus
from operators.workflow import status as statuses
from operators.workflow import validation

log = logging.getLogger(__name__)
GROUP, VERSION, PLURAL = "aiplane.io", "v1alpha1", "workflows"
MERGE = "application/merge-patch+json"
MAX_CHECKED = 4096


@dataclass
class Reconciler:
    custom: kubernetes.client.CustomObjectsApi
    # Whole seconds, as Kubernetes writes condition times.
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC).replace(microsecond=0))
    _locks: dict[tuple[str, str], asyncio.Lock] = field(default_factory=dict)
    # Workflow uid -> the status this process last wrote: newer than any the watch may have delivered yet.
    _written: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Content version -> the spec's own problems (crds.checks), oldest first.
    _checked: dict[str, list[checks.Problem]] = field(default_factory=dict)

    def forget(self, namespace: str, name: str, uid: str | None) -> None:
        self._locks.pop((namespace, name), None)
        self._written.pop(uid or "", None)

    async def converge(self, body: Mapping[str, Any], namespace: validation.Namespace) -> None:
        meta = body.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            return
        key = (str(meta["namespace"]), str(meta["name"]))
        async with self._locks.setdefault(key, asyncio.Lock()):
            await self._converge(body, namespace)

    async def _converge(self, body: Mapping[str, Any], namespace: validation.Namespace) -> None:
        meta = body["metadata"]
        where, name, uid = str(meta["namespace"]), str(meta["name"]), str(meta["uid"])
        generation = int(meta.get("generation") or 0)
        raw_status = self._written.get(uid) or dict(body.get("status") or {})
        try:
            previous = WorkflowStatus.model_validate(raw_status) if raw_status else None
        except pydantic.ValidationError:
            previous = None  # written by an older operator: start over rather than stop
        try:
            spec = WorkflowSpec.model_validate(body.get("spec") or {})
        except pydantic.ValidationError as error:
            # The apiserver's schema makes this rare (an older CRD, or a field the models tightened since).
            paths = [(f"spec.{'.'.join(map(str, e['loc']))}", e["msg"]) for e in error.errors()]
            found = [checks.Problem(path, f"{path}: {message}") for path, message in paths]
            folded = statuses.fold(
                previous, generation=generation, version="", problems=found, unready=[], now=self.clock()
            )
            await self._write(where, name, uid, folded)
            return
        version = checks.version_of(spec)
        # A spec's own problems depend on nothing else: checked once per version, not on every Model event.
        own = self._checked.get(version)
        if own is None:
            own = self._checked[version] = checks.problems(spec)
            if len(self._checked) > MAX_CHECKED:
                self._checked.pop(next(iter(self._checked)))
        problems = own + validation.references(spec, namespace, where)
        unready = [] if problems else validation.unready(spec, namespace)
        folded = statuses.fold(
            previous, generation=generation, version=version, problems=problems, unready=unready, now=self.clock()
        )
        if await self._write(where, name, uid, folded):
            valid = not problems
            log.info(
                "workflow validated",
                extra={"workflow": f"{where}/{name}", "valid": valid, "version": folded.version},
            )

    async def _write(self, namespace: str, name: str, uid: str, status: WorkflowStatus) -> bool:
        body = statuses.to_patch(status)
        if self._written.get(uid) == body:
            return False
        try:
            await asyncio.to_thread(
                self.custom.patch_namespaced_custom_object_status,
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                {"status": body},
                _content_type=MERGE,
                _preload_content=False,
            )
        except kubernetes.client.ApiException as error:
            if error.status == 404:
                return False  # deleted meanwhile
            raise
        self._written[uid] = body
        return True
