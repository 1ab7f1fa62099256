"""One validation of one Workflow: parse, check against the namespace, write status when it changed.

Every trigger (the Workflow changed; a Model, Connector or Policy of its namespace came, went or changed
readiness) runs the same ``converge``, so the outcome never depends on which event came first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kubernetes
import pydantic

from crds import checks
from crds.workflow import WorkflowSpec, WorkflowStatus
from operators.statusbook import StatusBook
from operators.workflow import status as statuses
from operators.workflow import validation

log = logging.getLogger(__name__)
PLURAL = "workflows"
MAX_CHECKED = 4096


@dataclass
class Reconciler:
    custom: kubernetes.client.CustomObjectsApi
    # Whole seconds, as Kubernetes writes condition times.
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC).replace(microsecond=0))
    # Content version -> the spec's own problems (crds.checks), oldest first.
    _checked: dict[str, list[checks.Problem]] = field(default_factory=dict)

    book: StatusBook = field(init=False)

    def __post_init__(self) -> None:
        self.book = StatusBook(self.custom, PLURAL)

    def forget(self, namespace: str, name: str, uid: str | None) -> None:
        self.book.forget(namespace, name, uid)

    async def converge(self, body: Mapping[str, Any], namespace: validation.Namespace) -> None:
        meta = body.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            return
        key = (str(meta["namespace"]), str(meta["name"]))
        async with self.book.lock(*key):
            await self._converge(body, namespace)

    async def _converge(self, body: Mapping[str, Any], namespace: validation.Namespace) -> None:
        meta = body["metadata"]
        where, name, uid = str(meta["namespace"]), str(meta["name"]), str(meta["uid"])
        generation = int(meta.get("generation") or 0)
        previous = self.book.previous(body, WorkflowStatus)
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
        return await self.book.write(namespace, name, uid, statuses.to_patch(status))
