"""``aiplane purge`` and ``aiplane erase``: retention and GDPR erasure on the engine's store, from a shell or a
CronJob; and ``engine_retention``, the engine's periodic purge as ``aiplane dev`` wires it from manifests.

Both commands work on the store directly (like ``aiplane audit``): ``--database`` (or ``AIPLANE_DATABASE_URL``,
else the dev data directory's SQLite file) and ``--data-dir`` for the blobs. ``purge`` reads Policies,
Workflows and Connectors from manifest files or folders, so it applies exactly the retention those Policies declare
(with ``--kafka``, to the events topic and the kafkaSink topics too: ``aiplane.kafka_retention``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from aiplane import kafka_retention, manifests
from aiplane.kafka_retention import KafkaRetention
from aiplane.settings import Settings
from crds.connector import Connector, ConnectorSpec
from crds.model import Model
from crds.policy import Policy
from crds.workflow import Workflow
from policies.effective import DEFAULT_NAMESPACE, Kind, Target
from policies.erasure import ErasureRequestError
from policies.retention import audit_period, model_retention_for, retention_for
from policies.sources import PolicySet

if TYPE_CHECKING:
    # The engine is imported where a command uses it: every `aiplane` command builds this module's parsers, and
    # importing the engine costs seconds a `submit` or `get` does not need.
    from engine.payloads import PayloadCodec
    from engine.store.database import Database
    from engine.store.purge import Purged, Retention

#: The engine's events topic on Kafka.
EVENTS_TOPIC = kafka_retention.EVENTS_TOPIC


def resource_targets(kind: Kind, resources: Iterable[Workflow | Model]) -> dict[str, Target]:
    """Each of ``resources`` by name, as Policies select it (its namespace and labels)."""
    return {
        r.metadata["name"]: Target(
            kind, r.metadata["name"], r.metadata.get("namespace", DEFAULT_NAMESPACE), r.metadata.get("labels") or {}
        )
        for r in resources
    }


def workflow_targets(workflows: Sequence[Workflow]) -> dict[str, Target]:
    return resource_targets("Workflow", workflows)


def engine_retention(
    policies: PolicySet,
    workflows: Sequence[Workflow],
    *,
    kafka: str | None = None,
    connectors: Mapping[str, ConnectorSpec] | None = None,
    always: bool = False,
    models: Callable[[str], Target] | None = None,
) -> Retention | None:
    """The engine's retention from these Policies; None (no purge at all) when none sets a retention, unless
    ``always`` (``aiplane dev``, whose Policies follow their files: periods are asked at each purge, so a
    retention a Policy gains later applies to the next one). With ``kafka`` (the events bus's bootstrap servers)
    each purge also sets the retention of the events topic and of the kafkaSink ``connectors``' topics
    (``aiplane.kafka_retention``). ``models``: a Model's namespace and labels by name, so that the Policies
    selecting it purge its predictions' payload logs."""
    from engine.store.purge import Retention

    if not always and not any(p.spec.retention is not None for p in policies.policies()):
        return None
    periods = retention_for(policies.effective, workflow_targets(workflows))
    specs = {w.metadata["name"]: w.spec for w in workflows}
    topics = KafkaRetention(
        policies=policies.policies,
        periods=periods,
        workflows=lambda: specs,
        connectors=dict(connectors or {}).get,
        events=kafka,
    )
    return Retention(
        periods,
        audit=lambda: audit_period(policies.policies()),
        after=topics if kafka else None,
        models=model_retention_for(policies.effective, models) if models is not None else None,
    )


def _store(args: argparse.Namespace) -> tuple[Database, PayloadCodec]:
    from engine.payloads import FileBlobStore, PayloadCodec
    from engine.store.database import Database

    data_dir: Path = args.data_dir or Settings.from_env().data_dir
    url = args.database or os.environ.get("AIPLANE_DATABASE_URL") or f"sqlite:///{data_dir / 'engine.db'}"
    return Database(url, pool_size=1), PayloadCodec(FileBlobStore(data_dir / "blobs"))


def _cmd_purge(args: argparse.Namespace) -> int:
    from engine.store.audit import AuditLog
    from engine.store.purge import purge

    resources = manifests.load(args.paths)
    policies = [r for r in resources if isinstance(r, Policy)]
    workflows = [r for r in resources if isinstance(r, Workflow)]
    periods = retention_for(PolicySet(policies).effective, workflow_targets(workflows))
    models = resource_targets("Model", [m for m in resources if isinstance(m, Model)])
    model_periods = model_retention_for(
        PolicySet(policies).effective, lambda name: models.get(name) or Target("Model", name)
    )
    db, codec = _store(args)
    try:
        purged: Purged = purge(
            db,
            codec,
            periods,
            now=_now(),
            audit_period=audit_period(policies),
            audit_log=AuditLog(db),
            model_retention_for=model_periods,
        )
    except sa.exc.SQLAlchemyError as error:
        print(f"aiplane purge: cannot purge the store at {db.url!r}: {error.__class__.__name__}", file=sys.stderr)
        return 2
    finally:
        db.dispose()
    report = purged.as_dict()
    if args.kafka:
        from aiplane.components import SECRETS_DIR_ENV
        from engine.executors.resolvers import DirectorySecretResolver
        from policies.retention_kafka import TopicRetentionError

        connectors = {r.metadata["name"]: r.spec for r in resources if isinstance(r, Connector)}
        secrets_dir = os.environ.get(SECRETS_DIR_ENV)
        topics = KafkaRetention(
            policies=lambda: policies,
            periods=periods,
            workflows=lambda: {w.metadata["name"]: w.spec for w in workflows},
            connectors=connectors.get,
            secrets=DirectorySecretResolver(secrets_dir) if secrets_dir else None,
            events=args.kafka,
            events_topic=args.events_topic,
        )
        try:
            report["topics"] = topics.apply()
        except TopicRetentionError as error:
            print(f"aiplane purge: {error}", file=sys.stderr)
            return 1
    print(json.dumps(report, sort_keys=True))
    return 0


def _cmd_erase(args: argparse.Namespace) -> int:
    from engine.store.purge import erase, remaining

    db, codec = _store(args)
    try:
        # Without the engine's sinks, no tombstones: the sink topics holding the subject's records are reported.
        erased = erase(
            db,
            codec,
            args.subject,
            fields=args.field,
            actor=args.actor,
            now=_now(),
            beyond=lambda found: {"remaining": remaining(found)},
        )
    except ErasureRequestError as error:
        print(f"aiplane erase: {error}", file=sys.stderr)
        return 2
    except sa.exc.SQLAlchemyError as error:
        print(f"aiplane erase: cannot erase in the store at {db.url!r}: {error.__class__.__name__}", file=sys.stderr)
        return 2
    finally:
        db.dispose()
    report = {
        "subjectDigest": erased.subject_digest,
        "tasks": len(erased.tasks),
        "events": erased.events,
        "blobs": erased.blobs,
        "payloadLogs": erased.payload_logs,
        "remaining": erased.beyond.get("remaining", []),
        "auditRecord": erased.record,
    }
    print(json.dumps(report, sort_keys=True))
    return 0


def _now() -> datetime:
    return datetime.now(UTC)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def store_args(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--database", default=None, help="engine database URL (AIPLANE_DATABASE_URL)")
        parser.add_argument("--data-dir", type=Path, default=None, help="data dir with the blobs (and dev SQLite)")

    purge_parser = sub.add_parser("purge", help="delete data past the retention its Policies set")
    purge_parser.add_argument("paths", nargs="+", type=Path, help="manifest files or folders (Policies, Workflows)")
    store_args(purge_parser)
    purge_parser.add_argument(
        "--kafka",
        default=None,
        help="the events bus's bootstrap servers: also set the events topic's retention, and that of the topics of "
        "the kafkaSink Connectors the Workflows publish to (on their own clusters; auth Secrets from "
        "AIPLANE_SECRETS_DIR)",
    )
    purge_parser.add_argument("--events-topic", default=EVENTS_TOPIC, help="the engine's events topic")
    purge_parser.set_defaults(func=_cmd_purge)

    erase_parser = sub.add_parser("erase", help="GDPR erasure: remove every task of a data subject, audited")
    erase_parser.add_argument("--subject", required=True, help="the subject id (the tasks' policy.subject)")
    erase_parser.add_argument(
        "--field", action="append", default=[], help="also match tasks whose input field (dotted path) holds the id"
    )
    erase_parser.add_argument("--actor", default=os.environ.get("USER", "cli"), help="who asks (audit record)")
    store_args(erase_parser)
    erase_parser.set_defaults(func=_cmd_erase)
