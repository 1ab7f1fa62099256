"""POST /v1/models/{name}/predict against a real HTTP server standing in for BentoML."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api import GatewaySettings, create_app
from engine import Engine
from tests.api.conftest import Keys, Reply, Upstream, assert_problem, auth

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def test_body_and_status_pass_through(client: TestClient, keys: Keys, upstream: Upstream) -> None:
    upstream.script("/models/echo/predict", Reply(status=200, body={"label": "fraud", "score": 0.93}))
    response = client.post(
        "/v1/models/echo/predict",
        content=b'{"text": "claim 42"}',
        headers=auth(keys.alice, **{"Content-Type": "application/json", "traceparent": TRACEPARENT}),
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"label": "fraud", "score": 0.93}
    assert response.headers["content-type"] == "application/json"
    (call,) = upstream.calls["/models/echo/predict"]
    assert call.body == {"text": "claim 42"}
    assert "authorization" not in call.headers  # the API key stays at the gateway
    # The call continues the caller's trace, from the gateway's span.
    version, trace_id, span_id, _ = call.headers["traceparent"].split("-")
    assert (version, trace_id) == ("00", TRACE_ID)
    assert span_id != "00f067aa0ba902b7"


def test_another_bentoml_api_is_chosen_by_query(client: TestClient, keys: Keys, upstream: Upstream) -> None:
    upstream.script("/models/echo/extract", Reply(status=200, body={"amount": 1200.0}))
    response = client.post("/v1/models/echo/predict?api=extract", json={"document": "..."}, headers=auth(keys.alice))
    assert response.status_code == 200, response.text
    assert response.json() == {"amount": 1200.0}
    assert upstream.count("/models/echo/extract") == 1
    assert upstream.count("/models/echo/predict") == 0
    refused = client.post("/v1/models/echo/predict?api=../admin", json={}, headers=auth(keys.alice))
    assert_problem(refused, 422)
    assert upstream.count("/models/echo/../admin") == 0


def test_traffic_follows_the_weights(client: TestClient, keys: Keys, upstream: Upstream) -> None:
    for _ in range(10):
        assert client.post("/v1/models/canary/predict", json={}, headers=auth(keys.alice)).status_code == 200
    assert (upstream.count("/models/stable/predict"), upstream.count("/models/next/predict")) == (10, 0)
    for _ in range(10):
        assert client.post("/v1/models/flipped/predict", json={}, headers=auth(keys.alice)).status_code == 200
    assert (upstream.count("/models/stable/predict"), upstream.count("/models/next/predict")) == (10, 10)


def test_unknown_and_dark_models(client: TestClient, keys: Keys) -> None:
    assert_problem(client.post("/v1/models/nope/predict", json={}, headers=auth(keys.alice)), 404, "model-not-found")
    response = client.post("/v1/models/dark/predict", json={}, headers=auth(keys.alice))
    assert_problem(response, 503, "model-unavailable")
    assert response.headers["retry-after"] == "1"
    assert_problem(client.post("/v1/models/Bad_Name/predict", json={}, headers=auth(keys.alice)), 422)
    assert_problem(client.post("/v1/models/echo/predict", json={}, headers=auth(keys.carol)), 403)


def test_upstream_failures_are_502_never_500(client: TestClient, keys: Keys, upstream: Upstream) -> None:
    upstream.script("/models/echo/predict", Reply(status=500, body={"error": "CUDA out of memory"}))
    problem = assert_problem(client.post("/v1/models/echo/predict", json={}, headers=auth(keys.alice)), 502)
    assert problem["type"].endswith("/upstream-error")
    assert problem["upstreamStatus"] == 500
    assert "CUDA out of memory" in problem["detail"]
    problem = assert_problem(
        client.post("/v1/models/gone/predict", json={}, headers=auth(keys.alice)), 502, "upstream-unreachable"
    )
    assert problem["model"] == "gone"


def test_upstream_refusals_keep_their_status(client: TestClient, keys: Keys, upstream: Upstream) -> None:
    upstream.script("/models/echo/predict", Reply(status=400, body={"error": "field text is required"}))
    problem = assert_problem(
        client.post("/v1/models/echo/predict", json={}, headers=auth(keys.alice)), 400, "model-rejected-request"
    )
    assert "field text is required" in problem["detail"]
    upstream.script("/models/echo/predict", Reply(status=429, headers={"Retry-After": "3"}))
    response = client.post("/v1/models/echo/predict", json={}, headers=auth(keys.alice))
    assert_problem(response, 429, "model-overloaded")
    assert response.headers["retry-after"] == "3"


@pytest.fixture
def impatient(engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(engine, GatewaySettings(predict_timeout=0.2))) as client:
        yield client


def test_upstream_timeouts_are_504(impatient: TestClient, keys: Keys, upstream: Upstream) -> None:
    gate = upstream.hold("/models/echo/predict")
    try:
        response = impatient.post("/v1/models/echo/predict", json={}, headers=auth(keys.alice))
    finally:
        gate.set()
    problem = assert_problem(response, 504, "upstream-timeout")
    assert "did not answer" in problem["detail"]
