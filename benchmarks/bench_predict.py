"""Latency of synchronous predict through the gateway vs calling the BentoML service directly (p50 and p99).

Subject: ``POST /v1/models/claims-extractor/predict`` on the gateway (``api.app.create_app``, a real uvicorn in
its own process, one worker), authenticated with an API key; the gateway checks the key, opens its span, picks
the endpoint from the engine's ``StaticModelResolver`` and proxies the body to the claims model.
Baseline: ``POST /extract`` on the same ``bentoml serve`` process (the claims model, ``AIPLANE_CLAIMS_DELAY_MS=10``
so each call takes at least 10 ms, as a small real model would), with the same body.

Both servers log as deployed, one access line per request each: BentoML its own, the gateway through ``aiplane``'s
structured logging at INFO (checked in its log after the run). Each side has its own keep-alive ``httpx.Client``;
requests are sequential; after a warm-up, rounds alternate a batch through the gateway and a batch direct, so load
spikes hit both. Every request's latency is a sample; the two comparisons are the p50 and the p99 of those samples
(targets: p50 at most 1.10x, p99 at most 1.25x).

Then throughput, the figure capacity planning starts from (docs/operations.md#capacity-planning): ``in_flight``
clients at once, each sending ``per_client`` requests in a row, rounds alternating gateway and direct; a sample is
a round's wall time over its requests, reported as inferences a second of one model replica (one ``bentoml serve``
process) with and without the gateway in front.

The claims service's API is ``extract``, so the gateway is asked for it with ``?api=extract``: the model gets
``POST /extract`` with the baseline's body, byte for byte.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from aiplane.modelserver import ModelServer
from api import create_api_key
from benchmarks.harness import Comparison
from benchmarks.servers import ROOT, scratch_dir, served, smoke
from engine import Engine

MODEL = "claims-extractor"
DELAY_MS = "10"
DOCUMENT = {
    "document": "Policy number: PL-12345678. My car was rear-ended on 2024-03-05 on the highway; the repair "
    "shop quoted the bumper and the trunk. I am claiming $1,250.00."
}


@dataclass(frozen=True)
class Sizes:
    rounds: int = 20
    per_round: int = 40
    warmup: int = 40
    # Throughput: clients sending at once, requests each per round, rounds per side.
    in_flight: int = 8
    per_client: int = 25
    throughput_rounds: int = 6

    @classmethod
    def default(cls) -> Sizes:
        if smoke():
            return cls(rounds=2, per_round=5, warmup=3, in_flight=2, per_client=3, throughput_rounds=1)
        return cls()


@contextmanager
def model_server(work: Path) -> Iterator[ModelServer]:
    """The claims model under ``bentoml serve`` with ``AIPLANE_CLAIMS_DELAY_MS`` set (for its process only)."""
    saved = os.environ.get("AIPLANE_CLAIMS_DELAY_MS")
    os.environ["AIPLANE_CLAIMS_DELAY_MS"] = DELAY_MS
    server = ModelServer(
        name=MODEL,
        bento="service:ClaimsExtractor",
        working_dir=ROOT / "examples" / "claims-triage" / "model",
        log_path=work / "model.log",
    )
    try:
        server.start()
    finally:
        if saved is None:
            del os.environ["AIPLANE_CLAIMS_DELAY_MS"]
        else:
            os.environ["AIPLANE_CLAIMS_DELAY_MS"] = saved
    try:
        yield server
    finally:
        server.stop()


def _call(client: httpx.Client, url: str, body: bytes, headers: dict[str, str]) -> float:
    start = time.perf_counter()
    response = client.post(url, content=body, headers=headers)
    elapsed = time.perf_counter() - start
    if response.status_code != 200:
        raise RuntimeError(f"POST {url} answered {response.status_code}: {response.text[:500]}")
    return elapsed


Call = tuple[str, dict[str, str]]  # URL and headers


def _round(clients: list[httpx.Client], call: Call, body: bytes, per_client: int) -> float:
    """Seconds per request of one round: every client sends ``per_client`` requests, all clients at once."""
    url, headers = call

    def send(client: httpx.Client) -> None:
        for _ in range(per_client):
            _call(client, url, body, headers)

    start = time.perf_counter()
    with ThreadPoolExecutor(len(clients)) as pool:
        list(pool.map(send, clients))
    return (time.perf_counter() - start) / (len(clients) * per_client)


def _throughput(sizes: Sizes, gateway: Call, direct: Call, body: bytes) -> tuple[list[float], list[float]]:
    """Seconds per request of each round, through the gateway and direct, ``sizes.in_flight`` requests at a time."""
    clients = [httpx.Client(timeout=30) for _ in range(sizes.in_flight)]
    try:
        subject_s: list[float] = []
        baseline_s: list[float] = []
        _round(clients, gateway, body, 1)  # every client's connection open before the first timed round
        _round(clients, direct, body, 1)
        for _ in range(sizes.throughput_rounds):
            baseline_s.append(_round(clients, direct, body, sizes.per_client))
            subject_s.append(_round(clients, gateway, body, sizes.per_client))
        return subject_s, baseline_s
    finally:
        for client in clients:
            client.close()


def run(sizes: Sizes | None = None) -> list[Comparison]:
    sizes = sizes or Sizes.default()
    body = json.dumps(DOCUMENT).encode()
    with scratch_dir("aiplane-bench-predict-") as work, model_server(work) as model:
        db_url = f"sqlite:///{work / 'engine.db'}"
        with Engine(db_url) as engine:
            key = create_api_key(engine, "bench", "predictor", ["submitter"])
        endpoint = {"version": "bench", "url": model.url, "weight": 100}
        # Logging at INFO as deployed: the gateway writes its access line per request, as BentoML does its own.
        config = {"db_url": db_url, "models": {MODEL: [endpoint]}, "log_level": "INFO"}
        with (
            served("gateway", config, work) as gateway,
            httpx.Client(timeout=30) as via_gateway,
            httpx.Client(timeout=30) as direct,
        ):
            gateway_call = (
                via_gateway,
                f"{gateway.url}/v1/models/{MODEL}/predict?api=extract",
                {"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
            )
            direct_call = (direct, f"{model.url}/extract", {"Content-Type": "application/json"})
            first = via_gateway.post(gateway_call[1], content=body, headers=gateway_call[2])
            second = direct.post(direct_call[1], content=body, headers=direct_call[2])
            if first.status_code != 200 or first.json() != second.json():
                raise RuntimeError(f"the gateway's answer differs from the model's: {first.text} vs {second.text}")
            for client, url, headers in (gateway_call, direct_call):
                for _ in range(sizes.warmup):
                    _call(client, url, body, headers)
            subject_s: list[float] = []
            baseline_s: list[float] = []
            for _ in range(sizes.rounds):
                for (client, url, headers), samples in ((direct_call, baseline_s), (gateway_call, subject_s)):
                    samples.extend(_call(client, url, body, headers) for _ in range(sizes.per_round))
            if "aiplane.gateway.access" not in gateway.log_tail(5):
                raise RuntimeError(f"the gateway wrote no access log; its log ends:\n{gateway.log_tail()}")
            rate_subject_s, rate_baseline_s = _throughput(sizes, gateway_call[1:], direct_call[1:], body)
    name = f"predict {MODEL} ({DELAY_MS} ms model delay): gateway vs BentoML direct"
    return [
        Comparison(f"{name}, p50", subject_s, baseline_s),
        Comparison(f"{name}, p99", subject_s, baseline_s, quantile=0.99),
        Comparison(f"{name}, throughput, {sizes.in_flight} in flight", rate_subject_s, rate_baseline_s, rate=True),
    ]
