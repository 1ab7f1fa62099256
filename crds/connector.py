"""The Connector resource: a link to a business system (Kafka source or sink, HTTP service, PostgreSQL)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import ConfigDict, Field

from crds.base import (
    CelExpression,
    Duration,
    K8sModel,
    Name,
    PrinterColumn,
    Resource,
    SecretKeyRef,
    StatusBase,
    age_column,
    cel_rule,
    cel_rules,
    condition_column,
)

ConnectorType = Literal["kafkaSource", "kafkaSink", "http", "postgres"]
CONNECTOR_TYPES: tuple[str, ...] = ("kafkaSource", "kafkaSink", "http", "postgres")

KafkaTopic = Annotated[str, Field(min_length=1, max_length=249, pattern=r"^[a-zA-Z0-9._-]+$")]


class KafkaAuth(K8sModel):
    """SASL credentials for the Kafka cluster, over TLS unless told otherwise."""

    mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        default="SCRAM-SHA-512", description="SASL mechanism."
    )
    username: SecretKeyRef = Field(description="Secret key holding the user name.")
    password: SecretKeyRef = Field(description="Secret key holding the password.")
    tls: bool = Field(default=True, description="Connect with TLS.")
    ca: SecretKeyRef | None = Field(
        default=None,
        description="Secret key holding the PEM certificates that sign the brokers' certificates (with tls); the "
        "system's trusted CAs when omitted.",
    )


class KafkaSource(K8sModel):
    """Consumes a topic and submits each message as a task; offsets commit only once the task is accepted."""

    bootstrap_servers: str = Field(
        min_length=1, max_length=2048, description="Comma-separated host:port list of Kafka brokers."
    )
    topic: KafkaTopic = Field(description="Topic to consume.")
    group_id: str | None = Field(
        default=None, max_length=249, description="Consumer group; defaults to aiplane-<namespace>-<name>."
    )
    workflow: Name = Field(description="Workflow that each message becomes a task of.")
    idempotency_key: CelExpression | None = Field(
        default=None,
        description="CEL over the message (value, key, topic, partition, offset) giving the task's idempotency "
        "key; defaults to topic/partition/offset.",
    )
    dead_letter_topic: KafkaTopic | None = Field(
        default=None,
        description="Topic for malformed or refused messages, with the reason in headers; defaults to <topic>.dlq.",
    )
    replicas: int = Field(
        default=1, ge=1, le=128, description="Consumer replicas; more than the topic's partitions is capped."
    )
    start_from: Literal["earliest", "latest"] = Field(
        default="earliest", description="Where a new consumer group starts reading."
    )
    auth: KafkaAuth | None = Field(default=None, description="SASL credentials; omit for a plaintext cluster.")

    @property
    def dead_letters_to(self) -> str:
        """The dead-letter topic in effect: ``dead_letter_topic``, or ``<topic>.dlq``."""
        return self.dead_letter_topic or f"{self.topic}.dlq"


class KafkaSink(K8sModel):
    """Publishes task results (or a projection of them) to a topic, keyed so one entity's records stay in order."""

    bootstrap_servers: str = Field(
        min_length=1, max_length=2048, description="Comma-separated host:port list of Kafka brokers."
    )
    topic: KafkaTopic = Field(description="Topic to publish to.")
    key: CelExpression | None = Field(
        default=None, description="CEL giving the record key (e.g. input.claimId); defaults to the task id."
    )
    value: dict[str, CelExpression] = Field(
        default_factory=dict, description="Projection of the record value; empty publishes the whole payload."
    )
    auth: KafkaAuth | None = Field(default=None, description="SASL credentials; omit for a plaintext cluster.")


class Header(K8sModel):
    """An HTTP header, literal or from a Secret."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel_rule(
                "has(self.value) != has(self.valueFrom)",
                "a header needs exactly one of value or valueFrom",
                field_path=".value",
            )
        )
    )

    name: str = Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9-]+$", description="Header name.")
    value: str | None = Field(default=None, max_length=8192, description="Literal value.")
    value_from: SecretKeyRef | None = Field(default=None, description="Secret key that holds the value.")


class HTTP(K8sModel):
    """An outbound HTTP call used by connector steps."""

    url: str = Field(
        min_length=1,
        max_length=2048,
        pattern=r"^https?://[^\s]+$",
        description="URL template; {name} placeholders are filled from the step's input.",
    )
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = Field(default="POST", description="HTTP method.")
    headers: list[Header] = Field(default_factory=list, max_length=32, description="Headers sent on every call.")
    timeout: Duration = Field(default="10s", description="Longest time one call may take.")
    allow_private_networks: bool = Field(
        default=False,
        description="Allow loopback, link-local and private addresses; refused by default to prevent SSRF.",
    )


class PostgresQuery(K8sModel):
    """A named, parameterised statement; parameters are bound, never spliced into the SQL."""

    name: Name = Field(description="Operation name a connector step refers to.")
    sql: str = Field(
        min_length=1,
        max_length=16384,
        description="SQL with named parameters in the form :param, bound from the step's input; "
        ":idempotency_key (the step's, the same on every attempt) and :task_id are always available.",
    )
    max_rows: int = Field(
        default=1000,
        ge=1,
        le=100000,
        description="Most rows a step may get back; a statement returning more fails instead of truncating.",
    )


class Postgres(K8sModel):
    """A PostgreSQL database reached with a DSN kept in a Secret."""

    dsn: SecretKeyRef = Field(description="Secret key holding the libpq connection string.")
    queries: list[PostgresQuery] = Field(
        default_factory=list,
        max_length=64,
        description="Statements connector steps may run.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    pool_size: int = Field(
        default=5, ge=1, le=100, description="Connections each worker process keeps open to this database."
    )


class ConnectorSpec(K8sModel):
    """Desired state of a Connector: its type and the settings block of that type."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            *(
                cel_rule(
                    f"has(self.{kind}) == (self.type == '{kind}')",
                    f"a connector of type {kind} needs a '{kind}' block, and only such a connector may have one",
                    field_path=f".{kind}",
                )
                for kind in CONNECTOR_TYPES
            )
        )
    )

    type: ConnectorType = Field(description="Kind of system: kafkaSource, kafkaSink, http or postgres.")
    kafka_source: KafkaSource | None = Field(default=None, description="With type kafkaSource.")
    kafka_sink: KafkaSink | None = Field(default=None, description="With type kafkaSink.")
    http: HTTP | None = Field(default=None, description="With type http.")
    postgres: Postgres | None = Field(default=None, description="With type postgres.")
    region: str | None = Field(default=None, max_length=63, description="Region the system is in, for residency rules.")


class ConnectorStatus(StatusBase):
    """Observed state of a Connector. Conditions: Ready; Degraded, whose reasons docs/connectors.md lists."""

    replicas: int | None = Field(
        default=None,
        ge=0,
        description="Consumer replicas asked for (kafkaSource): spec replicas, capped at partitions.",
    )
    ready_replicas: int | None = Field(default=None, ge=0, description="Consumer replicas ready (kafkaSource).")
    partitions: int | None = Field(
        default=None, ge=0, description="Partitions of the topic, as the broker last reported them (Kafka types)."
    )


class Connector(Resource):
    """A link to a business system: Kafka source or sink, HTTP, or PostgreSQL."""

    KIND: ClassVar[str] = "Connector"
    PLURAL: ClassVar[str] = "connectors"
    SHORT_NAMES: ClassVar[tuple[str, ...]] = ("aic",)
    PRINTER_COLUMNS: ClassVar[tuple[PrinterColumn, ...]] = (
        PrinterColumn(name="Type", type="string", json_path=".spec.type", description="Kind of system."),
        condition_column("Ready"),
        PrinterColumn(
            name="Reason",
            type="string",
            json_path='.status.conditions[?(@.type=="Degraded")].reason',
            description="Why the connector is degraded (AsExpected when it is not).",
        ),
        PrinterColumn(
            name="Replicas", type="integer", json_path=".status.readyReplicas", description="Consumers ready."
        ),
        age_column(),
    )

    kind: Literal["Connector"] = "Connector"
    spec: ConnectorSpec
    status: ConnectorStatus | None = None
