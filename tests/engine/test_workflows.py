"""Tasks run through multi-step workflows: model, connector and rules steps, in order and by branches."""

from __future__ import annotations

from typing import Any

import pytest

from engine import Engine, IdempotencyMismatchError, InvalidRequestError, TaskState, WorkflowNotFoundError
from tests.engine.conftest import Downstream, EngineFactory, Reply, connector_step, fast_worker, wait_done


def test_multi_step_workflow_runs_to_completion(engine: Engine, downstream: Downstream) -> None:
    downstream.script("/models/m/extract", Reply(body={"score": 0.9, "label": "fraud"}))
    engine.register_workflow(
        "triage",
        {
            "steps": [
                {
                    "name": "extract",
                    "type": "model",
                    "model": {"name": "m", "api": "extract", "input": {"text": "input.text", "n": "size(input.text)"}},
                },
                connector_step(
                    "notify",
                    connector={"name": "c", "input": {"step": "'notify'", "label": "steps.extract.output.label"}},
                ),
                {"name": "decide", "type": "rules", "rules": {"set": {"alert": "steps.extract.output.score > 0.5"}}},
            ]
        },
    )
    with fast_worker(engine):
        task = engine.submit("acme", "triage", {"text": "hello"})
        done = wait_done(engine, "acme", task.id)

    assert done.state == TaskState.SUCCEEDED
    assert done.vars == {"alert": True}
    assert done.result == {"vars": {"alert": True}, "next": None}
    # Each step ran exactly once, with the body its CEL input map built.
    assert [c.body for c in downstream.calls["/models/m/extract"]] == [{"text": "hello", "n": 5}]
    assert [c.body for c in downstream.calls["/c/notify"]] == [{"step": "notify", "label": "fraud"}]
    steps = engine.steps("acme", task.id)
    assert [(s.name, s.state, s.attempts) for s in steps] == [
        ("extract", "succeeded", 1),
        ("notify", "succeeded", 1),
        ("decide", "succeeded", 1),
    ]
    # The step idempotency key travels as a header.
    assert downstream.calls["/c/notify"][0].headers["Idempotency-Key"] == steps[1].idempotency_key
    types = [e.type for e in engine.events(task.id)]
    assert types[0] == "task.submitted"
    assert types[-1] == "task.completed"
    assert types.count("step.completed") == 3


def test_model_step_sends_task_input_when_no_input_map(engine: Engine, downstream: Downstream) -> None:
    engine.register_workflow("echo", {"steps": [{"name": "predict", "type": "model", "model": {"name": "m"}}]})
    with fast_worker(engine):
        task = engine.submit("acme", "echo", {"a": [1, 2]})
        done = wait_done(engine, "acme", task.id)
    assert downstream.calls["/models/m/predict"][0].body == {"a": [1, 2]}
    assert done.result == {"path": "/models/m/predict", "received": {"a": [1, 2]}}


ROUTING = {
    "steps": [
        {
            "name": "route",
            "type": "rules",
            "rules": {
                "set": {"amount": "input.amount", "big": "vars.amount >= 1000"},
                "branches": [
                    {"when": "vars.big && input.country != 'NL'", "next": "review"},
                    {"when": "vars.big", "next": "fast"},
                ],
                "default": "small",
            },
        },
        connector_step("review", end=True),
        connector_step("fast", end=True),
        connector_step("small", next="after-small"),
        connector_step("after-small"),
    ]
}


@pytest.mark.parametrize(
    ("task_input", "expected_paths"),
    [
        ({"amount": 5000, "country": "DE"}, ["/c/review"]),
        ({"amount": 5000, "country": "NL"}, ["/c/fast"]),
        ({"amount": 10, "country": "NL"}, ["/c/small", "/c/after-small"]),
    ],
)
def test_rules_branches_choose_the_next_step(
    make_engine: EngineFactory, sqlite_url: str, downstream: Downstream, task_input: Any, expected_paths: list[str]
) -> None:
    engine = make_engine(sqlite_url)
    engine.register_workflow("routing", ROUTING)
    with fast_worker(engine):
        task = engine.submit("acme", "routing", task_input)
        done = wait_done(engine, "acme", task.id)
    assert done.state == TaskState.SUCCEEDED
    called = sorted(path for path, calls in downstream.calls.items() if calls)
    assert called == sorted(expected_paths)
    assert done.vars["big"] == (task_input["amount"] >= 1000)


def test_rules_without_match_or_default_follow_list_order(
    make_engine: EngineFactory, sqlite_url: str, downstream: Downstream
) -> None:
    engine = make_engine(sqlite_url)
    engine.register_workflow(
        "plain",
        {
            "steps": [
                {"name": "check", "type": "rules", "rules": {"branches": [{"when": "false", "next": "skip"}]}},
                connector_step("next-in-list", end=True),
                connector_step("skip"),
            ]
        },
    )
    with fast_worker(engine):
        done = wait_done(engine, "acme", engine.submit("acme", "plain", {}).id)
    assert done.state == TaskState.SUCCEEDED
    assert downstream.count("/c/next-in-list") == 1
    assert downstream.count("/c/skip") == 0


def test_invalid_workflows_are_refused_at_registration(make_engine: EngineFactory, sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    with pytest.raises(InvalidRequestError, match=r"step 'r' rules.set.x: cannot compile CEL expression 'input.a >'"):
        engine.register_workflow(
            "bad-cel", {"steps": [{"name": "r", "type": "rules", "rules": {"set": {"x": "input.a >"}}}]}
        )
    with pytest.raises(InvalidRequestError, match="names 'nowhere'"):
        engine.register_workflow("dangling", {"steps": [connector_step("a", next="nowhere")]})
    with pytest.raises(InvalidRequestError, match="no 'model' block"):
        engine.register_workflow("no-block", {"steps": [{"name": "a", "type": "model"}]})


def test_versions_are_content_hashes_and_running_tasks_keep_theirs(
    make_engine: EngineFactory, sqlite_url: str, downstream: Downstream
) -> None:
    engine = make_engine(sqlite_url)
    v1 = engine.register_workflow("wf", {"steps": [connector_step("one")]})
    assert engine.register_workflow("wf", {"steps": [connector_step("one")]}) == v1
    first = engine.submit("acme", "wf", {})
    v2 = engine.register_workflow("wf", {"steps": [connector_step("two")]})
    assert v2 != v1
    second = engine.submit("acme", "wf", {})
    assert (first.workflow_version, second.workflow_version) == (v1, v2)
    with fast_worker(engine):
        wait_done(engine, "acme", first.id)
        wait_done(engine, "acme", second.id)
    assert downstream.count("/c/one") == 1
    assert downstream.count("/c/two") == 1


def test_large_payloads_are_stored_by_reference(
    make_engine: EngineFactory, sqlite_url: str, downstream: Downstream
) -> None:
    engine = make_engine(sqlite_url, inline_limit=1024)
    engine.register_workflow("big", {"steps": [{"name": "predict", "type": "model", "model": {"name": "m"}}]})
    big = {"text": "x" * 5000}
    with fast_worker(engine):
        task = engine.submit("acme", "big", big)
        done = wait_done(engine, "acme", task.id)
    assert done.input == big
    assert done.result == {"path": "/models/m/predict", "received": big}
    with engine.db.read() as conn:
        row = conn.exec_driver_sql("SELECT input, input_ref, result, result_ref FROM tasks").one()
    assert row.input is None
    assert row.input_ref.startswith("sha256:")
    assert row.result is None
    assert row.result_ref.startswith("sha256:")
    blob = engine.codec.blobs.get(row.input_ref)
    assert len(blob) > 5000


def test_submit_with_idempotency_key_returns_the_first_task(engine: Engine) -> None:
    engine.register_workflow("wf", {"steps": [connector_step("one")]})
    first = engine.submit("acme", "wf", {"a": 1}, idempotency_key="msg-1")
    again = engine.submit("acme", "wf", {"a": 1}, idempotency_key="msg-1")
    other_tenant = engine.submit("globex", "wf", {"a": 1}, idempotency_key="msg-1")
    assert again.id == first.id
    assert other_tenant.id != first.id
    with pytest.raises(IdempotencyMismatchError):
        engine.submit("acme", "wf", {"a": 2}, idempotency_key="msg-1")


def test_tenants_see_only_their_tasks(make_engine: EngineFactory, sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    engine.register_workflow("wf", {"steps": [connector_step("one")]})
    ids = [engine.submit("acme", "wf", {"i": i}).id for i in range(5)]
    engine.submit("globex", "wf", {})
    page = engine.list("acme", limit=3)
    assert [t.id for t in page.items] == ids[::-1][:3]
    rest = engine.list("acme", limit=3, cursor=page.next_cursor)
    assert [t.id for t in rest.items] == ids[::-1][3:]
    assert rest.next_cursor is None
    with pytest.raises(Exception, match="no task"):
        engine.get("globex", ids[0])


def test_cancel_stops_a_task(make_engine: EngineFactory, sqlite_url: str, downstream: Downstream) -> None:
    engine = make_engine(sqlite_url)
    engine.register_workflow("wf", {"steps": [connector_step("one")]})
    task = engine.submit("acme", "wf", {})
    cancelled = engine.cancel("acme", task.id, "no longer needed")
    assert cancelled.state == TaskState.CANCELLED
    with fast_worker(engine) as worker:
        worker.maintain()
    assert downstream.count("/c/one") == 0
    assert engine.events(task.id)[-1].type == "task.cancelled"


def test_submitting_an_older_version_runs_that_version(
    make_engine: EngineFactory, sqlite_url: str, downstream: Downstream
) -> None:
    engine = make_engine(sqlite_url)
    v1 = engine.register_workflow("wf", {"steps": [connector_step("one")]})
    v2 = engine.register_workflow("wf", {"steps": [connector_step("two")]})
    older = engine.submit("acme", "wf", {}, version=v1)
    current = engine.submit("acme", "wf", {})
    assert (older.workflow_version, current.workflow_version) == (v1, v2)
    with fast_worker(engine):
        assert wait_done(engine, "acme", older.id).state == TaskState.SUCCEEDED
        assert wait_done(engine, "acme", current.id).state == TaskState.SUCCEEDED
    assert [s.name for s in engine.steps("acme", older.id)] == ["one"]
    assert [s.name for s in engine.steps("acme", current.id)] == ["two"]
    assert (downstream.count("/c/one"), downstream.count("/c/two")) == (1, 1)
    with pytest.raises(WorkflowNotFoundError):
        engine.submit("acme", "wf", {}, version="no-such-version")
