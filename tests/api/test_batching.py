"""Group commit: concurrent submissions to a real uvicorn share transactions, and each still gets its own task,
its own stored answer and its own trace."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx

from engine import Engine
from tests.api.conftest import Keys, Served, auth

BODY = {"workflow": {"name": "echo"}, "input": {"claimId": "c-1"}}
REQUESTS = 40


def test_concurrent_submissions_are_written_in_batches(served: Served, keys: Keys, engine: Engine) -> None:
    start = threading.Barrier(REQUESTS)
    limits = httpx.Limits(max_connections=REQUESTS, max_keepalive_connections=REQUESTS)
    with httpx.Client(base_url=served.base_url, timeout=60, limits=limits) as http:

        def submit(n: int) -> httpx.Response:
            start.wait()
            headers = auth(keys.alice, **{"Idempotency-Key": f"key-{n}"})
            return http.post("/v1/tasks", json={**BODY, "input": {"claimId": f"c-{n}"}}, headers=headers)

        with ThreadPoolExecutor(REQUESTS) as pool:
            responses = list(pool.map(submit, range(REQUESTS)))
        assert [r.status_code for r in responses] == [202] * REQUESTS
        tasks = [r.json() for r in responses]
        assert [t["input"]["claimId"] for t in tasks] == [f"c-{n}" for n in range(REQUESTS)]
        assert len({t["id"] for t in tasks}) == REQUESTS
        assert len(engine.list("acme", limit=500).items) == REQUESTS

        sizes = []
        for task in tasks:
            trace = http.get(f"/v1/tasks/{task['id']}/trace", headers=auth(keys.alice)).json()
            [submit_span] = [s for s in trace["spans"] if s["name"] == "aiplane.engine.submit"]
            [gateway_span] = [s for s in trace["spans"] if s["name"] == "aiplane.gateway.submit"]
            # The engine's span sits in the request's own trace, under the gateway's span, whatever batch it was in.
            assert submit_span["traceId"] == gateway_span["traceId"]
            assert submit_span["parentSpanId"] == gateway_span["spanId"]
            sizes.append(submit_span["attributes"]["aiplane.batch.size"])
        # Each request's answer was stored under its own key: the same request again gets it back as it was.
        again = http.post(
            "/v1/tasks",
            json={**BODY, "input": {"claimId": "c-7"}},
            headers=auth(keys.alice, **{"Idempotency-Key": "key-7"}),
        )
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json() == tasks[7]

    assert max(sizes) > 1, sizes
