"""POST /v1/models/{name}/predict against a real HTTP server standing in for BentoML."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlalchemy.exc import OperationalError

from api import GatewaySettings, create_app
from api.routers.models import PredictFastPath
from api.store import ApiKeyStore
from engine import Engine
from tests.api.conftest import Keys, Reply, Upstream, app_without, assert_problem, auth

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


def test_caller_headers_go_upstream_but_credentials_stay(client: TestClient, keys: Keys, upstream: Upstream) -> None:
    upstream.script("/models/echo/predict", Reply(status=200, body={"ok": True}, headers={"X-Request-Id": "r-7"}))
    headers = {
        "Idempotency-Key": "claim-42-try-1",
        "Accept": "application/json",
        "X-Request-Id": "r-7",
        "Cookie": "session=secret",
        "X-Other": "not for the model",
    }
    response = client.post("/v1/models/echo/predict", json={}, headers=auth(keys.alice, **headers))
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == "r-7"
    (call,) = upstream.calls["/models/echo/predict"]
    assert call.headers["idempotency-key"] == "claim-42-try-1"
    assert call.headers["accept"] == "application/json"
    assert call.headers["x-request-id"] == "r-7"
    assert call.headers["content-type"] == "application/json"
    for kept in ("authorization", "cookie", "x-other"):
        assert kept not in call.headers
    # Without a caller's trace, the gateway's span starts one, and the model joins it.
    assert call.headers["traceparent"].startswith("00-")


def test_the_body_goes_through_byte_for_byte(client: TestClient, keys: Keys, upstream: Upstream) -> None:
    raw = b'{"text": "d\\u00e9j\\u00e0 vu",   "n": 1.50}'  # spacing and escapes a re-encoding would change
    answer = {"label": "d\u00e9j\u00e0", "score": 0.5}
    upstream.script("/models/echo/predict", Reply(status=200, body=answer))
    response = client.post("/v1/models/echo/predict", content=raw, headers=auth(keys.alice))
    assert response.status_code == 200, response.text
    (call,) = upstream.calls["/models/echo/predict"]
    assert call.headers["content-type"] == "application/json"  # the default when the caller sends none
    assert call.headers["content-length"] == str(len(raw))
    assert call.body == {"text": "déjà vu", "n": 1.5}
    assert response.content == json.dumps(answer).encode()  # the stand-in's exact bytes
    assert response.headers["content-length"] == str(len(response.content))


def test_calls_are_measured_by_model_version_and_outcome(client: TestClient, keys: Keys, upstream: Upstream) -> None:
    def calls(outcome: str) -> float:
        labels = {"namespace": "", "model": "echo", "version": "v1", "outcome": outcome}
        return REGISTRY.get_sample_value("aiplane_gateway_model_call_duration_seconds_count", labels) or 0.0

    def requests(status: str) -> float:
        labels = {"route": "/v1/models/{name}/predict", "method": "POST", "status": status}
        return REGISTRY.get_sample_value("aiplane_gateway_request_duration_seconds_count", labels) or 0.0

    before = {"ok": calls("ok"), "error": calls("error"), "200": requests("200"), "502": requests("502")}
    assert client.post("/v1/models/echo/predict", json={}, headers=auth(keys.alice)).status_code == 200
    upstream.script("/models/echo/predict", Reply(status=503))
    assert client.post("/v1/models/echo/predict", json={}, headers=auth(keys.alice)).status_code == 502
    assert calls("ok") == before["ok"] + 1
    assert calls("error") == before["error"] + 1
    # The request histogram labels predict by its route template, as every other route.
    assert requests("200") == before["200"] + 1
    assert requests("502") == before["502"] + 1
    assert "aiplane_gateway_model_call_duration_seconds_bucket" in client.get("/metrics").text


def test_access_log_names_route_and_tenant(client: TestClient, keys: Keys, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="aiplane.gateway.access"):
        client.post("/v1/models/echo/predict", json={}, headers=auth(keys.globex))
    (record,) = [r for r in caplog.records if r.name == "aiplane.gateway.access"]
    assert (record.route, record.status, record.tenant, record.principal) == (  # type: ignore[attr-defined]
        "/v1/models/{name}/predict",
        200,
        "globex",
        "gina",
    )


def test_served_by_uvicorn_with_keep_alive(http: httpx.Client, keys: Keys, upstream: Upstream) -> None:
    # A real server (uvloop's transports, not the test client's loop); several calls share the pooled connection.
    for n in range(5):
        response = http.post("/v1/models/echo/predict", json={"n": n}, headers=auth(keys.alice))
        assert response.status_code == 200, response.text
        assert response.json()["received"] == {"n": n}
    assert upstream.count("/models/echo/predict") == 5
    assert_problem(http.post("/v1/models/nope/predict", json={}, headers=auth(keys.alice)), 404, "model-not-found")


def test_other_methods_and_paths_are_not_predict(client: TestClient, keys: Keys) -> None:
    response = client.get("/v1/models/echo/predict", headers=auth(keys.alice))
    assert_problem(response, 405)
    assert response.headers["allow"] == "POST"
    assert_problem(client.post("/v1/models/a/b/predict", json={}, headers=auth(keys.alice)), 404)
    assert_problem(client.post("/v1/models//predict", json={}, headers=auth(keys.alice)), 404)


# ---------------------------------------------------------------- the fast path answers as the routed path does


@pytest.fixture
def routed(engine: Engine) -> Iterator[TestClient]:
    """The gateway without ``PredictFastPath``: predict served by its FastAPI route."""
    with TestClient(app_without(engine, PredictFastPath)) as test_client:
        yield test_client


@pytest.mark.parametrize(
    "case",
    [
        ("/v1/models/echo/predict?api=extract&other=1", "alice"),
        ("/v1/models/echo/predict?api=first&api=extract", "alice"),
        ("/v1/models/Bad_Name/predict", "alice"),
        ("/v1/models/echo/predict?api=", "alice"),
        ("/v1/models/echo/predict?api=..%2Fadmin", "alice"),
        (f"/v1/models/{'a' * 64}/predict?api={'x' * 129}", "alice"),
        ("/v1/models/-bad-/predict?api=9", "alice"),
        ("/v1/models/nope/predict", "alice"),
        ("/v1/models/dark/predict", "alice"),
        ("/v1/models/echo/predict", "carol"),
        ("/v1/models/echo/predict", ""),
        ("/v1/models/Bad_Name/predict", ""),
    ],
)
def test_fast_path_and_route_agree(
    client: TestClient, routed: TestClient, keys: Keys, upstream: Upstream, case: tuple[str, str]
) -> None:
    path, key = case
    headers = auth(getattr(keys, key)) if key else {}
    answers = [c.post(path, json={"document": "x"}, headers=headers) for c in (client, routed)]
    fast, route = answers
    assert fast.status_code == route.status_code, (fast.text, route.text)
    assert fast.headers["content-type"] == route.headers["content-type"]
    assert fast.json() == route.json()
    assert fast.headers.get("retry-after") == route.headers.get("retry-after")
    if fast.status_code == 200:
        assert [call.path for call in upstream.calls["/models/echo/extract"]] == ["/models/echo/extract"] * 2


def test_a_store_outage_is_503_on_both_paths(
    client: TestClient, routed: TestClient, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(*_: object) -> None:
        raise OperationalError("SELECT api_keys", {}, Exception("database is locked"))

    monkeypatch.setattr(ApiKeyStore, "cached", lambda *_: (False, None))
    monkeypatch.setattr(ApiKeyStore, "verify", unreachable)
    for test_client in (client, routed):
        response = test_client.post("/v1/models/echo/predict", json={}, headers=auth(keys.alice))
        assert_problem(response, 503, "store-unavailable")
        assert response.headers["retry-after"] == "1"
