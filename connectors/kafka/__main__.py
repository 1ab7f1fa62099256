"""``python -m connectors.kafka source ...``: run one kafkaSource Connector until SIGTERM or SIGINT.

The command a kafkaSource's consumer Deployment runs. The Connector's ``kafkaSource`` block comes as JSON (the
operator writes it from the resource; camelCase as in the manifest), the store's URL and the tenant as arguments.
The Secret keys its ``auth`` names are files under ``AIPLANE_SECRETS_DIR`` (``<dir>/<secret>/<key>``, where the
operator mounts them); the consumer and its dead-letter producer authenticate with them.

This runs without Policies: ``aiplane kafka-source --from-cluster NAMESPACE`` (``aiplane.kafkasource``) runs the
same source with the namespace's Policies enforced (masking, tenants, residency, rate limits), as the Connector
operator's Deployment does when it is given a ServiceAccount that may read them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

from connectors.kafka.clients import SecretMissingError
from connectors.kafka.source import KafkaSource, Limiter, SourceSettings
from crds.connector import KafkaSource as KafkaSourceSpec
from engine.executors.resolvers import DirectorySecretResolver
from engine.facade import Engine

SECRETS_DIR_ENV = "AIPLANE_SECRETS_DIR"


def add_source_arguments(source: argparse.ArgumentParser) -> None:
    """The arguments of a source process (the Connector operator writes them into the consumer Deployment)."""
    source.add_argument("--connector", required=True, help="the Connector's name")
    source.add_argument("--tenant", required=True, help="tenant the tasks belong to")
    source.add_argument("--spec", required=True, help="the Connector's kafkaSource block, as JSON")
    source.add_argument(
        "--db-url", required=True, help="the engine's store (sqlite:///... or postgresql+psycopg://...)"
    )
    source.add_argument("--data-dir", type=Path, default=None, help="shared directory for large payloads")
    source.add_argument("--batch-size", type=int, default=500, help="most messages per poll and transaction")
    source.add_argument(
        "--session-timeout",
        type=float,
        default=10.0,
        help="seconds before the group gives a dead member's partitions away",
    )
    source.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus /metrics (consumer lag, messages by outcome, stalls) on this port",
    )
    source.add_argument("--metrics-host", default="0.0.0.0", help="address of /metrics")


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # kafka-python narrates every connection and rebalance at INFO; its warnings are what an operator needs.
    logging.getLogger("kafka").setLevel(logging.WARNING)


def serve_metrics(args: argparse.Namespace) -> None:
    """Serve the default registry's /metrics when ``--metrics-port`` is given: the connector's series
    (``connectors.kafka.metrics``) are set only in this process, so Prometheus reads them from it."""
    if args.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, addr=args.metrics_host)


def settings_from(args: argparse.Namespace) -> SourceSettings:
    return SourceSettings(
        connector=args.connector,
        tenant=args.tenant,
        spec=KafkaSourceSpec.model_validate(json.loads(args.spec)),
        batch_size=args.batch_size,
        session_timeout=args.session_timeout,
    )


def serve(engine: Engine, settings: SourceSettings, *, rate: Limiter | None = None) -> int:
    """Consume into ``engine`` until SIGTERM or SIGINT; 2 for a configuration to fix. The caller closes ``engine``."""
    secrets_dir = os.environ.get(SECRETS_DIR_ENV)
    secrets = DirectorySecretResolver(secrets_dir) if secrets_dir else None
    try:
        runner = KafkaSource(engine, settings, secrets=secrets, rate=rate)
    except (SecretMissingError, ValueError) as error:
        # A configuration to fix (a Secret key not mounted, a CA that is not PEM), not a crash to retry at once.
        where = f"under {secrets_dir}" if secrets_dir else f"{SECRETS_DIR_ENV} is not set"
        print(f"kafka source {settings.connector}: {error} ({where})", file=sys.stderr)
        return 2
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: runner.stop())
    try:
        runner.run()
    finally:
        runner.close()
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m connectors.kafka")
    commands = parser.add_subparsers(dest="command", required=True)
    add_source_arguments(commands.add_parser("source", help="turn a topic's messages into tasks"))
    args = parser.parse_args(argv)
    configure_logging()
    serve_metrics(args)
    # The gateway or an operator migrates the store; a consumer only writes tasks into it.
    engine = Engine(args.db_url, data_dir=args.data_dir, migrate_on_start=False)
    try:
        return serve(engine, settings_from(args))
    finally:
        engine.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
