"""The ``aiplane`` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import aiplane
from aiplane import dataflow, logs, manifests, retention_cli
from aiplane.client import DEFAULT_URL, Client, GatewayError, dumps
from aiplane.modelserver import ModelServerError
from aiplane.settings import Settings
from crds import RESOURCES
from crds.generate import render
from policies.audit import Head, Record, Verification, parse_anchor, verify

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

EXAMPLE_DIR = Path("examples/claims-triage")


def _cmd_crds(_: argparse.Namespace) -> int:
    """Print the CRDs, ready for ``aiplane crds | kubectl apply -f -``: aiplane's four and kopf's peering ones
    (the operators' leader election)."""
    import yaml

    from operators import peering

    documents = [render(resource) for resource in RESOURCES]
    documents += [yaml.safe_dump(crd, sort_keys=False) for crd in peering.crds()]
    sys.stdout.write("---\n".join(documents))
    return 0


def _cmd_operator(args: argparse.Namespace) -> int:
    """Run every operator against the current cluster until interrupted."""
    from aiplane.promotions import policy_demands
    from operators import run
    from operators.model.config import Config
    from operators.model.kube import new_api_client

    settings = Settings.from_env()
    logs.configure(settings.log_level, settings.log_format)
    record = approvals = None
    if url := os.environ.get("AIPLANE_DATABASE_URL"):
        # Model promotions and rollbacks go to the audit log in the engine's database, and promotions that need
        # people wait in its approvals.
        from aiplane.promotions import operator_store

        engine, approvals = operator_store(url)
        record = engine.audit.append
    if args.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, addr=args.metrics_host)
    try:
        # Policies' approval rules that read `model` can hold a canary's promotion for people too.
        demands = policy_demands(new_api_client(pool_size=2))
    except TimeoutError as error:
        print(f"aiplane operator: {error}; are aiplane's CRDs installed (aiplane crds | kubectl apply ...)?",
              file=sys.stderr)  # fmt: skip
        return 1
    try:
        run.run(
            Config.from_env(),
            peering_lifetime_s=args.peering_lifetime,
            liveness_endpoint=args.liveness,
            record_decision=record,
            approvals=approvals,
            demands=demands,
        )
    except run.PeeringMissingError as error:
        print(f"aiplane operator: {error}", file=sys.stderr)
        return 1
    return 0


def _positive_duration(text: str) -> timedelta:
    """An argparse type: a duration such as 24h or 90m, longer than zero (``api.settings.positive_duration``)."""
    from api.settings import positive_duration

    try:
        return positive_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _cmd_component(args: argparse.Namespace) -> int:
    """``aiplane gateway`` and ``aiplane worker``: one component against a shared store (the chart's pods)."""
    from kubernetes.config import ConfigException

    from aiplane import components
    from aiplane.incluster import cluster_sources
    from aiplane.tracing import TracingConfigError
    from policies.tokens import MaskingKeyError

    settings = Settings.from_env()
    logs.configure(settings.log_level, settings.log_format)
    if args.command == "gateway" and args.idempotency_ttl is None:
        from api.settings import GatewaySettings

        try:  # the environment's, checked before anything starts
            GatewaySettings.from_env()
        except ValueError as error:
            print(f"aiplane gateway: {error}", file=sys.stderr)
            return 2
    try:
        db_url = components.database_url(args.db)
        with cluster_sources(components.cluster_namespace(args.from_cluster)) as sources:
            if args.command == "gateway":
                port = args.port or settings.port
                components.serve_gateway(
                    db_url,
                    settings.data_dir,
                    args.host,
                    port,
                    args.public_base_url,
                    sources=sources,
                    idempotency_ttl=args.idempotency_ttl,
                )
            else:
                metrics = (args.metrics_port, args.metrics_host)
                components.run_worker(db_url, settings.data_dir, args.concurrency, *metrics, sources=sources)
    except (components.MissingDatabaseError, TracingConfigError, MaskingKeyError, ConfigException) as error:
        # Raised before the process serves anything: a configuration to fix, not a crash.
        print(f"aiplane {args.command}: {error}", file=sys.stderr)
        return 2
    except TimeoutError as error:  # a watch could not list its kind: no apiserver, or RBAC refuses
        print(f"aiplane {args.command}: {error} (is the apiserver reachable, may it list them?)", file=sys.stderr)
        return 2
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    try:
        resources = manifests.load(args.paths)
    except manifests.ManifestError as error:
        print(f"invalid: {error}", file=sys.stderr)
        return 1
    for resource in resources:
        print(f"valid: {resource.KIND}/{resource.metadata.get('name', '?')}")
    return 0


def _cmd_dev(args: argparse.Namespace) -> int:
    """The embedded default: gateway, workers, SQLite, in-process bus and the examples' models, on this machine."""
    from aiplane import dev

    settings = Settings.from_env()
    logs.configure(settings.log_level, settings.log_format)
    try:
        dev.serve(
            args.examples, args.data_dir or settings.data_dir, args.host, args.port or settings.port, kafka=args.kafka
        )
    except (manifests.ManifestError, ModelServerError) as error:
        print(f"aiplane dev: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from aiplane import demo

    return demo.run(args.examples, args.port)


def _client(args: argparse.Namespace) -> Client:
    return Client.from_env(args.url, args.api_key)


def _cmd_submit(args: argparse.Namespace) -> int:
    task_input = json.loads(Path(args.input[1:]).read_text() if args.input.startswith("@") else args.input)
    client = _client(args)
    print(dumps(client.submit(args.workflow, task_input, wait=args.wait, key=args.idempotency_key, region=args.region)))
    return 0


def _cmd_get(args: argparse.Namespace) -> int:
    client = _client(args)
    result = client.trace(args.task) if args.trace else client.events(args.task) if args.events else None
    print(dumps(result if result is not None else client.get(args.task)))
    return 0


def _cmd_approvals(args: argparse.Namespace) -> int:
    print(dumps(_client(args).approvals(args.state)))
    return 0


def _cmd_decide(args: argparse.Namespace) -> int:
    client = _client(args)
    decide = client.approve if args.command == "approve" else client.reject
    print(dumps(decide(args.approval, args.reason)))
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    print(dumps(_client(args).replay(args.task)))
    return 0


def _cmd_detokenize(args: argparse.Namespace) -> int:
    if (args.task is None) == (args.workflow is None):
        print("aiplane detokenize: give a task id, or --workflow with --value", file=sys.stderr)
        return 2
    if args.workflow is not None and args.value is None:
        print("aiplane detokenize: --workflow needs --value (JSON, @file.json, or - for stdin)", file=sys.stderr)
        return 2
    value = None
    if args.value is not None:
        text = sys.stdin.read() if args.value == "-" else args.value
        value = json.loads(Path(text[1:]).read_text() if text.startswith("@") else text)
    opened = _client(args).detokenize(args.reason, task_id=args.task, workflow=args.workflow, value=value)
    print(dumps(opened))
    return 0


def _detokenize_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("task", nargs="?", default=None, help="open everything the store keeps of this task")
    command.add_argument("--workflow", default=None, help="the workflow whose Policies masked --value")
    command.add_argument("--value", default=None, help="JSON holding tokens, @file.json, or - for stdin")
    command.add_argument("--reason", required=True, help="why (a case or ticket), kept in the audit record")
    command.set_defaults(func=_cmd_detokenize)


def _cmd_audit(args: argparse.Namespace) -> int:
    """Verify or export the audit log straight from the engine's database (read-only), or verify an export."""
    import sqlalchemy as sa

    from engine.store.audit import AuditLog
    from engine.store.database import Database

    try:
        anchors = [parse_anchor(text) for text in args.anchor]
    except ValueError as error:
        print(f"aiplane audit: {error}", file=sys.stderr)
        return 2
    if args.file is not None:
        if args.action != "verify":
            print("aiplane audit: --file is for verify (an export is already a file)", file=sys.stderr)
            return 2
        with args.file.open() as lines:
            records = [Record.from_json(json.loads(line)) for line in lines if line.strip()]
        # An export has no head row: its own last record stands in, so only the anchors catch a cut-off tail. An
        # export of a pruned log starts after its base, which a prune record in it must name.
        first, last = (records[0], records[-1]) if records else (None, None)
        base = Head(first.seq - 1, first.prev_hash) if first is not None and first.seq > 1 else None
        head = None if last is None else Head(last.seq, last.hash)
        result: Verification = verify(records, head, base=base, anchors=anchors)
        return _report(result, args.metrics_file, args.push_to)
    url = args.database or os.environ.get("AIPLANE_DATABASE_URL")
    if url is None:
        url = f"sqlite:///{(args.data_dir or Settings.from_env().data_dir) / 'engine.db'}"
    db = Database(url, pool_size=1)
    try:
        log = AuditLog(db)
        if args.action == "export":
            if args.output is None:
                count = log.export(sys.stdout, after_seq=args.after)
            else:
                with args.output.open("w") as out:
                    count = log.export(out, after_seq=args.after)
            print(f"exported {count} audit records", file=sys.stderr)
            return 0
        result = log.verify(anchors=anchors)
    except sa.exc.SQLAlchemyError as error:
        print(f"aiplane audit: cannot read the audit log at {db.url!r}: {error.__class__.__name__}", file=sys.stderr)
        return 2
    finally:
        db.dispose()
    return _report(result, args.metrics_file, args.push_to)


def audit_metrics(result: Verification) -> CollectorRegistry:
    """The verdict as Prometheus gauges, in a registry of their own (the process's default one is not the verdict)."""
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    gauges = (
        ("aiplane_policy_audit_verify_status", "1 when the last verification found the audit log intact", result.ok),
        ("aiplane_policy_audit_records", "Records the last verification read", result.records),
        ("aiplane_policy_audit_problems", "Problems the last verification found", len(result.problems)),
    )
    for name, help_text, value in gauges:
        Gauge(name, help_text, registry=registry).set(float(value))
    Gauge("aiplane_policy_audit_verify_timestamp_seconds", "When it ran", registry=registry).set_to_current_time()
    return registry


def _write_metrics(result: Verification, path: Path) -> None:
    """The verdict as a Prometheus text file (node-exporter's textfile collector), for a verify CronJob to alert on."""
    from prometheus_client import write_to_textfile

    write_to_textfile(str(path), audit_metrics(result))


#: The Pushgateway job a scheduled verify pushes its verdict under (the chart's CronJob).
AUDIT_PUSH_JOB = "aiplane-audit-verify"


def _report(result: Verification, metrics_file: Path | None = None, push_to: str | None = None) -> int:
    if metrics_file is not None:
        _write_metrics(result, metrics_file)
    if push_to:
        from prometheus_client import push_to_gateway

        try:
            push_to_gateway(push_to, job=AUDIT_PUSH_JOB, registry=audit_metrics(result), timeout=30)
        except OSError as error:
            # The verdict is still printed and still decides the exit code; the stale-verify alert notices.
            print(f"aiplane audit: cannot push the verdict to {push_to}: {error}", file=sys.stderr)
    for problem in result.problems:
        print(f"TAMPERED {problem}")
    last = f"; head {result.last.seq}:{result.last.hash}" if result.last is not None else ""
    verdict = "intact" if result.ok else f"{len(result.problems)} problem(s)"
    print(f"audit log {verdict}: {result.records} records{last}")
    return 0 if result.ok else 1


def _add_audit(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = sub.add_parser("audit", help="verify or export the hash-chained audit log")
    audit.add_argument("action", choices=["verify", "export"], help="verify: exit 1 and name every tampered record")
    audit.add_argument("--database", default=None, help="engine database URL (AIPLANE_DATABASE_URL)")
    audit.add_argument("--data-dir", type=Path, default=None, help="the dev data dir, when no URL is given")
    audit.add_argument("--after", type=int, default=0, help="export: only records after this seq")
    audit.add_argument("--output", "-o", type=Path, default=None, help="export: write here instead of stdout")
    audit.add_argument("--file", type=Path, default=None, help="verify: check this export instead of a database")
    audit.add_argument(
        "--metrics-file",
        type=Path,
        default=None,
        help="verify: also write the verdict as Prometheus metrics to this file (textfile collector)",
    )
    audit.add_argument(
        "--push-to",
        default=None,
        metavar="URL",
        help="verify: also push the verdict to this Prometheus Pushgateway (a scheduled verify's, e.g. the chart's)",
    )
    audit.add_argument(
        "--anchor",
        action="append",
        default=[],
        metavar="SEQ:HASH",
        help="verify: a head printed by an earlier verify, kept outside the database; the log must still hold it",
    )
    audit.set_defaults(func=_cmd_audit)


def _add_component_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser], *, kafka_source: bool) -> None:
    """``gateway``, ``worker``, ``operator`` and ``kafka-source``: what the chart's pods run."""
    operator = sub.add_parser("operator", help="run the operators against the current cluster (KUBECONFIG)")
    operator.add_argument(
        "--peering-lifetime",
        type=int,
        default=60,
        help="seconds a replica's keep-alive lasts: how long a standby waits before taking over from a dead leader",
    )
    operator.add_argument("--liveness", default=None, help="serve a liveness probe, e.g. http://0.0.0.0:8080/healthz")
    operator.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port")
    operator.add_argument("--metrics-host", default="0.0.0.0", help="address of /metrics")
    operator.set_defaults(func=_cmd_operator)

    cluster_help = (
        "follow this namespace: register its valid Workflows, route by its Models, use its Connectors and Secrets, "
        "enforce its Policies (default: AIPLANE_NAMESPACE; --models-from-cluster is its former name)"
    )
    store_help = "the store's URL, e.g. postgresql+psycopg://... (default: AIPLANE_DATABASE_URL)"
    gateway = sub.add_parser("gateway", help="run the gateway against a shared store (a chart pod)")
    gateway.add_argument("--db", default=None, help=store_help)
    gateway.add_argument("--host", default="0.0.0.0", help="address to listen on")
    gateway.add_argument("--port", type=int, default=None, help="port (default 8080, or AIPLANE_PORT)")
    gateway.add_argument(
        "--public-base-url",
        default=os.environ.get("AIPLANE_PUBLIC_BASE_URL", ""),
        help="prefix of Location headers (AIPLANE_PUBLIC_BASE_URL)",
    )
    gateway.add_argument(
        "--idempotency-ttl",
        type=_positive_duration,
        default=None,
        help="how long an Idempotency-Key and its first response are kept, e.g. 24h, 90m or 7d "
        "(default: AIPLANE_IDEMPOTENCY_TTL, else 24h)",
    )
    gateway.add_argument(
        "--from-cluster", "--models-from-cluster", dest="from_cluster", metavar="NAMESPACE", help=cluster_help
    )
    gateway.set_defaults(func=_cmd_component)

    worker = sub.add_parser("worker", help="run an engine worker against a shared store (a chart pod)")
    worker.add_argument("--db", default=None, help=store_help)
    worker.add_argument("--concurrency", type=int, default=4, help="steps run at once")
    worker.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port")
    worker.add_argument("--metrics-host", default="0.0.0.0", help="address of /metrics")
    worker.add_argument(
        "--from-cluster", "--models-from-cluster", dest="from_cluster", metavar="NAMESPACE", help=cluster_help
    )
    worker.set_defaults(func=_cmd_component)
    _add_kafka_source(sub, kafka_source)


#: ``aiplane kafka-source``'s line in ``aiplane --help`` (aiplane.kafkasource says the same).
KAFKA_SOURCE_HELP = "run a kafkaSource Connector's consumer (a consumer pod)"


def _add_kafka_source(sub: argparse._SubParsersAction[argparse.ArgumentParser], full: bool) -> None:
    if full:
        from aiplane import kafkasource

        kafkasource.add_parser(sub)
    else:
        sub.add_parser("kafka-source", help=KAFKA_SOURCE_HELP)


def _submit_arguments(submit: argparse.ArgumentParser) -> None:
    submit.add_argument("workflow")
    submit.add_argument("input", help="the input as JSON, or @file.json")
    submit.add_argument("--wait", type=float, default=None, help="wait up to this many seconds for the result")
    submit.add_argument("--idempotency-key", default=None, help="reuse to make a retried submission safe")
    submit.add_argument(
        "--region", default=None, help="keep the task's data in this region (within its workflow's residency regions)"
    )
    submit.set_defaults(func=_cmd_submit)


def build_parser(*, kafka_source: bool = True) -> argparse.ArgumentParser:
    """The whole command line. ``kafka_source=False`` lists ``kafka-source`` without its arguments: they come with
    the consumer's modules (the engine, the Kafka client), seconds of imports every other command does without."""
    parser = argparse.ArgumentParser(prog="aiplane", description="A Kubernetes-native control plane for AI automation.")
    parser.add_argument("--version", action="version", version=f"aiplane {aiplane.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="run the embedded default on this machine")
    dev.add_argument("--examples", type=Path, default=EXAMPLE_DIR, help="manifests to load")
    dev.add_argument("--port", type=int, default=None, help="gateway port (default 8080, or AIPLANE_PORT)")
    dev.add_argument("--host", default="127.0.0.1", help="address the gateway listens on")
    dev.add_argument("--data-dir", type=Path, default=None, help="where SQLite, blobs and logs live (.run/dev)")
    dev.add_argument(
        "--kafka",
        metavar="HOST:PORT",
        default=None,
        help="use this Kafka broker as the bus and sink, and run the kafkaSource Connectors in-process",
    )
    dev.set_defaults(func=_cmd_dev)

    demo = sub.add_parser("demo", help="run the claims-triage case end to end on the embedded default")
    demo.add_argument("--examples", type=Path, default=EXAMPLE_DIR, help="manifests to load")
    demo.add_argument("--port", type=int, default=None, help="gateway port (default: a free one)")
    demo.set_defaults(func=_cmd_demo)

    def client_parser(name: str, help: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help)
        command.add_argument("--url", default=None, help=f"gateway URL (AIPLANE_URL, default {DEFAULT_URL})")
        command.add_argument("--api-key", default=None, help="API key (AIPLANE_API_KEY)")
        return command

    _submit_arguments(client_parser("submit", "submit a task to a workflow"))

    get = client_parser("get", "show a task (or its --trace or --events)")
    get.add_argument("task")
    shown = get.add_mutually_exclusive_group()
    shown.add_argument("--trace", action="store_true")
    shown.add_argument("--events", action="store_true")
    get.set_defaults(func=_cmd_get)

    approvals = client_parser("approvals", "list approvals")
    approvals.add_argument("--state", default="pending", choices=["pending", "approved", "rejected", "expired"])
    approvals.set_defaults(func=_cmd_approvals)

    for decision in ("approve", "reject"):
        decide = client_parser(decision, f"{decision} an approval")
        decide.add_argument("approval")
        decide.add_argument("--reason", required=decision == "reject", default="")
        decide.set_defaults(func=_cmd_decide)

    replay = client_parser("replay", "resume a dead-lettered task from its failed step")
    replay.add_argument("task")
    replay.set_defaults(func=_cmd_replay)

    _detokenize_arguments(
        client_parser(
            "detokenize", "open tokenized personal data (a Policy's unmaskRoles only; every request is audited)"
        )
    )

    _add_component_parsers(sub, kafka_source=kafka_source)

    sub.add_parser("crds", help="print the CustomResourceDefinitions").set_defaults(func=_cmd_crds)

    _add_audit(sub)
    dataflow.add_parser(sub)
    retention_cli.add_parsers(sub)

    validate = sub.add_parser("validate", help="check manifests against the aiplane.io schemas")
    validate.add_argument("paths", type=Path, nargs="+", help="YAML files or folders")
    validate.set_defaults(func=_cmd_validate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(kafka_source=argv[:1] == ["kafka-source"]).parse_args(argv)
    try:
        code: int = args.func(args)
    except GatewayError as error:
        print(f"aiplane: {error}", file=sys.stderr)
        return 1
    except (json.JSONDecodeError, OSError) as error:
        print(f"aiplane: {error}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
