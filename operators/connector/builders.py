"""Pure builders: a Connector in, what it needs out: the secret keys it reads, the consumer count a topic allows,
and a kafkaSource's consumer Deployment (a plain dict, ready for server-side apply).

The Deployment carries no secret value: the store URL comes from a Secret ref as an environment variable, the SASL
credentials and CA as files of Secret volumes (``SECRETS_DIR/<secret>/<key>``), and the ``kafkaSource`` block
(which holds refs only) as JSON in another variable.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

from crds.base import SecretKeyRef
from crds.connector import Connector, KafkaAuth
from operators.connector.config import Config

GROUP, VERSION = "aiplane.io", "v1alpha1"
FIELD_MANAGER = "aiplane-operator"
LABEL_CONNECTOR = "aiplane.io/connector"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_COMPONENT = "app.kubernetes.io/component"
COMPONENT = "kafka-source"
# Selects every consumer Deployment of every Connector, for the operator's own watches.
CHILD_SELECTOR = {LABEL_MANAGED_BY: FIELD_MANAGER, LABEL_COMPONENT: COMPONENT}
CONTAINER = "source"
TENANT_ANNOTATION = "aiplane.io/tenant"
# Where a consumer finds the Secret keys its Connector names, one file per key: <dir>/<secret>/<key>.
SECRETS_DIR = "/var/run/secrets/aiplane"
# The image's user (Containerfile). A numeric uid lets the kubelet check runAsNonRoot.
UID = 10001
# Pod Security `restricted`, as the chart's own pods: a namespace that enforces it admits the consumers.
POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": UID,
    "runAsGroup": UID,
    "fsGroup": UID,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "privileged": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


@dataclass(frozen=True)
class Owner:
    name: str
    namespace: str
    uid: str

    def reference(self) -> dict[str, Any]:
        # controller + blockOwnerDeletion: the garbage collector deletes the Deployment with the Connector.
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Connector",
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def deployment_name(connector: str) -> str:
    return f"{connector}-source"


def secret_refs(connector: Connector, config: Config) -> list[tuple[str, SecretKeyRef]]:
    """(field, ref) for every Secret key the Connector needs, the store's for a kafkaSource included, and the PII
    key's for a governed one: its consumer pods read them from the Connector's namespace."""
    spec = connector.spec
    refs: list[tuple[str, SecretKeyRef]] = []
    kafka = spec.kafka_source or spec.kafka_sink
    if kafka is not None and kafka.auth is not None:
        block = "kafkaSource" if spec.kafka_source is not None else "kafkaSink"
        refs += [(f"spec.{block}.auth.{where}", ref) for where, ref in auth_refs(kafka.auth)]
    if spec.kafka_source is not None:
        store = SecretKeyRef(name=config.store_secret, key=config.store_key)
        refs.append(("the engine store's URL (operator setting AIPLANE_STORE_SECRET)", store))
        if config.consumer_pii_key is not None:
            refs.append(
                ("the PII key of governed consumers (operator setting AIPLANE_PII_SECRET)", config.consumer_pii_key)
            )
    if spec.http is not None:
        refs += [(f"spec.http.headers[{h.name}].valueFrom", h.value_from) for h in spec.http.headers if h.value_from]
    if spec.postgres is not None:
        refs.append(("spec.postgres.dsn", spec.postgres.dsn))
    return refs


# What a governed consumer's ServiceAccount must be allowed in its namespace (the chart's Role for it): the
# watches of ``aiplane kafka-source --from-cluster``. Nothing else, and no Secret.
CONSUMER_RULES = tuple(
    (resource, verb)
    for resource in ("workflows", "models", "connectors", "policies")
    for verb in ("get", "list", "watch")
)


def service_account(connector: Connector, config: Config) -> str | None:
    """The ServiceAccount the Connector's consumer pods run as (a governed kafkaSource), which must exist in its
    namespace for the pods to be created at all."""
    return config.service_account if connector.spec.kafka_source is not None else None


def consumers(asked: int, partitions: int) -> int:
    """A consumer group gives each partition to one member: members beyond the partitions would only idle."""
    return max(min(asked, partitions), 0)


def tenant(connector: Connector) -> str:
    """The tenant a source's tasks belong to: the ``aiplane.io/tenant`` annotation, else the namespace."""
    annotations = connector.metadata.get("annotations") or {}
    return str(annotations.get(TENANT_ANNOTATION) or connector.metadata["namespace"])


def labels(connector: str) -> dict[str, str]:
    return {LABEL_CONNECTOR: connector, **CHILD_SELECTOR, "app.kubernetes.io/name": connector}


def _secret_env(name: str, ref: SecretKeyRef) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def auth_refs(auth: KafkaAuth) -> list[tuple[str, SecretKeyRef]]:
    refs = [("username", auth.username), ("password", auth.password)]
    return refs + ([("ca", auth.ca)] if auth.ca is not None else [])


def _secret_volumes(refs: list[SecretKeyRef]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Volumes and mounts that put each Secret key at ``SECRETS_DIR/<secret>/<key>``, only the keys named."""
    keys: dict[str, list[str]] = {}
    for ref in refs:
        keys.setdefault(ref.name, [])
        if ref.key not in keys[ref.name]:
            keys[ref.name].append(ref.key)
    volumes, mounts = [], []
    for index, (secret, names) in enumerate(sorted(keys.items())):
        volume = f"secret-{index}"
        items = [{"key": key, "path": key} for key in names]
        volumes.append({"name": volume, "secret": {"secretName": secret, "items": items}})
        mounts.append({"name": volume, "mountPath": f"{SECRETS_DIR}/{secret}", "readOnly": True})
    return volumes, mounts


def deployment(connector: Connector, owner: Owner, replicas: int, config: Config) -> dict[str, Any]:
    """The consumer Deployment of a kafkaSource Connector, ``replicas`` consumers (see ``consumers``)."""
    source = connector.spec.kafka_source
    if source is None:
        raise ValueError(f"Connector {owner.name} is of type {connector.spec.type}, not kafkaSource")
    block = json.dumps(source.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=True)
    env = [
        {"name": "AIPLANE_CONNECTOR_SPEC", "value": block},
        _secret_env("AIPLANE_DATABASE_URL", SecretKeyRef(name=config.store_secret, key=config.store_key)),
    ]
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if source.auth is not None:
        # SASL credentials and the CA as files, where the runtime's secret resolver reads them.
        volumes, mounts = _secret_volumes([ref for _, ref in auth_refs(source.auth)])
        env.append({"name": "AIPLANE_SECRETS_DIR", "value": SECRETS_DIR})
    # $(VAR) is expanded by the kubelet from the container's env, so the values stay out of the spec.
    args = [
        *("--connector", owner.name),
        *("--tenant", tenant(connector)),
        *("--spec", "$(AIPLANE_CONNECTOR_SPEC)"),
        *("--db-url", "$(AIPLANE_DATABASE_URL)"),
    ]
    template_metadata: dict[str, Any] = {"labels": labels(owner.name)}
    ports: list[dict[str, Any]] = []
    if config.metrics_port is not None:
        # Only these pods set the connector metrics (consumer lag, dead letters): a PodMonitor scrapes this port.
        args += ["--metrics-port", str(config.metrics_port)]
        ports = [{"name": "metrics", "containerPort": config.metrics_port}]
        if config.metrics_annotations:
            template_metadata["annotations"] = {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(config.metrics_port),
                "prometheus.io/path": "/metrics",
            }
    # Only a governed consumer talks to the Kubernetes API; an ungoverned one gets no token.
    pod: dict[str, Any] = {"automountServiceAccountToken": config.service_account is not None}
    if config.service_account is not None:
        # Governed: the namespace's Policies apply to the tasks it makes, as to the gateway's (aiplane.kafkasource).
        command = ["aiplane", "kafka-source"]
        args += ["--from-cluster", owner.namespace]
        pod["serviceAccountName"] = config.service_account
        if config.pii_secret is not None:
            env.append(_secret_env("AIPLANE_PII_KEY", SecretKeyRef(name=config.pii_secret, key=config.pii_key)))
        if config.region is not None:
            # Its intake refuses workflows pinned to other regions, as the region's gateway does.
            env.append({"name": "AIPLANE_REGION", "value": config.region})
    else:
        # The image's entrypoint is ``aiplane``: the source runtime replaces it rather than becoming its argument.
        command = ["python", "-m", "connectors.kafka", "source"]
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": config.image,
        "command": command,
        "args": args,
        "env": env,
        **({"ports": ports} if ports else {}),
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
        "securityContext": copy.deepcopy(CONTAINER_SECURITY),
        # The root filesystem is read-only; Python and the libraries it loads may still want a scratch /tmp.
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, *mounts],
    }
    pod["volumes"] = [{"name": "tmp", "emptyDir": {}}, *volumes]
    pod["securityContext"] = copy.deepcopy(POD_SECURITY)
    selector = {LABEL_CONNECTOR: owner.name, LABEL_COMPONENT: COMPONENT}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(owner.name),
            "namespace": owner.namespace,
            "labels": labels(owner.name),
            "ownerReferences": [owner.reference()],
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            # A consumer that leaves hands its partitions to the others only after a rebalance; replacing one at
            # a time keeps the group consuming during a rollout.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": template_metadata,
                "spec": {"containers": [container], "enableServiceLinks": False, **pod},
            },
        },
    }
