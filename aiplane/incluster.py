"""What ``aiplane gateway`` and ``aiplane worker`` read from their namespace in a cluster (``--from-cluster
NAMESPACE``): the Workflows the operator found valid (registered into the store), the Models' endpoints and
regions, the Connectors and the Secrets they name, and the Policies, each kept current by a watch.

The Policies reach the same enforcement points as in ``aiplane dev``, but follow the cluster as it changes: PII
masking (inputs, step outputs, error texts), payload logging, residency and tenant access, the approval rules'
gate, the agentActions rules of agent steps, the workers' retention purge (and after it the Kafka topics'
retention, ``aiplane.kafka_retention``), and at the gateway the rate limits, separation of duties and the roles
``access.roles`` binds (``api.auth.follow_policies``). A Policy selects workflows by namespace and labels, which
come from the Workflow watch. Every hook is installed even while no Policy asks for it, since one may be applied
later; an ungoverned workflow costs a cached lookup per call.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiplane.components import KAFKA_BOOTSTRAP_ENV
from aiplane.kafka_retention import KafkaRetention
from crds.workflow import WorkflowSpec
from engine.store.purge import Retention
from policies.effective import EffectiveAgentRule, EffectiveApproval, Target, applicable
from policies.masking import WorkflowMasking, compile_policy
from policies.model_calls import ModelPolicies
from policies.payloads import PayloadLog
from policies.quota import Quotas
from policies.residency import Residency
from policies.retention import audit_period, model_retention_for, retention_for
from policies.sources import PolicySet
from policies.tokens import MaskingKeys

if TYPE_CHECKING:
    import kubernetes

    from aiplane.kubeconnectors import KubeConnectorResolver, KubeSecretResolver
    from aiplane.kubemodels import KubeModelResolver
    from aiplane.kubeworkflows import Registry
    from crds.policy import Policy

log = logging.getLogger(__name__)


class WorkflowTargets(Mapping[str, Target]):
    """Workflow name -> what Policies select it by (its namespace and labels), as the Workflow watch last saw it.
    A workflow this process has not seen is ungoverned here."""

    def __init__(self, namespace: str, labels: Mapping[str, Mapping[str, str]]) -> None:
        self.namespace = namespace
        self.labels = labels

    def __getitem__(self, name: str) -> Target:
        return Target("Workflow", name, self.namespace, dict(self.labels[name]))

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.labels))

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class ClusterSources:
    """The watches of one namespace, started; ``engine_options`` are the Engine's keyword arguments."""

    namespace: str
    client: kubernetes.client.ApiClient
    models: KubeModelResolver
    connectors: KubeConnectorResolver
    secrets: KubeSecretResolver
    policies: PolicySet
    #: Filled by the Workflow watch that ``registering`` starts.
    labels: dict[str, dict[str, str]] = field(default_factory=dict)
    specs: dict[str, WorkflowSpec] = field(default_factory=dict)

    @property
    def workflows(self) -> WorkflowTargets:
        return WorkflowTargets(self.namespace, self.labels)

    def _effective(self, workflow: str) -> Any:
        target = self.workflows.get(workflow)
        return self.policies.effective(target) if target is not None else None

    def model_target(self, model: str) -> Target:
        """A Model as Policies select it (the Model watch's namespace and labels)."""
        return self.models.target(model)

    def engine_options(self) -> dict[str, Any]:
        """Resolvers and policy hooks for ``Engine(...)``. Raises ``MaskingKeyError`` for a malformed PII key."""

        def pii_for(workflow: str) -> Any:
            found = self._effective(workflow)
            return found.pii if found is not None else None

        def rate_for(workflow: str) -> float | None:
            found = self._effective(workflow)
            return found.payload_sample_rate if found is not None else None

        def rules_for(workflow: str) -> tuple[EffectiveApproval, ...]:
            found = self._effective(workflow)
            return found.approvals if found is not None else ()

        def agent_rules_for(workflow: str) -> tuple[EffectiveAgentRule, ...]:
            found = self._effective(workflow)
            return found.agent_actions if found is not None else ()

        def tenants(workflow: str) -> frozenset[str] | None:
            found = self._effective(workflow)
            return found.tenants if found is not None else None

        def pins(_tenant: str, workflow: str) -> frozenset[str] | None:
            found = self._effective(workflow)
            return found.regions if found is not None else None

        def governing(workflow: str) -> list[Any]:
            target = self.workflows.get(workflow)
            return applicable(self.policies.policies(), target) if target is not None else []

        # The key from AIPLANE_PII_KEY(_FILE), shared by every replica; without one, hash and tokenize policies
        # fall back to redaction (policies.masking fails closed) rather than each pod making a key of its own.
        keys = MaskingKeys.from_env()
        periods = retention_for(self.policies.effective, self.workflows)
        model_policies = ModelPolicies(self.policies, self.model_target, keys)
        self.policies.on_change(_warm_up_pii)
        return {
            "model_resolver": self.models,
            "connector_resolver": self.connectors,
            "secret_resolver": self.secrets,
            "pii": WorkflowMasking(pii_for, keys),
            # Policies that select a Model sample and mask its calls' payloads too (by the Model watch's labels).
            "payloads": PayloadLog(
                rate_for, model_rate_for=model_policies.sample_rate, model_masking=model_policies.masking
            ),
            "approval_rules": rules_for,
            "agent_rules": agent_rules_for,
            # A regional install (the chart's `region`) keeps its tasks' data in its region (policies.residency).
            "residency": Residency(pins=pins, model_regions=self.models.regions, home=region_of_install()),
            # Policies that select a Model refuse its calls by tenant or residency, as the gateway's predictions.
            "model_policies": model_policies,
            "tenants": tenants,
            "governing": governing,  # names the Policy versions behind a denial in its audit record
            "quota": Quotas(self.policies).max_in_flight,
            # The workers' periodic purge; periods asked per workflow at each purge, so a Policy change applies to
            # the next one, and a workflow this process has not seen is not purged by a namespace's Policy.
            # After each purge, Kafka topics' retention.ms follows too (aiplane.kafka_retention): the events topic
            # (with AIPLANE_KAFKA_BOOTSTRAP_SERVERS) and the topics of the kafkaSink Connectors the workflows use.
            "retention": Retention(
                periods,
                audit=lambda: audit_period(self.policies.policies()),
                after=KafkaRetention(
                    policies=self.policies.policies,
                    periods=periods,
                    workflows=lambda: dict(self.specs),
                    connectors=self.connectors.connector,
                    secrets=self.secrets,
                    events=os.environ.get(KAFKA_BOOTSTRAP_ENV, "").strip() or None,
                ),
                # Predictions' payload logs (no workflow) by the periods of the Policies selecting their Model.
                models=model_retention_for(self.policies.effective, self.model_target),
            ),
        }

    @contextlib.contextmanager
    def registering(self, registry: Registry) -> Iterator[None]:
        """Register the namespace's valid Workflows into ``registry`` (the engine) until the block ends."""
        from aiplane.kubeworkflows import KubeWorkflowSync

        sync = KubeWorkflowSync(self.client, self.namespace, registry)
        sync.labels = self.labels
        sync.specs = self.specs
        sync.start()
        try:
            yield
        finally:
            stop_soon([sync.stop])


#: The region a release serves (the chart's `region`, on every pod); unset: not a regional install.
REGION_ENV = "AIPLANE_REGION"


def region_of_install() -> str | None:
    return os.environ.get(REGION_ENV) or None


def _warm_up_pii(policies: tuple[Policy, ...]) -> None:
    """Build the PII detector of every Policy that masks now (seconds, once per entity set) rather than on the
    first task it governs."""
    for policy in policies:
        if policy.spec.pii is not None:
            compile_policy(policy.spec.pii).detector.warm_up()


@contextlib.contextmanager
def cluster_sources(namespace: str | None) -> Iterator[ClusterSources | None]:
    """The watches of ``namespace`` through the in-cluster config (or KUBECONFIG), stopped when the block ends;
    None without a namespace. Raises ``TimeoutError`` when a kind cannot be listed (RBAC, no apiserver)."""
    if namespace is None:
        yield None
        return
    from aiplane.kubeconnectors import KubeConnectorResolver, KubeSecretResolver
    from aiplane.kubemodels import KubeModelResolver
    from operators.model.kube import new_api_client
    from policies.sources_kube import KubePolicyWatch

    # One connection per watch (four) and a few for Secret reads.
    client = new_api_client(pool_size=8)
    stoppers: list[Callable[[], None]] = []
    try:
        policies = KubePolicyWatch(client, namespace=namespace)
        stoppers.append(policies.stop)
        policies.start()
        models = KubeModelResolver(client, namespace)
        stoppers.append(models.stop)
        models.start()
        connectors = KubeConnectorResolver(client, namespace)
        stoppers.append(connectors.stop)
        connectors.start()
        log.info("following the cluster", extra={"namespace": namespace})
        yield ClusterSources(
            namespace, client, models, connectors, KubeSecretResolver(client, namespace), policies.policies
        )
    finally:
        stop_soon(stoppers)


def stop_soon(stoppers: list[Callable[[], None]], wait_s: float = 2.0) -> None:
    """Stop watches together, waiting at most ``wait_s``: a watch notices its stop only at its next event or
    timeout (up to a minute), and a process on its way out (SIGTERM) should not wait for that; the watch threads
    are daemons and end with it, or on their own soon after."""
    threads = [threading.Thread(target=stop, daemon=True) for stop in stoppers]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + wait_s
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0))
