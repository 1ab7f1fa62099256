"""The outbox relay, the in-memory bus, and spans with task ids and propagated traceparent."""

from __future__ import annotations

from opentelemetry import trace

from engine import Engine, Event, InMemoryBus, TaskSpanStore, TaskState
from tests.engine.conftest import Downstream, EngineFactory, connector_step, fast_worker, wait_done


def test_events_reach_the_bus_in_order_once_relayed(make_engine: EngineFactory, sqlite_url: str) -> None:
    bus = InMemoryBus()
    engine = make_engine(sqlite_url, bus=bus)
    received: list[Event] = []
    subscription = bus.subscribe(received.append)
    completions: list[Event] = []
    bus.subscribe(completions.append, types={"task.completed"})
    engine.register_workflow("wf", {"steps": [connector_step("one")]})
    with fast_worker(engine):
        task = engine.submit("acme", "wf", {})
        wait_done(engine, "acme", task.id)
    engine.relay.drain()
    subscription.close()
    stored = engine.events(task.id)
    assert [e.id for e in received] == [e.id for e in stored]
    assert [e.type for e in received] == [
        "task.submitted",
        "step.started",
        "step.completed",
        "task.completed",
    ]
    assert all(e.published_at is not None for e in stored)
    assert [e.type for e in completions] == ["task.completed"]


class FlakyBus(InMemoryBus):
    def __init__(self) -> None:
        super().__init__()
        self.refuse = True

    def publish(self, event: Event) -> None:
        if self.refuse:
            raise ConnectionError("bus unavailable")
        super().publish(event)


def test_events_stay_in_the_outbox_until_the_bus_accepts_them(make_engine: EngineFactory, sqlite_url: str) -> None:
    bus = FlakyBus()
    engine = make_engine(sqlite_url, bus=bus)
    engine.register_workflow("wf", {"steps": [connector_step("one")]})
    task = engine.submit("acme", "wf", {})
    received: list[Event] = []
    bus.subscribe(received.append)
    assert engine.relay.drain() == 0
    assert all(e.published_at is None for e in engine.events(task.id))
    bus.refuse = False
    assert engine.relay.drain() == 1
    assert [e.type for e in received] == ["task.submitted"]
    assert all(e.published_at is not None for e in engine.events(task.id))


def test_spans_carry_the_task_id_and_traceparent_reaches_the_downstream(
    spans: TaskSpanStore, make_engine: EngineFactory, sqlite_url: str, downstream: Downstream
) -> None:
    engine: Engine = make_engine(sqlite_url)
    engine.register_workflow("traced", {"steps": [{"name": "predict", "type": "model", "model": {"name": "m"}}]})
    with trace.get_tracer("test").start_as_current_span("POST /v1/tasks") as request:
        task = engine.submit("acme", "traced", {})
    trace_id = format(request.get_span_context().trace_id, "032x")
    with fast_worker(engine):
        assert wait_done(engine, "acme", task.id).state == TaskState.SUCCEEDED
    traceparent = downstream.calls["/models/m/predict"][0].headers["traceparent"]
    assert traceparent.split("-")[1] == trace_id  # the model call continues the submitting request's trace
    names = {span.name for span in spans.spans(task.id)}
    assert {"aiplane.engine.submit", "aiplane.engine.step", "aiplane.engine.model_call"} <= names
    assert {span["traceId"] for span in spans.trace(task.id)} == {trace_id}


def test_a_connector_call_is_a_span_of_the_task_trace_under_its_step(
    spans: TaskSpanStore, make_engine: EngineFactory, sqlite_url: str, downstream: Downstream
) -> None:
    engine: Engine = make_engine(sqlite_url)
    engine.register_workflow("notify", {"steps": [connector_step("notify")]})
    task = engine.submit("acme", "notify", {})
    with fast_worker(engine):
        assert wait_done(engine, "acme", task.id).state == TaskState.SUCCEEDED
    recorded = spans.trace(task.id)
    [step] = [s for s in recorded if s["name"] == "aiplane.engine.step"]
    [call] = [s for s in recorded if s["name"] == "aiplane.engine.connector_call"]
    assert call["parentSpanId"] == step["spanId"]
    assert call["traceId"] == step["traceId"]
    assert (call["attributes"]["aiplane.connector.name"], call["attributes"]["http.request.method"]) == ("c", "POST")
    assert call["status"] != "ERROR"
    # The call's own context went downstream: the connector can join the task's trace.
    traceparent = downstream.calls["/c/notify"][0].headers["traceparent"]
    assert traceparent.split("-")[1:3] == [call["traceId"], call["spanId"]]
