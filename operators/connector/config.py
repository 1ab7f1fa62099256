"""Settings of the Connector operator, from the environment (the chart sets them on the operator Deployment)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from crds.base import SecretKeyRef


@dataclass(frozen=True)
class Config:
    # Image of the consumer Deployments: aiplane itself (``python -m connectors.kafka source ...``).
    image: str = "aiplane/aiplane:0.1.0"
    # Secret (in the Connector's namespace) whose key holds the engine store's URL, which the consumers write
    # tasks into; a URL carries a password, so it never goes into the Deployment itself.
    store_secret: str = "aiplane-store"
    store_key: str = "url"
    # How often Kafka Connectors are looked at again (broker, topic, partitions, secrets), besides every change.
    recheck_s: float = 30.0
    # Longest wait for the broker when asking for a topic's partitions.
    broker_timeout_s: float = 5.0
    # A ServiceAccount (in the Connector's namespace) that may read the namespace's Policies, Workflows, Models
    # and Connectors, and get Secrets, as a worker's does: given one, consumers run ``aiplane kafka-source
    # --from-cluster`` under it and enforce the Policies on their tasks; without one, none (it would be refused).
    service_account: str | None = None
    # The Secret and key of the PII master key (the workers' AIPLANE_PII_KEY), for governed consumers: the tokens
    # they make must open with the same key everywhere.
    pii_secret: str | None = None
    pii_key: str = "key"
    # The port consumers serve Prometheus /metrics on (consumer lag, messages by outcome): their container's
    # `metrics` port, which a PodMonitor scrapes; None: no /metrics (only these pods set the connector metrics).
    metrics_port: int | None = None
    # Also put prometheus.io/* annotations on consumer pods, for a Prometheus without the Prometheus Operator (the
    # chart sets this when it makes no PodMonitor, as it annotates its own pods then).
    metrics_annotations: bool = False
    # The region of the release (the chart's `region`): governed consumers keep their tasks' data in it, as the
    # gateway and workers of that region do (policies.residency).
    region: str | None = None

    @property
    def consumer_pii_key(self) -> SecretKeyRef | None:
        """The PII key's Secret and key that governed consumers read from their Connector's namespace."""
        if self.service_account is None or self.pii_secret is None:
            return None
        return SecretKeyRef(name=self.pii_secret, key=self.pii_key)

    @classmethod
    def from_env(cls) -> Config:
        return cls(
            image=os.environ.get("AIPLANE_CONNECTOR_IMAGE", cls.image),
            store_secret=os.environ.get("AIPLANE_STORE_SECRET", cls.store_secret),
            store_key=os.environ.get("AIPLANE_STORE_SECRET_KEY", cls.store_key),
            recheck_s=float(os.environ.get("AIPLANE_CONNECTOR_RECHECK_S", cls.recheck_s)),
            broker_timeout_s=float(os.environ.get("AIPLANE_CONNECTOR_BROKER_TIMEOUT_S", cls.broker_timeout_s)),
            service_account=os.environ.get("AIPLANE_CONNECTOR_SERVICE_ACCOUNT") or None,
            pii_secret=os.environ.get("AIPLANE_PII_SECRET") or None,
            pii_key=os.environ.get("AIPLANE_PII_SECRET_KEY", cls.pii_key),
            metrics_port=int(port) if (port := os.environ.get("AIPLANE_CONNECTOR_METRICS_PORT")) else None,
            metrics_annotations=os.environ.get("AIPLANE_CONNECTOR_METRICS_ANNOTATIONS", "").lower() == "true",
            region=os.environ.get("AIPLANE_REGION") or None,
        )
