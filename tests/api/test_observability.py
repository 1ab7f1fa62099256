"""Traces, events, metrics, health and the access log of the gateway."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from engine import Engine, Worker
from tests.api.conftest import Keys, Upstream, assert_problem, auth, done, wait_task
from tests.fixtures.polling import assert_eventually

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"


def test_trace_has_the_gateway_engine_step_and_model_spans_in_one_trace(
    client: TestClient, keys: Keys, worker: Worker, upstream: Upstream
) -> None:
    response = client.post(
        "/v1/tasks",
        json={"workflow": {"name": "echo"}, "input": {"claimId": "c-9"}},
        headers=auth(keys.alice, traceparent=TRACEPARENT),
    )
    task_id = response.json()["id"]
    wait_task(client, keys.alice, task_id, done)

    def spans() -> dict[str, list[dict[str, object]]]:
        trace = client.get(f"/v1/tasks/{task_id}/trace", headers=auth(keys.carol)).json()
        names: dict[str, list[dict[str, object]]] = {}
        for span in trace["spans"]:
            names.setdefault(span["name"], []).append(span)
        assert {
            "aiplane.gateway.submit",
            "aiplane.engine.submit",
            "aiplane.engine.step",
            "aiplane.engine.model_call",
        } <= names.keys(), sorted(names)
        assert trace["traceIds"] == [TRACE_ID]
        return names

    names = assert_eventually(spans, timeout=20, interval=0.05)
    (gateway,) = names["aiplane.gateway.submit"]
    assert gateway["parentSpanId"] == "b7ad6b7169203331"
    assert gateway["attributes"]["aiplane.task.id"] == task_id  # type: ignore[index]
    (engine_submit,) = names["aiplane.engine.submit"]
    assert engine_submit["parentSpanId"] == gateway["spanId"]
    # The model was called within the same trace.
    assert upstream.calls["/models/echo/predict"][0].headers["traceparent"].split("-")[1] == TRACE_ID


def test_events_are_the_task_timeline(client: TestClient, keys: Keys, worker: Worker) -> None:
    task_id = client.post(
        "/v1/tasks?mode=sync", json={"workflow": {"name": "echo"}, "input": {"claimId": "c"}}, headers=auth(keys.alice)
    ).json()["id"]
    events = client.get(f"/v1/tasks/{task_id}/events", headers=auth(keys.carol)).json()
    assert events["taskId"] == task_id
    types = [e["type"] for e in events["items"]]
    assert types == ["task.submitted", "step.started", "step.completed", "task.completed"]
    seqs = [e["seq"] for e in events["items"]]
    assert seqs == sorted(seqs)
    later = client.get(f"/v1/tasks/{task_id}/events?after={seqs[1]}", headers=auth(keys.carol)).json()["items"]
    assert [e["type"] for e in later] == types[2:]


def test_metrics_show_gateway_and_engine_series(client: TestClient, keys: Keys, worker: Worker) -> None:
    client.post(
        "/v1/tasks?mode=sync", json={"workflow": {"name": "echo"}, "input": {"claimId": "c"}}, headers=auth(keys.alice)
    )
    # A well-formed id that names no task: 404 (a malformed one would be 422).
    assert client.get("/v1/tasks/01ARZ3NDEKTSV4RRFFQ69G5FAV", headers=auth(keys.alice)).status_code == 404
    worker.refresh_gauges(force=True)
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'aiplane_gateway_request_duration_seconds_count{method="POST",route="/v1/tasks",status="200"}' in text
    assert 'aiplane_gateway_request_duration_seconds_count{method="GET",route="/v1/tasks/{taskId}",status="404"}' in (
        text
    )
    for name in (
        "aiplane_engine_queue_length_steps",
        "aiplane_engine_pending_approvals_count",
        "aiplane_engine_dlq_size_tasks",
        "aiplane_engine_retries_total",
        "aiplane_engine_sla_breaches_total",
        "aiplane_engine_step_duration_seconds",
        "aiplane_gateway_model_call_duration_seconds",
    ):
        assert f"# TYPE {name}" in text, name
    assert 'aiplane_engine_queue_length_steps{priority="normal"}' in text


def test_health_and_readiness(client: TestClient, engine: Engine) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ok"}
    spec = client.get("/openapi.json").json()
    assert spec["components"]["schemas"]["Problem"]["properties"]["type"]
    assert "/v1/tasks/{taskId}/trace" in spec["paths"]


def test_readiness_fails_when_the_store_is_unreachable(client: TestClient, engine: Engine, tmp_path: Path) -> None:
    database = tmp_path / "engine.db"
    database.rename(tmp_path / "moved.db")
    database.mkdir()  # a directory where the database file was: SQLite cannot open it
    engine.db.dispose()  # pooled connections still hold the moved file open; new ones must fail
    try:
        response = client.get("/readyz")
        assert_problem(response, 503, "store-unavailable")
        assert response.headers["retry-after"]
        # Other routes say so too, rather than failing with 500.
        assert_problem(client.get("/v1/tasks", headers=auth("aip_whatever")), 503, "store-unavailable")
    finally:
        database.rmdir()
        (tmp_path / "moved.db").rename(database)
    assert client.get("/readyz").status_code == 200


def test_one_structured_log_line_per_request(client: TestClient, keys: Keys, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="aiplane.gateway.access"):
        response = client.post("/v1/tasks", json={"workflow": {"name": "gated"}}, headers=auth(keys.alice))
        client.get("/v1/nowhere")
    task_id = response.json()["id"]
    records = [r for r in caplog.records if r.name == "aiplane.gateway.access"]
    assert len(records) == 2
    submit, missing = records
    fields = {k: getattr(submit, k) for k in ("method", "route", "status", "tenant", "principal", "task_id")}
    assert fields == {
        "method": "POST",
        "route": "/v1/tasks",
        "status": 202,
        "tenant": "acme",
        "principal": "alice",
        "task_id": task_id,
    }
    assert submit.duration_s >= 0  # type: ignore[attr-defined]
    assert (missing.route, missing.status, missing.tenant) == ("unmatched", 404, None)  # type: ignore[attr-defined]
    json.dumps({k: v for k, v in vars(submit).items() if k in fields})  # JSON-friendly values


def test_metrics_read_the_store_gauges_without_a_worker(client: TestClient, keys: Keys) -> None:
    """A gateway running no worker still reports the queue as it is in the store, not as it was at start-up."""
    for _ in range(2):
        submitted = client.post(
            "/v1/tasks", json={"workflow": {"name": "echo"}, "input": {"claimId": "c"}}, headers=auth(keys.alice)
        )
        assert submitted.status_code == 202
    text = client.get("/metrics").text
    assert 'aiplane_engine_queue_length_steps{priority="normal"} 2.0' in text.splitlines(), [
        line for line in text.splitlines() if "queue_length" in line
    ]
