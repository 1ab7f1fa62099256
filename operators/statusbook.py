"""What the Workflow, Connector and Policy reconcilers share: one converge at a time per object, and status
writes that skip what this process already wrote.

The watch may deliver an object whose status predates this process's last write (the write's own event is
still on its way), so the last written status is the one to build on, and writing the same status again would
only produce another event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import kubernetes
import pydantic

GROUP, VERSION = "aiplane.io", "v1alpha1"
MERGE = "application/merge-patch+json"
Status = TypeVar("Status", bound=pydantic.BaseModel)


@dataclass
class StatusBook:
    custom: kubernetes.client.CustomObjectsApi
    plural: str
    _locks: dict[tuple[str, str], asyncio.Lock] = field(default_factory=dict)
    # Object uid -> the status this process last wrote: newer than any the watch may have delivered yet.
    _written: dict[str, dict[str, Any]] = field(default_factory=dict)

    def lock(self, namespace: str, name: str) -> asyncio.Lock:
        """Held while an object converges, so two events for it never interleave."""
        return self._locks.setdefault((namespace, name), asyncio.Lock())

    def forget(self, namespace: str, name: str, uid: str | None) -> None:
        self._locks.pop((namespace, name), None)
        self._written.pop(uid or "", None)

    def previous(self, body: Mapping[str, Any], model: type[Status]) -> Status | None:
        """The object's current status: what this process last wrote, else the object's; None if neither parses
        (a status written by an older operator is started over rather than stopped at)."""
        uid = str((body.get("metadata") or {}).get("uid") or "")
        raw = self._written.get(uid) or dict(body.get("status") or {})
        try:
            return model.model_validate(raw) if raw else None
        except pydantic.ValidationError:
            return None

    async def write(self, namespace: str, name: str, uid: str, patch: dict[str, Any]) -> bool:
        """Merge-patch the status subresource with ``patch`` unless it is what this process last wrote; False when
        nothing was written (unchanged, or the object is gone)."""
        if self._written.get(uid) == patch:
            return False
        try:
            await asyncio.to_thread(
                self.custom.patch_namespaced_custom_object_status,
                GROUP,
                VERSION,
                namespace,
                self.plural,
                name,
                {"status": patch},
                _content_type=MERGE,
                _preload_content=False,
            )
        except kubernetes.client.ApiException as error:
            if error.status == 404:
                return False  # deleted meanwhile
            raise
        self._written[uid] = patch
        return True
