"""`aiplane dev`: the embedded default, on one machine with no cluster.

One process tree: the gateway (uvicorn) and the engine's workers in this process, SQLite under the data dir, the
in-process bus and sink, and one `bentoml serve` child per Model of the loaded manifests (and per http Connector that
names a stand-in service for its system). With `--kafka HOST:PORT`, that broker is the bus and the sink, and the
manifests' kafkaSource Connectors run in this process (``connectors.kafka.embedded``), so the case works event-first.
The same engine and gateway code runs on Kubernetes, where the operators resolve models and connectors from the
cluster instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from aiplane import manifests
from aiplane.modelserver import ModelServer, served_by, stand_in, working_dir
from aiplane.policyfiles import PolicyFileWatch
from aiplane.retention_cli import engine_retention, resource_targets, workflow_targets
from api.app import create_app
from api.auth import create_api_key, follow_policies
from api.settings import GatewaySettings
from connectors.kafka.bus import DEFAULT_EVENTS_TOPIC
from connectors.kafka.embedded import EmbeddedKafka
from connectors.postgres import PostgresClient
from crds import Connector, Model, Policy, Resource, Workflow
from crds.base import Role
from engine import Engine, InMemorySink, Record, StaticConnectorResolver, StaticModelResolver
from policies.access_oidc import OIDCConfig, OIDCVerifier
from policies.effective import Target, applicable
from policies.masking import WorkflowMasking, compile_policy
from policies.model_calls import ModelPolicies, default_target
from policies.payloads import PayloadLog
from policies.quota import Quotas
from policies.ratelimit import SharedRateLimiter
from policies.residency import Residency
from policies.sources import PolicySet
from policies.tokens import MaskingKeys

DEV_TENANT = "dev"
DEV_PRINCIPAL = "dev"
ALL_ROLES: tuple[Role, ...] = ("submitter", "approver", "auditor", "admin")
log = logging.getLogger(__name__)


@dataclass
class DevStack:
    """What `aiplane dev` runs, built from the manifests; ``start`` brings it up and ``stop`` takes it down."""

    manifests_dir: Path
    data_dir: Path
    resources: Sequence[Resource]
    servers: list[ModelServer] = field(default_factory=list)
    sink: InMemorySink = field(default_factory=InMemorySink)
    engine: Engine | None = None
    #: A Kafka broker (host:port) to use as the bus and sink, with the kafkaSource Connectors run in-process.
    kafka: str | None = None
    embedded_kafka: EmbeddedKafka | None = None
    #: The manifests' Policies, for the gateway and engine to enforce (in a cluster: policies.sources_kube).
    policies: PolicySet = field(default_factory=PolicySet)
    #: Runs the postgres Connectors' statements (a pool per Connector).
    postgres: PostgresClient = field(default_factory=PostgresClient)
    #: Re-reads the manifests' Policies when a file changes (``aiplane.policyfiles``), from ``start`` to ``stop``.
    policy_watch: PolicyFileWatch | None = None
    _model_targets: dict[str, Target] | None = field(default=None, repr=False)

    def _of(self, kind: type[Resource]) -> list[Any]:
        return [resource for resource in self.resources if isinstance(resource, kind)]

    def start(self) -> Engine:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.policies.replace(self._of(Policy))
        for model in self._of(Model):
            name = model.metadata["name"]
            server = ModelServer(
                name=name,
                bento=model.spec.bento,
                working_dir=working_dir(model, self.manifests_dir),
                log_path=self.data_dir / "logs" / f"model-{name}.log",
            )
            self.servers.append(server)
        endpoints = {
            server.name: [{"version": model.spec.version, "url": server.url, "weight": 100}]
            for server, model in zip(self.servers, self._of(Model), strict=True)
        }
        connectors = {connector.metadata["name"]: connector.spec for connector in self._of(Connector)}
        for connector in self._of(Connector):
            stand_in_server = stand_in(connector, self.manifests_dir, self.data_dir / "logs")
            if stand_in_server is not None:
                self.servers.append(stand_in_server)
                name = connector.metadata["name"]
                connectors[name] = served_by(connectors[name], stand_in_server.url)
        # All at once, then wait for each: start-up is mostly imports and loading, seconds per server.
        for server in self.servers:
            server.spawn()
        for server in self.servers:
            server.wait_ready()
        self.sink.subscribe(_log_record)
        if self.kafka is not None:
            self.embedded_kafka = EmbeddedKafka(self.kafka, connectors)
            connectors = self.embedded_kafka.connectors
        targets = self.workflow_targets()
        self.engine = Engine(
            f"sqlite:///{self.data_dir / 'engine.db'}",
            data_dir=self.data_dir,
            model_resolver=StaticModelResolver(endpoints),
            connector_resolver=StaticConnectorResolver(connectors),
            sink=self.embedded_kafka.sink if self.embedded_kafka is not None else self.sink,
            bus=self.embedded_kafka.bus if self.embedded_kafka is not None else None,
            postgres=self.postgres,
            # On one machine the callback receiver is usually a local process too.
            callbacks_to_private_networks=True,
            pii=pii_masking(self.policies, self._of(Workflow), self.data_dir),
            approval_rules=approval_rules(self.policies, self._of(Workflow)),
            agent_rules=agent_rules(self.policies, self._of(Workflow)),
            tenants=tenant_access(self.policies, self._of(Workflow)),
            quota=Quotas(self.policies).max_in_flight,
            # Workflows are read once, at start: their targets too, rather than on every batch's look-up.
            governing=lambda workflow: applicable(
                self.policies.policies(), targets.get(workflow) or Target("Workflow", workflow)
            ),
            # With --kafka, each purge also sets the events and sink topics' retention (aiplane.kafka_retention).
            retention=engine_retention(
                self.policies,
                self._of(Workflow),
                kafka=self.kafka,
                connectors=connectors,
                always=True,
                models=self.model_target,
            ),
            payloads=payload_log(self.policies, self._of(Workflow), self.model_target),
            # Policies that select a Model refuse its calls by tenant or residency, as the gateway's predictions.
            model_policies=ModelPolicies(self.policies, self.model_target, MaskingKeys.from_env()),
            residency=Residency.from_policy_set(
                self.policies, targets, {m.metadata["name"]: m.spec.region for m in self._of(Model)}
            ),
        )
        for workflow in self._of(Workflow):
            version = self.engine.register_workflow(workflow.metadata["name"], workflow.spec)
            log.info("workflow registered", extra={"workflow": workflow.metadata["name"], "version": version})
        if self.embedded_kafka is not None:
            # After the workflows: a source's first batch would otherwise stall on a workflow not yet registered.
            # Their own token buckets, following the Policies' rate limits as the gateway's do.
            self.embedded_kafka.start_sources(self.engine, DEV_TENANT, rate=SharedRateLimiter(self.policies))
        self.policy_watch = PolicyFileWatch([self.manifests_dir], self.policies).start()
        return self.engine

    def gateway(self, oidc: OIDCVerifier | None = None) -> FastAPI:
        """The gateway app of the started stack, following the manifests' Policies (rate limits, role bindings,
        predictions). Not separation of duties: dev's own key holds every role, and the demo approves what it
        submitted."""
        assert self.engine is not None, "start the stack first"
        app = create_app(self.engine, GatewaySettings.from_env(), oidc=oidc)
        follow_policies(
            app.state.gateway,
            self.policies,
            self.workflow_targets(),
            separation_of_duties=False,
            models=self.model_target,
        )
        return app

    def workflow_targets(self) -> dict[str, Target]:
        """Each workflow as Policies select it (namespace and labels)."""
        return workflow_targets(self._of(Workflow))

    def model_target(self, name: str) -> Target:
        """A Model as Policies select it (namespace and labels of its manifest); asked on every prediction."""
        if self._model_targets is None:
            self._model_targets = resource_targets("Model", self._of(Model))
        return self._model_targets.get(name) or default_target(name)

    def stop(self) -> None:
        if self.policy_watch is not None:
            self.policy_watch.stop()
        if self.embedded_kafka is not None:
            self.embedded_kafka.close()
        if self.engine is not None:
            self.engine.close()
        self.postgres.close()
        for server in self.servers:
            server.stop()


def pii_masking(policies: PolicySet, workflows: Sequence[Workflow], data_dir: Path) -> WorkflowMasking:
    """The engine's PII masking by the workflows' Policies, asked per call: a ``pii`` part that a Policy file gains
    while ``aiplane dev`` runs masks the next task (a workflow no such Policy selects is a dictionary look-up).

    The key: ``AIPLANE_PII_KEY``/``AIPLANE_PII_KEY_FILE``, else one made once under the data directory (``pii.key``,
    owner-only), so tokens made by one ``aiplane dev`` still open after a restart.
    """
    keys = MaskingKeys.from_env()
    if keys is None:
        path = data_dir / "pii.key"
        if not path.exists():
            path.touch(mode=0o600)
            path.write_bytes(os.urandom(32))
        keys = MaskingKeys(path.read_bytes())
    targets = workflow_targets(workflows)

    def policy_for(workflow: str) -> Any:
        return policies.effective(targets.get(workflow) or Target("Workflow", workflow)).pii

    def warm_up(_: object) -> None:  # load presidio now rather than on the first task (seconds), and on edits
        for target in targets.values():
            pii = policies.effective(target).pii
            if pii is not None:
                compile_policy(pii).detector.warm_up()

    policies.on_change(warm_up)
    return WorkflowMasking(policy_for, keys)


def payload_log(
    policies: PolicySet, workflows: Sequence[Workflow], models: Callable[[str], Target] = default_target
) -> PayloadLog:
    """Sampled step payload logs at the rate of each workflow's Policies, asked per task (none: not sampled); a
    Policy that selects a Model (``models`` gives its target) samples and masks the model steps calling it too."""
    targets = workflow_targets(workflows)

    def rate_for(workflow: str) -> float | None:
        return policies.effective(targets.get(workflow) or Target("Workflow", workflow)).payload_sample_rate

    model_policies = ModelPolicies(policies, models, MaskingKeys.from_env())
    return PayloadLog(rate_for, model_rate_for=model_policies.sample_rate, model_masking=model_policies.masking)


def approval_rules(policies: PolicySet, workflows: Sequence[Workflow]) -> Callable[[str], Any]:
    """Each workflow's Policy approval rules for the engine's gate, asked per task (none: no gate)."""
    targets = workflow_targets(workflows)

    def rules_for(workflow: str) -> Any:
        return policies.effective(targets.get(workflow) or Target("Workflow", workflow)).approvals

    return rules_for


def agent_rules(policies: PolicySet, workflows: Sequence[Workflow]) -> Callable[[str], Any]:
    """Each workflow's Policy agentActions rules for its agent steps, asked per proposal (none: none checked)."""
    targets = workflow_targets(workflows)

    def rules_for(workflow: str) -> Any:
        return policies.effective(targets.get(workflow) or Target("Workflow", workflow)).agent_actions

    return rules_for


def tenant_access(policies: PolicySet, workflows: Sequence[Workflow]) -> Callable[[str], frozenset[str] | None]:
    """The tenants each workflow's Policies allow (None: any), for the engine's intake."""
    targets = workflow_targets(workflows)

    def tenants_for(workflow: str) -> frozenset[str] | None:
        return policies.effective(targets.get(workflow) or Target("Workflow", workflow)).tenants

    return tenants_for


def _log_record(record: Record) -> None:
    log.info("sink record", extra={"topic": record.topic, "key": record.key, "value": record.value})


def _interrupt(signum: int, _: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def running(manifests_dir: Path, data_dir: Path, kafka: str | None = None) -> Iterator[DevStack]:
    """The stack, stopped on the way out: a SIGTERM during start-up must not leave model servers behind."""
    stack = DevStack(
        manifests_dir=manifests_dir, data_dir=data_dir, resources=manifests.load([manifests_dir]), kafka=kafka
    )
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        stack.start()
        yield stack
    finally:
        signal.signal(signal.SIGTERM, previous)
        stack.stop()


def serve(manifests_dir: Path, data_dir: Path, host: str, port: int, kafka: str | None = None) -> None:
    """Run until interrupted, printing the URL, an API key and a sample request first."""
    with running(manifests_dir, data_dir, kafka) as stack:
        assert stack.engine is not None
        engine = stack.engine
        key = create_api_key(engine, DEV_TENANT, DEV_PRINCIPAL, ALL_ROLES)
        url = f"http://{host}:{port}"
        workflows = [w.metadata["name"] for w in stack.resources if isinstance(w, Workflow)]
        print(f"aiplane dev: gateway on {url} (data in {data_dir})", flush=True)
        print(f"API key: {key}", flush=True)
        if kafka is not None:
            print(f"Kafka: events on {DEFAULT_EVENTS_TOPIC} at {kafka}", flush=True)
        if workflows:
            print(
                "Try:\n"
                f"  curl -s -X POST '{url}/v1/tasks?mode=sync' -H 'Authorization: Bearer {key}' "
                f'-H \'Content-Type: application/json\' -d \'{{"workflow": {{"name": "{workflows[0]}"}}, '
                # The quick start's small claim, which the claims model reads confidently enough for the rules to
                # decide it: the sample answers with the finished task, not one waiting for a human.
                '"input": {"claimId": "C-1", "document": "Motor claim. Policy PL-12345678. Incident date: 2026-11-02. '
                "Rear-ended at a red light; bumper crushed. Amount claimed: $2,300.00.\"}}'",
                flush=True,
            )
        oidc = OIDCConfig.from_env(os.environ)  # AIPLANE_OIDC_*, as `aiplane gateway`: tokens besides the key
        app = stack.gateway(OIDCVerifier(oidc) if oidc is not None else None)
        with engine.worker():
            uvicorn.run(app, host=host, port=port, log_config=None, access_log=False)
