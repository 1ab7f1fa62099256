"""``aiplane kafka-source``: a kafkaSource Connector's consumer, governed by its namespace's Policies.

``python -m connectors.kafka source`` with, under ``--from-cluster NAMESPACE`` (or ``AIPLANE_NAMESPACE``), what a
worker of that namespace follows: its Policies (PII masking of the stored input, tenant access and residency at
intake; rate limits as back-pressure), its Workflows' labels (which Policies select them) and its Models' and
Connectors' regions (residency). The consumer's ServiceAccount needs the worker's read access (Policies,
Workflows, Models, Connectors, and get on Secrets); the PII key comes as the workers' does (``AIPLANE_PII_KEY`` or
``AIPLANE_PII_KEY_FILE``), so tokens made here open with it everywhere. Without a namespace it is exactly
``python -m connectors.kafka source``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from connectors.kafka.__main__ import add_source_arguments, configure_logging, serve, serve_metrics, settings_from

NAMESPACE_HELP = (
    "follow this namespace's Policies, Workflows, Models and Connectors (default: AIPLANE_NAMESPACE); without one "
    "no Policy is enforced"
)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    source = sub.add_parser("kafka-source", help="run a kafkaSource Connector's consumer (a consumer pod)")
    add_source_arguments(source)
    source.add_argument("--from-cluster", dest="from_cluster", metavar="NAMESPACE", help=NAMESPACE_HELP)
    source.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kubernetes.config import ConfigException

    from aiplane import components
    from aiplane.incluster import cluster_sources
    from engine import Engine, RateBudgetStore
    from policies.ratelimit import SharedRateLimiter
    from policies.tokens import MaskingKeyError

    configure_logging()
    serve_metrics(args)
    settings = settings_from(args)
    try:
        with cluster_sources(components.cluster_namespace(args.from_cluster)) as sources:
            options = sources.engine_options() if sources is not None else {}
            # The gateway or an operator migrates the store; a consumer only writes tasks into it.
            engine = Engine(args.db_url, data_dir=args.data_dir, migrate_on_start=False, **options)
            try:
                # The Workflow watch fills the labels Policies select by (listed before the first message is read).
                with sources.registering(engine) if sources is not None else contextlib.nullcontext():
                    # On PostgreSQL the consumer leases from the store's buckets, as the gateways do: one limit.
                    budget = None if engine.db.is_sqlite else RateBudgetStore(engine.db)
                    rate = SharedRateLimiter(sources.policies, budget=budget) if sources is not None else None
                    return serve(engine, settings, rate=rate)
            finally:
                engine.close()
    except (MaskingKeyError, ConfigException) as error:
        print(f"aiplane kafka-source: {error}", file=sys.stderr)
        return 2
    except TimeoutError as error:  # a watch could not list its kind: no apiserver, or RBAC refuses
        print(f"aiplane kafka-source: {error} (is the apiserver reachable, may it list them?)", file=sys.stderr)
        return 2
