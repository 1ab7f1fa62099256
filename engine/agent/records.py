"""An agent step's checkpoints: one ``agent_actions`` row per planner proposal, and its audit records.

A proposal is written, with its decision, before its action runs; the action's result is written when it ends.
Each write is its own short transaction and happens only while the worker still holds the step run's lease (the
same fencing token the worker's completion needs), so a worker that lost the step cannot add to its record. The
audit record of each write goes into the same transaction: the decision record and the audit log never disagree.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa

from crds.planner import Outcome, PlanResponse, TranscriptEntry
from engine.clock import new_id
from engine.errors import StepError
from engine.models import StepState
from engine.payloads import PayloadCodec
from engine.store import audit
from engine.store.database import Database
from engine.store.schema import agent_actions, step_runs, tasks
from policies.audit import Entry

Decision = Literal["allowed", "denied", "invalid", "done", "escalated", "limit"]
State = Literal["running", "succeeded", "failed", "denied", "invalid", "done", "escalated", "limit"]
#: Proposals that end the loop, and those whose action ran (or would have) and go back to the planner.
FINAL_DECISIONS: frozenset[str] = frozenset({"done", "escalated", "limit"})
_AS_OUTCOME: dict[str, Outcome] = {
    "succeeded": "succeeded",
    "failed": "failed",
    "denied": "denied",
    "invalid": "invalid",
}

AUDIT_PROPOSAL = "agent-proposal"
AUDIT_ACTION = "agent-action"
LEASE_LOST = "LeaseLost"


@dataclass(frozen=True, kw_only=True)
class ActionRecord:
    id: str
    seq: int
    proposal: PlanResponse
    decision: Decision
    reason: str
    policies: list[str]
    state: State
    observation: Any
    error: dict[str, Any] | None
    cost: float
    attempts: int
    child_task_id: str | None
    created_at: datetime
    finished_at: datetime | None

    def transcript_entry(self) -> TranscriptEntry | None:
        """What the planner is told about this proposal; None for one that ended the loop."""
        outcome = _AS_OUTCOME.get(self.state)
        if outcome is None or self.proposal.action is None:
            return None
        return TranscriptEntry(
            step=self.seq,
            action=self.proposal.action,
            arguments=self.proposal.arguments,
            confidence=self.proposal.confidence,
            reasoning=self.proposal.reasoning,
            outcome=outcome,
            observation=self.observation if outcome == "succeeded" else None,
            error=_why(outcome, self.reason, self.error),
        )

    def as_json(self) -> dict[str, Any]:
        """The record as the step's output and the API show it."""
        out: dict[str, Any] = {
            "step": self.seq,
            "action": self.proposal.action,
            "arguments": self.proposal.arguments,
            "confidence": self.proposal.confidence,
            "reasoning": self.proposal.reasoning,
            "decision": self.decision,
            "reason": self.reason,
            "policies": self.policies,
            "state": self.state,
            "cost": self.cost,
            "attempts": self.attempts,
        }
        if self.observation is not None:
            out["observation"] = self.observation
        if self.error is not None:
            out["error"] = self.error
        if self.child_task_id is not None:
            out["childTaskId"] = self.child_task_id
        if self.proposal.done:
            out["result"] = self.proposal.result
        return out


def _why(outcome: Outcome, reason: str, error: Mapping[str, Any] | None) -> str | None:
    """What the planner is told went wrong: the decision's reason, or the action's last error."""
    if outcome in ("denied", "invalid"):
        return reason
    if outcome == "failed":
        error = error or {}
        return f"{error.get('kind', 'Error')}: {error.get('message', '')}"
    return None


@dataclass(frozen=True, kw_only=True)
class Holder:
    """Who writes: the step run, its lease, and the task's facts the audit records name."""

    task_id: str
    tenant: str
    workflow: str
    step: str
    step_run_id: str
    lease_token: str


def _subject(holder: Holder, seq: int) -> str:
    return proposal_subject(holder.task_id, holder.step, seq)


def proposal_subject(task_id: str, step: str, seq: int) -> str:
    """The audit subject of an agent step's proposal ``seq`` (its decision, action and masking records)."""
    return f"task/{task_id}/step/{step}/proposal/{seq}"


def fingerprint(value: Any) -> str:
    """A hash of a payload, for audit records: they name what was sent without holding personal data."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


class Checkpoints:
    def __init__(self, db: Database, codec: PayloadCodec) -> None:
        self.db = db
        self.codec = codec

    def load(self, step_run_id: str) -> list[ActionRecord]:
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(agent_actions).where(agent_actions.c.step_run_id == step_run_id).order_by(agent_actions.c.seq)
            ).all()
        return [self._record(row) for row in rows]

    def of_task(self, task_id: str) -> list[tuple[str, ActionRecord]]:
        """Every agent step's records of a task, as (step name, record), in the order they were made."""
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(agent_actions, step_runs.c.name.label("step_name"))
                .join(step_runs, step_runs.c.id == agent_actions.c.step_run_id)
                .where(agent_actions.c.task_id == task_id)
                .order_by(step_runs.c.seq, agent_actions.c.seq)
            ).all()
        return [(row.step_name, self._record(row)) for row in rows]

    def data_class(self, task_id: str) -> str | None:
        """The task's data class (its ``privacy`` annotation), for agent action rules."""
        with self.db.read() as conn:
            annotations = conn.execute(sa.select(tasks.c.annotations).where(tasks.c.id == task_id)).scalar()
        privacy = (annotations or {}).get("privacy") if isinstance(annotations, Mapping) else None
        return str(privacy) if privacy else None

    def propose(
        self,
        holder: Holder,
        *,
        seq: int,
        proposal: PlanResponse,
        decision: Decision,
        reason: str,
        policies: Sequence[str],
        target: str | None,
        cost: float,
        now: datetime,
        masking: Entry | None = None,
    ) -> ActionRecord:
        """Record a proposal and its decision (the action, if allowed, runs after this); ``masking``: the audit
        record of what was masked in the proposal, appended with it."""
        state: State = "running" if decision == "allowed" else decision
        finished = None if state == "running" else now
        row = {
            "id": new_id(),
            "task_id": holder.task_id,
            "step_run_id": holder.step_run_id,
            "seq": seq,
            "tenant": holder.tenant,
            "proposal": proposal.model_dump(mode="json", by_alias=True),
            "decision": decision,
            "reason": reason,
            "policies": list(policies),
            "state": state,
            "observation": None,
            "observation_ref": None,
            "error": None,
            "cost": cost,
            "attempts": 0,
            "child_task_id": None,
            "created_at": now,
            "finished_at": finished,
        }
        details: dict[str, Any] = {
            "workflow": holder.workflow,
            "action": proposal.action,
            "target": target,
            "arguments": fingerprint(proposal.arguments),
            "confidence": proposal.confidence,
            "reasoning": proposal.reasoning[:1024],
            "reason": reason,
            "policies": list(policies),
        }
        with self.db.write() as conn:
            self._check_lease(conn, holder)
            conn.execute(sa.insert(agent_actions).values(**row))
            entry = Entry(AUDIT_PROPOSAL, _subject(holder, seq), decision, details, tenant=holder.tenant)
            audit.append_many(conn, [entry] if masking is None else [entry, masking], now=now)
        return _as_record(row, proposal)

    def started_child(self, holder: Holder, record: ActionRecord, child_task_id: str) -> ActionRecord:
        with self.db.write() as conn:
            self._check_lease(conn, holder)
            conn.execute(
                sa.update(agent_actions).where(agent_actions.c.id == record.id).values(child_task_id=child_task_id)
            )
        return dataclasses.replace(record, child_task_id=child_task_id)

    def finish(
        self,
        holder: Holder,
        record: ActionRecord,
        *,
        succeeded: bool,
        observation: Any,
        error: dict[str, Any] | None,
        action_cost: float,
        attempts: int,
        target: str,
        now: datetime,
        masking: Entry | None = None,
    ) -> ActionRecord:
        """Record how an allowed action ended: what the planner is told next; ``masking``: the audit record of
        what was masked in the observation, appended with it."""
        state: State = "succeeded" if succeeded else "failed"
        encoded = self.codec.encode(observation) if succeeded else None
        cost = record.cost + action_cost
        details: dict[str, Any] = {
            "workflow": holder.workflow,
            "action": record.proposal.action,
            "target": target,
            "attempts": attempts,
            "cost": action_cost,
        }
        if succeeded:
            details["observation"] = fingerprint(observation)
        elif error is not None:
            details["error"] = {"kind": error.get("kind"), "retryable": error.get("retryable")}
        with self.db.write() as conn:
            self._check_lease(conn, holder)
            conn.execute(
                sa.update(agent_actions)
                .where(agent_actions.c.id == record.id, agent_actions.c.state == "running")
                .values(
                    state=state,
                    observation=encoded.inline if encoded else None,
                    observation_ref=encoded.ref if encoded else None,
                    error=error,
                    cost=cost,
                    attempts=attempts,
                    finished_at=now,
                )
            )
            entry = Entry(AUDIT_ACTION, _subject(holder, record.seq), state, details, tenant=holder.tenant)
            audit.append_many(conn, [entry] if masking is None else [entry, masking], now=now)
        return dataclasses.replace(
            record,
            state=state,
            observation=observation if succeeded else None,
            error=error,
            cost=cost,
            attempts=attempts,
            finished_at=now,
        )

    @staticmethod
    def _check_lease(conn: sa.Connection, holder: Holder) -> None:
        held = conn.execute(
            sa.select(step_runs.c.id).where(
                step_runs.c.id == holder.step_run_id,
                step_runs.c.lease_token == holder.lease_token,
                step_runs.c.state == StepState.RUNNING,
            )
        ).first()
        if held is None:
            # Another worker holds the step now (this one's lease ran out): it resumes from the record.
            raise StepError(LEASE_LOST, "the agent step's lease was lost; another worker resumes it", retryable=True)

    def _record(self, row: sa.Row[Any]) -> ActionRecord:
        observation = self.codec.decode(row.observation, row.observation_ref)
        return _as_record(dict(row._mapping), PlanResponse.model_validate(row.proposal), observation)


def _as_record(values: Mapping[str, Any], proposal: PlanResponse, observation: Any = None) -> ActionRecord:
    """An ``agent_actions`` row's values (as read, or as just inserted) as a record."""
    return ActionRecord(
        id=values["id"],
        seq=values["seq"],
        proposal=proposal,
        decision=values["decision"],
        reason=values["reason"],
        policies=list(values["policies"]),
        state=values["state"],
        observation=observation,
        error=values["error"],
        cost=values["cost"],
        attempts=values["attempts"],
        child_task_id=values["child_task_id"],
        created_at=values["created_at"],
        finished_at=values["finished_at"],
    )
