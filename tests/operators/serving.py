"""What the canary tests route real traffic through: ``bentoml serve`` processes of the claims model (one per
version, some failing on purpose) and the gateway, served by uvicorn, resolving endpoints from the cluster.

Pods on kwok's simulated nodes run nothing and their IPs route nowhere, so a version's traffic goes to a local
``bentoml serve`` instead: the Model maps each version to it with the ``aiplane.io/endpoint-urls`` annotation, and
the operator publishes those URLs in ``status.endpoints`` in place of the Services' in-cluster URLs. Everything
else (Deployments, scheduling, weights, analysis) is what runs in a real cluster.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI

from aiplane.modelserver import ModelServer
from tests.fixtures.polling import assert_eventually

CLAIMS_DIR = Path(__file__).resolve().parents[2] / "examples" / "claims-triage" / "model"
# Analysis thresholds the claims versions that serve well pass: the same model in every version, so the class mix
# holds and drift stays under the threshold; a version failing on purpose breaks the error rate.
CLAIMS_ANALYSIS: dict[str, object] = {
    "minRequests": 5,
    "maxErrorRate": 0.1,
    "maxP99LatencyMs": 5000,
    "predictionField": "claim_type",
    "maxDrift": 1.0,
}
DOCUMENT = "Rear-ended at a red light on 2024-03-02; bumper and tail light repaired for EUR 1,250. Policy AB-123456."


def claims_server(log_dir: Path, name: str, **env: str) -> ModelServer:
    """One ``bentoml serve`` of the claims model with ``env`` set (AIPLANE_CLAIMS_ERROR_RATE, ...); not started."""
    return ModelServer(
        name=name, bento="service:ClaimsExtractor", working_dir=CLAIMS_DIR, log_path=log_dir / f"{name}.log", env=env
    )


class Served:
    """An ASGI app under a real uvicorn on a free loopback port, in a thread."""

    def __init__(self, app: FastAPI) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        assert_eventually(lambda: self.server.started, timeout=20, interval=0.05, message="uvicorn started")

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)


@contextmanager
def traffic(url: str, api_key: str, model: str, rate_per_s: float = 20.0) -> Iterator[dict[str, int]]:
    """Predict requests through the gateway at about ``rate_per_s`` until the block ends; counts by status."""
    counts: dict[str, int] = {}
    stop = threading.Event()

    def loop() -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {api_key}"}, timeout=10) as client:
            while not stop.wait(1 / rate_per_s):
                try:
                    status = str(
                        client.post(
                            f"/v1/models/{model}/predict", params={"api": "extract"}, json={"document": DOCUMENT}
                        ).status_code
                    )
                except httpx.HTTPError as error:
                    status = type(error).__name__
                counts[status] = counts.get(status, 0) + 1

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield counts
    finally:
        stop.set()
        thread.join(20)
