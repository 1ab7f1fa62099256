"""Building blocks shared by the four resources: the base model, conditions, and constrained scalar types.

Every field is declared once here or in the kind modules; the CRD YAML, the engine and the gateway all read the
same classes, so a constraint written here is enforced by the apiserver and by ``aiplane dev`` alike.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

API_GROUP = "aiplane.io"
API_VERSION = "v1alpha1"

# Strings that end up in object names and label values must be DNS-1123 labels.
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# Go-style durations ("30s", "1h30m") as Kubernetes users write them; "d" is allowed because retention is in days.
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h|d))+$"
# Kubernetes resource quantities ("500m", "4Gi", "2").
QUANTITY_PATTERN = r"^([+]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"

# Roles a tenant's members hold; the gateway checks them on every route and approvals name them.
Role = Literal["submitter", "approver", "auditor", "admin"]

Name = Annotated[
    str,
    Field(
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
        description="A DNS-1123 label: lower-case letters, digits and '-', at most 63 characters.",
    ),
]
Duration = Annotated[
    str,
    Field(
        max_length=32,
        pattern=DURATION_PATTERN,
        description="A duration such as 30s, 5m, 1h30m or 30d.",
    ),
]
Quantity = Annotated[
    int | str,
    Field(description="A Kubernetes quantity such as 500m, 2 or 4Gi."),
]
VersionLabel = Annotated[
    str,
    Field(
        min_length=1,
        max_length=63,
        pattern=r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$",
        description="A version label such as 1.4.0; it is used in object names and label values.",
    ),
]
CelExpression = Annotated[
    str,
    Field(
        min_length=1,
        max_length=4096,
        description="A CEL expression evaluated over the task's data (input, steps.<name>.output, vars).",
    ),
]


def cel_rule(
    rule: str,
    message: str,
    field_path: str | None = None,
    reason: str | None = None,
    message_expression: str | None = None,
) -> dict[str, str]:
    """One ``x-kubernetes-validations`` entry; the apiserver evaluates it and the embedded mode reuses it.

    ``message_expression`` (CEL) lets the error name the offending item; ``message`` is the fallback.
    """
    entry = {"rule": rule, "message": message}
    if message_expression is not None:
        entry["messageExpression"] = message_expression
    if field_path is not None:
        entry["fieldPath"] = field_path
    if reason is not None:
        entry["reason"] = reason
    return entry


def cel_rules(*rules: dict[str, str]) -> dict[str, Any]:
    """``json_schema_extra`` that attaches CEL cross-field rules to a model's schema."""
    return {"x-kubernetes-validations": list(rules)}


class K8sModel(BaseModel):
    """Base of every spec and status object: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
    )


class Condition(K8sModel):
    """The standard Kubernetes condition (metav1.Condition): the latest observation of one aspect of the resource."""

    type: str = Field(
        max_length=316,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
        description="Type of condition in CamelCase, e.g. Ready.",
    )
    status: Literal["True", "False", "Unknown"] = Field(description="Status of the condition.")
    reason: str = Field(
        min_length=1,
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="A programmatic identifier, in CamelCase, of the reason for the last transition.",
    )
    message: str = Field(
        default="",
        max_length=32768,
        description="A human-readable message that says what happened and, when something is wrong, what to fix.",
    )
    last_transition_time: datetime = Field(description="When the condition last changed status (UTC).")
    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation this condition was set for."
    )


class StatusBase(K8sModel):
    """Fields every aiplane status carries."""

    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation the controller last acted on."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        description="Latest observations of the resource's state.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


class SecretKeyRef(K8sModel):
    """A key in a Secret in the resource's namespace; secrets are never written into specs."""

    name: Name = Field(description="Name of the Secret.")
    key: str = Field(
        min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$", description="Key within the Secret's data."
    )


class LabelSelector(K8sModel):
    """Selects resources by their labels, as metav1.LabelSelector's matchLabels does."""

    match_labels: dict[str, str] = Field(
        default_factory=dict, description="Resources whose labels contain all these pairs are selected."
    )


class PrinterColumn(BaseModel):
    """One ``additionalPrinterColumns`` entry of a CRD (what ``kubectl get`` shows)."""

    name: str
    type: Literal["string", "integer", "number", "boolean", "date"]
    json_path: str
    description: str = ""
    priority: int = 0


class Resource(BaseModel):
    """A custom resource kind: the CRD's identity (names, columns) rides on the class with its spec and status."""

    KIND: ClassVar[str]
    PLURAL: ClassVar[str]
    SHORT_NAMES: ClassVar[tuple[str, ...]]
    PRINTER_COLUMNS: ClassVar[tuple[PrinterColumn, ...]]
    CATEGORIES: ClassVar[tuple[str, ...]] = ("aiplane",)

    api_version: Literal["aiplane.io/v1alpha1"] = Field(default="aiplane.io/v1alpha1", alias="apiVersion")
    metadata: dict[str, Any] = Field(default_factory=dict)

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    @classmethod
    def singular(cls) -> str:
        return cls.KIND.lower()

    @classmethod
    def crd_name(cls) -> str:
        return f"{cls.PLURAL}.{API_GROUP}"


def age_column() -> PrinterColumn:
    return PrinterColumn(name="Age", type="date", json_path=".metadata.creationTimestamp")


def condition_column(condition_type: str) -> PrinterColumn:
    return PrinterColumn(
        name=condition_type,
        type="string",
        json_path=f'.status.conditions[?(@.type=="{condition_type}")].status',
        description=f"Whether the {condition_type} condition is True.",
    )
