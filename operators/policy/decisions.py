"""Model rollout decisions (promotion, rollback, abort) for the audit log, from the Model operator's events.

The operators import only ``crds``, so they cannot reach the engine's database themselves; ``aiplane operator``
hands in a recorder (``engine.store.audit.AuditLog.append``) when it is given a database, and the Model operator's
event poster is wrapped so that every rollout decision it announces is also recorded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from operators.model.rollout import Event

log = logging.getLogger(__name__)

#: (kind, subject, decision, details) -> anything; ``AuditLog.append`` fits.
Recorder = Callable[[str, str, str, Mapping[str, Any]], object]
Poster = Callable[[dict[str, Any], Event], None]

ROLLOUT_DECISIONS = {
    "RolloutPromoted": "promote",
    "RolloutRolledBack": "rollback",
    "RolloutAborted": "abort",
    # A promotion that needs people: asked for, and refused (rejected or expired), which rolls the canary back.
    "PromotionAwaitingApproval": "approval-required",
    "PromotionRejected": "rollback",
}


def recording(post: Poster, record: Recorder) -> Poster:
    """``post``, and for a rollout decision also ``record`` it (kind ``model``, subject ``namespace/name``)."""

    def post_and_record(body: dict[str, Any], event: Event) -> None:
        post(body, event)
        decision = ROLLOUT_DECISIONS.get(event.reason)
        if decision is None:
            return
        meta = body.get("metadata") or {}
        subject = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
        details = {"reason": event.reason, "message": event.message, "generation": meta.get("generation")}
        try:
            record("model", subject, decision, details)
        except Exception:  # the rollout has happened; failing the reconcile would not undo it, only repeat it
            log.error("could not record a rollout decision in the audit log", exc_info=True,
                      extra={"model": subject, "decision": decision})  # fmt: skip

    return post_and_record
