"""The rollout state machine: steps after each interval while the analysis holds, pause/resume/abort, promotion
and rollback. Time is an argument, so no test waits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from crds.model import Canary, Rollout
from operators.model import rollout as r
from operators.model.rollout import Verdict

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CANARY = Canary(version="2.0.0", steps=[10, 50, 100], interval="1m")
PASS = Verdict(True, detail="fine")


def at(step: int, phase: str = "Progressing", started: datetime = T0) -> Rollout:
    return Rollout.model_validate({"version": "2.0.0", "phase": phase, "step": step, "stepStartedAt": started})


def test_a_new_canary_starts_at_weight_zero_with_an_event() -> None:
    decision = r.advance(CANARY, None, now=T0, canary_ready=False)
    assert decision.rollout.phase == "Progressing"
    assert decision.rollout.step == -1
    assert r.weight(CANARY, decision.rollout) == 0
    assert decision.event is not None
    assert decision.event.reason == "RolloutStarted"


def test_a_rollout_of_another_version_starts_over() -> None:
    old = at(2).model_copy(update={"version": "1.5.0", "phase": "Promoted"})
    assert r.advance(CANARY, old, now=T0, canary_ready=True).rollout.step == -1


def test_first_step_waits_for_the_canary_to_be_ready() -> None:
    assert r.advance(CANARY, at(-1), now=T0, canary_ready=False).rollout == at(-1)
    entered = r.advance(CANARY, at(-1), now=T0 + timedelta(seconds=5), canary_ready=True).rollout
    assert entered.step == 0
    assert entered.step_started_at == T0 + timedelta(seconds=5)
    assert r.weight(CANARY, entered) == 10


def test_steps_advance_only_after_the_interval_and_while_analysis_passes() -> None:
    early = r.advance(CANARY, at(0), now=T0 + timedelta(seconds=59), canary_ready=True, verdict=PASS)
    assert early.rollout.step == 0
    assert early.event is None
    later = r.advance(CANARY, at(0), now=T0 + timedelta(seconds=60), canary_ready=True, verdict=PASS)
    assert later.rollout.step == 1
    assert r.weight(CANARY, later.rollout) == 50
    assert later.event is not None
    assert later.event.reason == "RolloutStep"


def test_too_little_traffic_holds_the_step_and_says_so() -> None:
    held = r.advance(
        CANARY, at(0), now=T0 + timedelta(minutes=5), canary_ready=True, verdict=Verdict(None, detail="3 of 20")
    )
    assert held.rollout.step == 0
    assert held.rollout.message == "3 of 20"


def test_passing_the_last_step_promotes() -> None:
    done = r.advance(CANARY, at(2), now=T0 + timedelta(minutes=1), canary_ready=True, verdict=PASS)
    assert done.rollout.phase == "Promoted"
    assert r.weight(CANARY, done.rollout) == 100
    assert done.event is not None
    assert done.event.reason == "RolloutPromoted"
    # Terminal: nothing moves it any more.
    assert r.advance(CANARY, done.rollout, now=T0 + timedelta(hours=1), canary_ready=True).rollout == done.rollout


def test_a_failing_check_rolls_back_at_once_naming_the_metric_and_values() -> None:
    failed = Verdict(False, "error-rate", 0.31, 0.05, "31 of 100 requests failed")
    decision = r.advance(CANARY, at(1), now=T0 + timedelta(seconds=1), canary_ready=True, verdict=failed)
    assert decision.rollout.phase == "RolledBack"
    assert r.weight(CANARY, decision.rollout) == 0
    assert decision.event is not None
    assert decision.event.type == "Warning"
    assert "error-rate 0.31 above the threshold 0.05" in decision.rollout.message
    assert "at 50%" in decision.rollout.message


def test_pause_holds_the_weight_and_resume_restarts_the_interval() -> None:
    paused = r.advance(CANARY, at(1), now=T0, canary_ready=True, control="pause").rollout
    assert paused.phase == "Paused"
    assert r.weight(CANARY, paused) == 50
    still = r.advance(CANARY, paused, now=T0 + timedelta(hours=1), canary_ready=True, control="pause", verdict=PASS)
    assert still.rollout == paused
    resumed = r.advance(CANARY, paused, now=T0 + timedelta(hours=1), canary_ready=True, control="resume").rollout
    assert resumed.phase == "Progressing"
    assert resumed.step == 1
    assert resumed.step_started_at == T0 + timedelta(hours=1)


@pytest.mark.parametrize("phase", ["Progressing", "Paused"])
def test_abort_sets_weight_zero(phase: str) -> None:
    aborted = r.advance(CANARY, at(1, phase), now=T0, canary_ready=True, control="abort")
    assert aborted.rollout.phase == "Aborted"
    assert r.weight(CANARY, aborted.rollout) == 0
    assert aborted.event is not None
    assert aborted.event.reason == "RolloutAborted"


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("5m", 300), ("1h30m", 5400), ("250ms", 0.25), ("1d", 86400)]
)
def test_durations(text: str, seconds: float) -> None:
    assert r.parse_duration(text).total_seconds() == seconds


def test_bad_duration_is_refused() -> None:
    with pytest.raises(ValueError, match="not a duration"):
        r.parse_duration("5 minutes")
