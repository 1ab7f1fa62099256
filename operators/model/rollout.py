"""The canary rollout as a pure state machine: the current state, the clock, the canary's readiness, the user's
controls and the analysis verdict in; the next state out.

The state lives in ``Model.status.rollout`` (never only in memory), so an operator killed at any point resumes
the rollout from the step it was at, with the interval counted from when that step started.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from crds.model import Canary, Rollout, RolloutApproval
from operators.model import promotion

Control = Literal["pause", "resume", "abort"] | None
# Phases in which the canary serves traffic.
ACTIVE_PHASES = frozenset({"Progressing", "Paused", "AwaitingApproval"})

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> timedelta:
    """Go-style durations as the CRD accepts them (``30s``, ``1h30m``)."""
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return timedelta(seconds=sum(float(n) * _UNIT_S[u] for n, u in parts))


@dataclass(frozen=True)
class Verdict:
    """What the analysis of the canary found. ``passed`` None: too little traffic yet to judge."""

    passed: bool | None
    metric: str = ""
    value: float = 0.0
    threshold: float = 0.0
    detail: str = ""

    def describe(self) -> str:
        if self.passed is None:
            return self.detail or "not enough canary traffic to judge yet"
        if self.passed:
            return self.detail or "analysis holds"
        return f"{self.metric} {self.value:g} above the threshold {self.threshold:g}" + (
            f" ({self.detail})" if self.detail else ""
        )


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on the Model."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Decision:
    rollout: Rollout
    event: Event | None = None


def weight(canary: Canary, rollout: Rollout) -> int:
    """Percent of traffic the canary gets in this state."""
    if rollout.phase == "Promoted":
        return 100
    if rollout.phase in ACTIVE_PHASES and rollout.step >= 0:
        return canary.steps[min(rollout.step, len(canary.steps) - 1)]
    return 0


def advance(
    canary: Canary,
    current: Rollout | None,
    *,
    now: datetime,
    canary_ready: bool,
    control: Control = None,
    verdict: Verdict | None = None,
    approval: RolloutApproval | str | None = None,
    approval_required: bool | None = None,
) -> Decision:
    """The next state of the rollout of ``canary``; ``current`` None or about another version starts afresh.

    ``approval``: while the rollout awaits approval, the approval as it stands now (expiry already applied), or
    why none can be asked for; None: not looked at in this run. ``approval_required``: whether promotion needs
    people (the spec's ``promotion.approval`` or a Policy's approval rule); None: as the spec says.
    """
    if approval_required is None:
        approval_required = needs_approval(canary)
    if current is None or current.version != canary.version:
        started = Rollout(
            version=canary.version, phase="Progressing", step=-1, step_started_at=now, message="canary starting"
        )
        return Decision(started, Event("Normal", "RolloutStarted", f"rolling out {canary.version}"))
    if current.phase not in ACTIVE_PHASES:
        return Decision(current)
    if control == "abort":
        message = f"{canary.version} aborted by the user at {weight(canary, current)}% canary traffic"
        return Decision(_with(current, phase="Aborted", message=message), Event("Warning", "RolloutAborted", message))
    if current.phase == "AwaitingApproval" and control != "pause":
        return _await(canary, current, now, verdict, approval, required=approval_required)
    if current.phase == "Paused":
        if control != "resume":
            return Decision(current)
        # The interval starts over: traffic seen before the pause says nothing about the canary now.
        resumed = _with(current, phase="Progressing", step_started_at=now, message="resumed")
        return Decision(resumed, Event("Normal", "RolloutResumed", f"resumed at {weight(canary, current)}%"))
    if control == "pause":
        message = f"paused by the user at {weight(canary, current)}% canary traffic"
        return Decision(_with(current, phase="Paused", message=message), Event("Normal", "RolloutPaused", message))
    if current.step < 0:
        if not canary_ready:
            return Decision(current)
        return _enter_step(canary, current, 0, now)
    if verdict is not None and verdict.passed is False:
        message = f"rolled back {canary.version} at {weight(canary, current)}%: {verdict.describe()}"
        rolled_back = _with(current, phase="RolledBack", reason="AnalysisFailed", message=message)
        return Decision(rolled_back, Event("Warning", "RolloutRolledBack", message))
    step_started = current.step_started_at or now
    if now - step_started < parse_duration(canary.interval):
        return Decision(current)
    if verdict is None or verdict.passed is None:
        held = (verdict or Verdict(None)).describe()
        return Decision(current if current.message == held else _with(current, message=held))
    if current.step + 1 >= len(canary.steps):
        if approval_required:
            if current.approval is not None and current.approval.state == "approved":
                # Approved before a pause: the people's decision stands.
                return _promote(canary, current, now, f"approved by {', '.join(current.approval.decided_by)}")
            message = f"promotion of {canary.version} awaits approval: {verdict.describe()} at every step"
            return Decision(
                _with(current, phase="AwaitingApproval", message=message),
                Event("Normal", "PromotionAwaitingApproval", message),
            )
        return _promote(canary, current, now, f"{verdict.describe()} at every step")
    return _enter_step(canary, current, current.step + 1, now)


def needs_approval(canary: Canary) -> bool:
    return canary.promotion is not None and canary.promotion.approval is not None


def _promote(canary: Canary, current: Rollout, now: datetime, why: str) -> Decision:
    message = f"promoted {canary.version}: {why}"
    return Decision(
        _with(current, phase="Promoted", step_started_at=now, message=message),
        Event("Normal", "RolloutPromoted", message),
    )


def _await(
    canary: Canary,
    current: Rollout,
    now: datetime,
    verdict: Verdict | None,
    approval: RolloutApproval | str | None,
    *,
    required: bool,
) -> Decision:
    """Waiting at the last step: the analysis keeps judging (a failure still rolls back), people decide the rest."""
    if verdict is not None and verdict.passed is False:
        message = (
            f"rolled back {canary.version} at {weight(canary, current)}% while awaiting approval: {verdict.describe()}"
        )
        return Decision(
            _with(current, phase="RolledBack", reason="AnalysisFailed", message=message),
            Event("Warning", "RolloutRolledBack", message),
        )
    if not required:
        return _promote(canary, current, now, "neither the spec nor a Policy asks for an approval any more")
    if approval is None:
        return Decision(current)
    if isinstance(approval, str):
        message = f"promotion of {canary.version} awaits approval, which cannot be asked for: {approval}"
        return Decision(current if current.message == message else _with(current, message=message))
    if approval.state == "approved":
        return _promote(canary, _with(current, approval=approval), now, f"approved by {', '.join(approval.decided_by)}")
    if approval.state in ("rejected", "expired", "cancelled"):
        message = promotion.refused_message(canary.version, approval)
        return Decision(
            _with(current, phase="RolledBack", reason="PromotionRejected", approval=approval, message=message),
            Event("Warning", "PromotionRejected", message),
        )
    message = promotion.waiting_message(canary.version, approval)
    if current.approval == approval and current.message == message:
        return Decision(current)
    return Decision(_with(current, approval=approval, message=message))


def _with(current: Rollout, **changes: Any) -> Rollout:
    return current.model_copy(update=changes)


def _enter_step(canary: Canary, current: Rollout, step: int, now: datetime) -> Decision:
    message = f"canary at {canary.steps[step]}% (step {step + 1} of {len(canary.steps)})"
    return Decision(
        _with(current, step=step, step_started_at=now, message=message),
        Event("Normal", "RolloutStep", message),
    )
