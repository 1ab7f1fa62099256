"""The gateway and the worker as processes of their own: what the chart's Deployments run (``aiplane gateway``,
``aiplane worker``), against a shared store (PostgreSQL) instead of ``aiplane dev``'s SQLite in one process.

Both read the store's URL from ``--db`` or ``AIPLANE_DATABASE_URL`` (the chart sets it from a Secret, so it never
shows in a pod spec), and stop cleanly on SIGTERM: the gateway lets uvicorn drain its requests, the worker finishes
the steps it runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from aiplane import tracing

if TYPE_CHECKING:
    from engine import ModelResolver

log = logging.getLogger(__name__)
DATABASE_URL_ENV = "AIPLANE_DATABASE_URL"
MODELS_NAMESPACE_ENV = "AIPLANE_MODELS_NAMESPACE"


class MissingDatabaseError(ValueError):
    """No store URL was given; the message says how to give one."""


def database_url(flag: str | None, environ: dict[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    url = flag or env.get(DATABASE_URL_ENV, "")
    if not url:
        raise MissingDatabaseError(
            f"no store given: pass --db postgresql+psycopg://USER:PASSWORD@HOST:5432/DB or set {DATABASE_URL_ENV}"
        )
    return url


def serve_gateway(
    db_url: str,
    data_dir: Path,
    host: str,
    port: int,
    public_base_url: str = "",
    *,
    model_resolver: ModelResolver | None = None,
) -> None:
    """Run the gateway under uvicorn until SIGTERM/SIGINT. It and the workers migrate the store on start (under
    an advisory lock on PostgreSQL, so replicas starting together take turns)."""
    import uvicorn

    from api.app import create_app
    from api.settings import GatewaySettings
    from engine import Engine
    from policies.access_oidc import OIDCConfig, OIDCVerifier

    provider = tracing.configure_from_env("aiplane-gateway")
    oidc = OIDCConfig.from_env(os.environ)  # AIPLANE_OIDC_*: OIDC bearer tokens besides API keys
    engine = Engine(db_url, data_dir=data_dir, model_resolver=model_resolver)
    try:
        app = create_app(
            engine,
            GatewaySettings(public_base_url=public_base_url),
            oidc=OIDCVerifier(oidc) if oidc is not None else None,
        )
        log.info("gateway starting", extra={"host": host, "port": port})
        uvicorn.run(app, host=host, port=port, log_config=None, access_log=False)
    finally:
        engine.close()
        if provider is not None:
            provider.shutdown()  # flushes the spans still batched


def run_worker(
    db_url: str,
    data_dir: Path,
    concurrency: int,
    metrics_port: int | None,
    metrics_host: str,
    *,
    model_resolver: ModelResolver | None = None,
) -> None:
    """Claim and run steps until SIGTERM/SIGINT, then finish the running ones. With ``metrics_port``, serve
    Prometheus' /metrics (the engine's step metrics and the store gauges this worker refreshes)."""
    from prometheus_client import start_http_server

    from engine import Engine

    provider = tracing.configure_from_env("aiplane-worker")
    engine = Engine(db_url, data_dir=data_dir, model_resolver=model_resolver)
    worker = engine.worker(concurrency=concurrency)

    def _terminate(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: finishing running steps, then exiting", signum)
        worker.stop_soon()

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    if metrics_port is not None:
        start_http_server(metrics_port, addr=metrics_host)
    log.info("worker ready", extra={"worker": worker.id, "concurrency": concurrency, "metrics_port": metrics_port})
    try:
        worker.run_forever()
    finally:
        engine.close()
        if provider is not None:
            provider.shutdown()


def models_namespace(flag: str | None, environ: dict[str, str] | None = None) -> str | None:
    """The namespace whose Models the gateway and workers route by (``--models-from-cluster`` or
    ``AIPLANE_MODELS_NAMESPACE``), or None."""
    env = os.environ if environ is None else environ
    return flag or env.get(MODELS_NAMESPACE_ENV) or None


@contextlib.contextmanager
def cluster_models(namespace: str | None) -> Iterator[ModelResolver | None]:
    """Model endpoints from the Models of ``namespace``: their ``status.endpoints``, the weights the operator
    moves during a canary, watched through the in-cluster config (or KUBECONFIG) until the block ends. None
    without a namespace: the engine's static resolver, with no models."""
    if namespace is None:
        yield None
        return
    from aiplane.kubemodels import KubeModelResolver
    from operators.model.kube import new_api_client

    resolver = KubeModelResolver(new_api_client(pool_size=2), namespace).start()
    log.info("routing models by the cluster's Models", extra={"namespace": namespace})
    try:
        yield resolver
    finally:
        resolver.stop()
