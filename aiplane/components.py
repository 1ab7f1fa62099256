"""The gateway and the worker as processes of their own: what the chart's Deployments run (``aiplane gateway``,
``aiplane worker``), against a shared store (PostgreSQL) instead of ``aiplane dev``'s SQLite in one process.

Both read the store's URL from ``--db`` or ``AIPLANE_DATABASE_URL`` (the chart sets it from a Secret, so it never
shows in a pod spec), and stop cleanly on SIGTERM: the gateway lets uvicorn drain its requests, the worker finishes
the steps it runs.

With ``--from-cluster NAMESPACE`` (or ``AIPLANE_NAMESPACE``) both follow that namespace (``aiplane.incluster``):
its valid Workflows are registered into the store, model calls go by the Models' ``status.endpoints``, connector
steps use its Connectors and Secrets, and its Policies govern (PII masking, residency, approval rules, payload
logs; at the gateway also rate limits, separation of duties and role bindings). Without it, a worker has no
models and no connectors: only rules steps run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from aiplane import tracing

if TYPE_CHECKING:
    from fastapi import FastAPI

    from aiplane.incluster import ClusterSources
    from connectors.kafka.bus import KafkaBus
    from engine import Engine

log = logging.getLogger(__name__)
DATABASE_URL_ENV = "AIPLANE_DATABASE_URL"
NAMESPACE_ENV = "AIPLANE_NAMESPACE"
#: The former name of ``AIPLANE_NAMESPACE``, from when only Models were read from the cluster.
MODELS_NAMESPACE_ENV = "AIPLANE_MODELS_NAMESPACE"
SECRETS_DIR_ENV = "AIPLANE_SECRETS_DIR"
# The engine's event bus (the chart's kafka.bootstrapServers): set, the workers' outbox relay publishes task events
# to Kafka; unset, they stay in the process (nothing outside it subscribes).
KAFKA_BOOTSTRAP_ENV = "AIPLANE_KAFKA_BOOTSTRAP_SERVERS"


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
    sources: ClusterSources | None = None,
    idempotency_ttl: timedelta | None = None,
) -> None:
    """Run the gateway under uvicorn until SIGTERM/SIGINT. It and the workers migrate the store on start (under
    an advisory lock on PostgreSQL, so replicas starting together take turns). With ``sources``, it registers the
    namespace's Workflows too (a submission right after ``kubectl apply`` need not wait for a worker) and enforces
    its Policies."""
    import uvicorn

    from engine import Engine

    provider = tracing.configure_from_env("aiplane-gateway")
    options = sources.engine_options() if sources is not None else {}
    engine = Engine(db_url, data_dir=data_dir, **options)
    try:
        with sources.registering(engine) if sources is not None else contextlib.nullcontext():
            app = gateway_app(engine, public_base_url, sources=sources, idempotency_ttl=idempotency_ttl)
            log.info("gateway starting", extra={"host": host, "port": port})
            uvicorn.run(app, host=host, port=port, log_config=None, access_log=False)
    finally:
        engine.close()
        if provider is not None:
            provider.shutdown()  # flushes the spans still batched


def gateway_app(
    engine: Engine,
    public_base_url: str = "",
    *,
    sources: ClusterSources | None = None,
    environ: Mapping[str, str] = os.environ,
    idempotency_ttl: timedelta | None = None,
) -> FastAPI:
    """The app ``serve_gateway`` serves: API keys, and OIDC tokens when ``AIPLANE_OIDC_*`` is set; with
    ``sources``, the namespace's Policies enforced and followed as they change (rate limits, role bindings,
    separation of duties, predictions)."""
    from api.app import create_app
    from api.auth import follow_policies
    from api.settings import GatewaySettings
    from policies.access_oidc import OIDCConfig, OIDCVerifier

    oidc = OIDCConfig.from_env(environ)  # AIPLANE_OIDC_*: OIDC bearer tokens besides API keys
    # --idempotency-ttl, else AIPLANE_IDEMPOTENCY_TTL, else 24 h.
    ttl = {"idempotency_ttl": idempotency_ttl} if idempotency_ttl is not None else {}
    app = create_app(
        engine,
        GatewaySettings.from_env(environ, public_base_url=public_base_url, **ttl),
        oidc=OIDCVerifier(oidc) if oidc is not None else None,
    )
    if sources is not None:
        follow_policies(app.state.gateway, sources.policies, sources.workflows, models=sources.model_target)
    return app


def run_worker(
    db_url: str,
    data_dir: Path,
    concurrency: int,
    metrics_port: int | None,
    metrics_host: str,
    *,
    sources: ClusterSources | None = None,
) -> None:
    """Claim and run steps until SIGTERM/SIGINT, then finish the running ones. With ``metrics_port``, serve
    Prometheus' /metrics (the engine's step metrics and the store gauges this worker refreshes).

    Connector steps: kafkaSink records go to their Connector's cluster with its auth (``ConnectorRecordSink``),
    postgres statements through a pool per Connector; both are closed on the way out."""
    from connectors.kafka.routing import ConnectorRecordSink
    from connectors.postgres import PostgresClient
    from engine import Engine, StaticConnectorResolver
    from engine.executors.resolvers import DirectorySecretResolver

    provider = tracing.configure_from_env("aiplane-worker")
    # kafka-python narrates every connection at INFO; its warnings are what an operator needs.
    logging.getLogger("kafka").setLevel(logging.WARNING)
    options = sources.engine_options() if sources is not None else {}
    if sources is None:
        # Outside a cluster: no Connectors; Secrets, if any, as files (as a consumer pod gets them).
        options["connector_resolver"] = StaticConnectorResolver()
        secrets_dir = os.environ.get(SECRETS_DIR_ENV)
        options["secret_resolver"] = DirectorySecretResolver(secrets_dir) if secrets_dir else None
    sink = ConnectorRecordSink(options["connector_resolver"], options["secret_resolver"])
    postgres = PostgresClient()
    bus = _kafka_bus()
    try:
        engine = Engine(db_url, data_dir=data_dir, sink=sink, postgres=postgres, bus=bus, **options)
        try:
            with sources.registering(engine) if sources is not None else contextlib.nullcontext():
                _work(engine, concurrency, metrics_port, metrics_host)
        finally:
            engine.close()
    finally:
        sink.close()
        postgres.close()
        if bus is not None:
            bus.close()
        if provider is not None:
            provider.shutdown()


def _kafka_bus(environ: dict[str, str] | None = None) -> KafkaBus | None:
    """The Kafka bus ``AIPLANE_KAFKA_BOOTSTRAP_SERVERS`` names (events topic ``aiplane.events``), or None."""
    env = os.environ if environ is None else environ
    bootstrap = env.get(KAFKA_BOOTSTRAP_ENV, "").strip()
    if not bootstrap:
        return None
    from connectors.kafka.bus import KafkaBus

    log.info("task events go to Kafka", extra={"bootstrap_servers": bootstrap})
    return KafkaBus(bootstrap)


def _work(engine: Engine, concurrency: int, metrics_port: int | None, metrics_host: str) -> None:
    from prometheus_client import start_http_server

    worker = engine.worker(concurrency=concurrency)

    def _terminate(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: finishing running steps, then exiting", signum)
        worker.stop_soon()

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    if metrics_port is not None:
        start_http_server(metrics_port, addr=metrics_host)
    log.info("worker ready", extra={"worker": worker.id, "concurrency": concurrency, "metrics_port": metrics_port})
    worker.run_forever()


def cluster_namespace(flag: str | None, environ: dict[str, str] | None = None) -> str | None:
    """The namespace the gateway and workers follow (``--from-cluster``, else ``AIPLANE_NAMESPACE``, else the
    former ``AIPLANE_MODELS_NAMESPACE``), or None: not in a cluster."""
    env = os.environ if environ is None else environ
    return flag or env.get(NAMESPACE_ENV) or env.get(MODELS_NAMESPACE_ENV) or None
