"""One evaluation of one Policy: parse, select in its namespace, check, write status when it changed.

Checks include that the PII key a hashing or tokenizing Policy needs is in its namespace when kafkaSource
Connectors there run governed consumers (which read it from there); Secrets are not watched, so the recheck timer
notices one created later.

Every trigger (the Policy changed; a Workflow, Model or Connector of its namespace came, went or changed labels)
runs the same ``converge``, so the outcome never depends on which event came first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kubernetes
import pydantic

from crds.base import SecretKeyRef
from crds.checks import Problem
from crds.policy import PolicySpec, PolicyStatus
from operators.policy import evaluation
from operators.statusbook import StatusBook

log = logging.getLogger(__name__)
PLURAL = "policies"


@dataclass
class Reconciler:
    custom: kubernetes.client.CustomObjectsApi
    # Reads the PII key's Secret ``key`` (the one governed Kafka consumers get); without both, it is not checked.
    core: kubernetes.client.CoreV1Api | None = None
    key: SecretKeyRef | None = None
    # Whole seconds, as Kubernetes writes condition times.
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC).replace(microsecond=0))
    book: StatusBook = field(init=False)

    def __post_init__(self) -> None:
        self.book = StatusBook(self.custom, PLURAL)

    def forget(self, namespace: str, name: str, uid: str | None) -> None:
        self.book.forget(namespace, name, uid)

    async def converge(self, body: Mapping[str, Any], resources: Iterable[evaluation.Seen]) -> None:
        meta = body.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            return
        key = (str(meta["namespace"]), str(meta["name"]))
        async with self.book.lock(*key):
            await self._converge(body, list(resources))

    async def _converge(self, body: Mapping[str, Any], resources: list[evaluation.Seen]) -> None:
        meta = body["metadata"]
        where, name, uid = str(meta["namespace"]), str(meta["name"]), str(meta["uid"])
        generation = int(meta.get("generation") or 0)
        previous = self.book.previous(body, PolicyStatus)
        try:
            spec = PolicySpec.model_validate(body.get("spec") or {})
        except pydantic.ValidationError as error:
            # The apiserver's schema makes this rare (an older CRD, or a field the models tightened since).
            paths = [(f"spec.{'.'.join(map(str, e['loc']))}", e["msg"]) for e in error.errors()]
            found = [Problem(path, f"{path}: {message}", reason="InvalidSpec") for path, message in paths]
            folded = evaluation.fold(previous, generation=generation, selected={}, problems=found, now=self.clock())
            await self._write(where, name, uid, folded)
            return
        selected = evaluation.select(spec, resources)
        problems = evaluation.problems(spec)
        users = evaluation.key_users(spec, resources)
        if users and self.core is not None and self.key is not None:
            lacking = await asyncio.to_thread(_lacking, self.core, self.key, where)
            if lacking is not None:
                problems.append(evaluation.key_problem(spec, where, users, self.key, lacking))
        folded = evaluation.fold(
            previous, generation=generation, selected=selected, problems=problems, now=self.clock()
        )
        if await self._write(where, name, uid, folded):
            log.info(
                "policy evaluated",
                extra={"policy": f"{where}/{name}", "selected": folded.selected, "problems": len(problems)},
            )

    async def _write(self, namespace: str, name: str, uid: str, status: PolicyStatus) -> bool:
        return await self.book.write(namespace, name, uid, evaluation.to_patch(status))


def _lacking(core: kubernetes.client.CoreV1Api, key: SecretKeyRef, namespace: str) -> str | None:
    """What of ``key`` is not in ``namespace`` ("secret", "key"), "forbidden" if the operator may not read it."""
    try:
        secret = core.read_namespaced_secret(key.name, namespace)
    except kubernetes.client.ApiException as error:
        if error.status in (403, 404):
            return "forbidden" if error.status == 403 else "secret"
        raise
    return None if key.key in (secret.data or {}) else "key"
