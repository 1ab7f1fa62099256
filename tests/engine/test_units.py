"""Pure parts: durations, backoff, error classification, breaker, budget, endpoint choice, graph, URL rendering."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta

import pytest
from ulid import ULID

from crds.model import Endpoint
from crds.workflow import Backoff, Retry, WorkflowSpec
from engine.clock import new_id, new_ids
from engine.durations import parse_duration
from engine.errors import StepDeferredError, StepError
from engine.executors.connector import render_url
from engine.executors.destinations import check_destination
from engine.executors.http import classify_status, parse_retry_after
from engine.executors.resolvers import pick_endpoint
from engine.flow import graph
from engine.resilience import BreakerState, CircuitBreaker, Resilience, ResilienceConfig, RetryBudget
from engine.retry import backoff_delay, is_retryable, retry_delay


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("1h30m", 5400), ("250ms", 0.25), ("30d", 2_592_000), ("1.5s", 1.5), ("2m3s", 123)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "30", "s", "1x", "1h 2m", "-1s"])
def test_parse_duration_refuses_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_backoff_grows_exponentially_up_to_max() -> None:
    backoff = Backoff(initial="1s", max="5s", multiplier=2, jitter=0)
    assert [backoff_delay(backoff, n).total_seconds() for n in range(1, 6)] == [1, 2, 4, 5, 5]


def test_jitter_spreads_delays_within_bounds() -> None:
    backoff = Backoff(initial="1s", max="1m", multiplier=2, jitter=0.5)
    rng = random.Random(7)
    delays = {backoff_delay(backoff, 2, rng).total_seconds() for _ in range(50)}
    assert all(2 <= d <= 3 for d in delays)
    assert len(delays) > 1


def test_retry_after_is_a_lower_bound() -> None:
    retry = Retry(backoff=Backoff(initial="10ms", max="1s", jitter=0))
    slow_down = StepError("TooManyRequests", "x", retryable=True, retry_after=timedelta(seconds=3))
    assert retry_delay(slow_down, retry, 1) == timedelta(seconds=3)


def test_non_retryable_kinds_override_the_classification() -> None:
    retry = Retry(non_retryable=["ServiceUnavailable"])
    assert not is_retryable(StepError("ServiceUnavailable", "x", retryable=True), retry)
    assert is_retryable(StepError("BadGateway", "x", retryable=True), retry)
    assert not is_retryable(StepError("BadRequest", "x", retryable=False), Retry())


@pytest.mark.parametrize(
    ("status", "kind", "retryable"),
    [
        (400, "BadRequest", False),
        (401, "Unauthorized", False),
        (404, "NotFound", False),
        (408, "RequestTimeout", True),
        (418, "HTTP418", False),
        (422, "ValidationError", False),
        (429, "TooManyRequests", True),
        (500, "InternalServerError", True),
        (503, "ServiceUnavailable", True),
        (599, "HTTP599", True),
    ],
)
def test_http_status_classification(status: int, kind: str, retryable: bool) -> None:
    assert classify_status(status) == (kind, retryable)


def test_parse_retry_after() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after("7") == timedelta(seconds=7)
    assert parse_retry_after("Thu, 01 Jan 2026 00:00:30 GMT", now) == timedelta(seconds=30)
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


class Ticker:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def state(breaker: CircuitBreaker) -> BreakerState:
    # A call, not the property: mypy would otherwise keep the first assert's narrowing.
    return breaker.state


def test_circuit_breaker_opens_half_opens_and_closes() -> None:
    clock = Ticker()
    breaker = CircuitBreaker(failure_threshold=3, open_for=10, clock=clock)
    for _ in range(2):
        breaker.record_failure()
    assert state(breaker) == BreakerState.CLOSED
    assert breaker.allow() == 0
    breaker.record_failure()
    assert breaker.allow() == pytest.approx(10)  # open: wait out the rest of open_for
    clock.now = 10
    assert state(breaker) == BreakerState.HALF_OPEN
    assert breaker.allow() == 0  # the one trial call
    assert breaker.allow() > 0  # others wait while it runs
    breaker.record_failure()
    assert state(breaker) == BreakerState.OPEN
    clock.now = 20
    assert breaker.allow() == 0
    breaker.record_success()
    assert state(breaker) == BreakerState.CLOSED


def test_retry_budget_limits_retries_to_a_share_of_first_attempts() -> None:
    budget = RetryBudget(ratio=0.5, burst=2)
    assert budget.try_spend_retry()
    assert budget.try_spend_retry()
    assert not budget.try_spend_retry()
    budget.record_first_attempt()
    assert not budget.try_spend_retry()  # half a token
    budget.record_first_attempt()
    assert budget.try_spend_retry()


def test_resilience_defers_retries_when_the_budget_is_spent() -> None:
    resilience = Resilience(ResilienceConfig(retry_ratio=0.1, retry_burst=1, budget_wait=2))
    resilience.admit("model/m", "http://m/predict", is_retry=True)
    with pytest.raises(StepDeferredError) as deferred:
        resilience.admit("model/m", "http://m/predict", is_retry=True)
    assert deferred.value.delay == timedelta(seconds=2)
    resilience.admit("model/m", "http://m/predict", is_retry=False)  # first attempts always go


def test_pick_endpoint_follows_weights() -> None:
    endpoints = [Endpoint(version="v1", url="http://a", weight=90), Endpoint(version="v2", url="http://b", weight=10)]
    rng = random.Random(1)
    picks = [pick_endpoint(endpoints, rng) for _ in range(2000)]
    canary = sum(1 for e in picks if e is not None and e.version == "v2") / len(picks)
    assert 0.05 < canary < 0.15
    assert pick_endpoint([Endpoint(version="v1", url="http://a", weight=0)]) is None


def test_following_step() -> None:
    spec = WorkflowSpec.model_validate(
        {
            "steps": [
                {"name": "a", "type": "rules", "rules": {}},
                {"name": "b", "type": "rules", "rules": {}, "next": "d"},
                {"name": "c", "type": "rules", "rules": {}, "end": True},
                {"name": "d", "type": "rules", "rules": {}},
            ]
        }
    )
    a, b, c, d = spec.steps
    assert graph.following(spec, a) == "b"
    assert graph.following(spec, b) == "d"
    assert graph.following(spec, c) is None
    assert graph.following(spec, d) is None
    assert graph.following(spec, a, chosen="c") == "c"


def test_render_url_fills_and_encodes_placeholders() -> None:
    assert render_url("http://x/claims/{id}/notes", {"id": "a b/c", "n": 1}) == (
        "http://x/claims/a%20b%2Fc/notes",
        {"id"},
    )
    with pytest.raises(StepError, match="needs input field"):
        render_url("http://x/{missing}", {})


def test_private_destinations_are_refused_unless_allowed() -> None:
    with pytest.raises(StepError) as refused:
        check_destination("http://127.0.0.1:8080/x", allow_private_networks=False)
    assert refused.value.kind == "DestinationRefused"
    assert not refused.value.retryable
    check_destination("http://127.0.0.1:8080/x", allow_private_networks=True)


def test_ids_are_ulids_in_the_order_they_were_made() -> None:
    before = time.time()
    ids = [new_id() for _ in range(5000)]  # many per millisecond: the monotonic bump is exercised
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    for text in ids[:: len(ids) // 50]:
        parsed = ULID.from_str(text)
        assert str(parsed) == text  # the same Crockford encoding as the ULID spec's
        assert before - 1 <= parsed.timestamp <= time.time() + 1


def test_ids_made_together_are_consecutive_ulids_in_order_with_the_others() -> None:
    first = new_id()
    together = new_ids(3000)  # more than 1024: the shared first characters change within the batch
    last = new_id()
    assert [first, *together, last] == sorted([first, *together, last])
    values = [int(ULID.from_str(text)) for text in together]
    assert values == list(range(values[0], values[0] + len(together)))
    assert [str(ULID.from_int(value)) for value in values] == together
    assert new_ids(0) == []
