"""The Policy resource: governance the gateway and engine enforce on every call (not only at admission)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from crds.base import (
    CelExpression,
    Duration,
    K8sModel,
    LabelSelector,
    Name,
    PrinterColumn,
    Resource,
    Role,
    StatusBase,
    age_column,
    condition_column,
)

PIIEntity = Literal[
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "US_SSN",
    # Other national ids, each found with its check digit or letter (presidio's recognizers).
    "US_ITIN",
    "UK_NHS",
    "UK_NINO",
    "ES_NIF",
    "IT_FISCAL_CODE",
    "PL_PESEL",
    "IN_AADHAAR",
    "FI_PERSONAL_IDENTITY_CODE",
    "DATE_OF_BIRTH",
    "PERSON",
]
ShortText = Annotated[str, Field(min_length=1, max_length=253)]


class Selector(LabelSelector):
    """Which resources the policy governs: by kind and labels, in the policy's namespace."""

    kinds: list[Literal["Workflow", "Model", "Connector"]] = Field(
        default=["Workflow"],
        min_length=1,
        max_length=3,
        description="Kinds of resource the policy applies to.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )

    def matches(self, kind: str, labels: Mapping[str, str]) -> bool:
        """Whether a resource of ``kind`` with ``labels`` (in the policy's namespace) is selected."""
        return kind in self.kinds and all(labels.get(key) == value for key, value in self.match_labels.items())


class PII(K8sModel):
    """Detects personal data in payloads and masks it wherever aiplane keeps or sends it."""

    entities: list[PIIEntity] = Field(
        default=["EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN"],
        max_length=16,
        description="Kinds of personal data to detect.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    fields: list[ShortText] = Field(
        default_factory=list,
        max_length=64,
        description="Field paths always treated as personal data (e.g. input.claimant.name), whatever they hold.",
    )
    action: Literal["redact", "hash", "tokenize"] = Field(
        default="redact",
        description="redact replaces the value; hash keeps a tenant-salted hash; tokenize is reversible for "
        "holders of an unmask role.",
    )
    unmask_roles: list[Role] = Field(
        default_factory=list, max_length=4, description="Roles that may see tokenized values in clear."
    )


class Retention(K8sModel):
    """How long each class of data is kept before the purge job deletes it; the strictest policy wins."""

    inputs: Duration | None = Field(default=None, description="Task inputs.")
    results: Duration | None = Field(default=None, description="Task and step results.")
    payload_logs: Duration | None = Field(default=None, description="Sampled request and response logs.")
    events: Duration | None = Field(default=None, description="Task events.")
    audit: Duration | None = Field(default=None, description="Audit records; kept longest.")


class ApprovalRule(K8sModel):
    """Forces a human approval when a CEL condition over the task holds."""

    name: Name = Field(description="Rule name, recorded in the audit log.")
    when: CelExpression = Field(description="Condition, e.g. input.amount > 10000 || result.confidence < 0.8.")
    roles: list[Role] = Field(default=["approver"], min_length=1, max_length=4, description="Roles that may approve.")
    quorum: int = Field(default=1, ge=1, le=16, description="Approvals needed.")
    separation_of_duties: bool = Field(default=True, description="The submitter of a task may not approve it.")


class RoleBinding(K8sModel):
    """Grants a role to subjects (API keys' principal names, OIDC subjects or groups)."""

    role: Role = Field(description="Role granted.")
    subjects: list[ShortText] = Field(min_length=1, max_length=256, description="Who gets the role.")


class Access(K8sModel):
    """Which tenants may use the selected resources, and the roles granted in those tenants."""

    tenants: list[ShortText] = Field(
        default_factory=list, max_length=256, description="Tenants allowed; empty allows every tenant."
    )
    roles: list[RoleBinding] = Field(
        default_factory=list,
        max_length=64,
        description="Role grants, added to the caller's own in the tenants listed (every tenant when none), on "
        "every route of the tenant, not only for the selected resources.",
    )


class Residency(K8sModel):
    """Where data may go: a task pinned to a region never reaches a model or connector elsewhere."""

    regions: list[Annotated[str, Field(min_length=1, max_length=63)]] = Field(
        min_length=1, max_length=32, description="Regions data may be processed in."
    )


class RateLimit(K8sModel):
    """A token bucket per tenant (and optionally per priority class); excess calls get 429 with Retry-After."""

    priority: Literal["high", "normal", "low"] | None = Field(
        default=None, description="Priority class the limit applies to; omit for all."
    )
    requests_per_second: float = Field(gt=0, le=100_000, description="Sustained rate.")
    burst: int = Field(default=10, ge=1, le=100_000, description="Bucket size: calls allowed at once.")


class Quota(K8sModel):
    """How much of the engine a tenant may hold at once (optionally per priority class): a submission past it
    gets 429 with Retry-After."""

    max_tasks_in_flight: int = Field(
        ge=1,
        le=10_000_000,
        description="Unfinished tasks (queued, running or waiting for an approval) a tenant may have at once.",
    )
    priority: Literal["high", "normal", "low"] | None = Field(
        default=None,
        description="Priority class the quota counts and applies to; omit for all of a tenant's tasks.",
    )


class PayloadLogging(K8sModel):
    """Sampled, masked request and response logs for debugging and drift analysis."""

    sample_rate: float = Field(default=0.0, ge=0, le=1, description="Share of calls logged (0-1).")


class AgentActionRule(K8sModel):
    """Whether agents may take an action. A matching deny refuses it; when any rule allows, only allowed actions
    run (an allow-list); the refusal is fed back to the planner and written to the audit log."""

    name: Name = Field(description="Rule name, recorded with each decision.")
    effect: Literal["allow", "deny"] = Field(default="deny", description="allow or deny what the rule matches.")
    actions: list[ShortText] = Field(
        default=["*"],
        min_length=1,
        max_length=64,
        description="Action names, or what they call as kind/name (model/claims-extractor, connector/mail, "
        "workflow/refund); * for every action.",
    )
    tenants: list[ShortText] = Field(default_factory=list, max_length=256, description="Tenants; empty: every one.")
    data_classes: list[ShortText] = Field(
        default_factory=list,
        max_length=32,
        description="Data classes of the task (its privacy annotation, e.g. pii); empty: any, none included.",
    )
    when: CelExpression | None = Field(
        default=None, description="Match only when true; over action, arguments, tenant, dataClass and input."
    )


class PolicySpec(K8sModel):
    """Desired state of a Policy; every part is optional and parts combine across policies (deny wins)."""

    selector: Selector = Field(default_factory=Selector, description="Resources the policy governs.")
    pii: PII | None = Field(default=None, description="Personal data detection and masking.")
    retention: Retention | None = Field(default=None, description="How long data is kept.")
    approvals: list[ApprovalRule] = Field(
        default_factory=list,
        max_length=32,
        description="Conditions that force a human approval.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    access: Access | None = Field(default=None, description="Tenants and roles.")
    residency: Residency | None = Field(default=None, description="Regions data may go to.")
    rate_limits: list[RateLimit] = Field(default_factory=list, max_length=8, description="Rate limits per tenant.")
    quota: Quota | None = Field(
        default=None, description="A per-tenant quota of tasks in flight, of one priority class or all (smallest wins)."
    )
    payload_logging: PayloadLogging | None = Field(default=None, description="Sampled payload logs.")
    agent_actions: list[AgentActionRule] = Field(
        default_factory=list,
        max_length=32,
        description="Which actions agent steps may take, per tenant and data class (deny wins).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )


class Selection(K8sModel):
    """Names of the resources a Policy selects, per kind (the first 100 of each kind, sorted)."""

    workflows: list[ShortText] = Field(default_factory=list, max_length=100, description="Workflows selected.")
    models: list[ShortText] = Field(default_factory=list, max_length=100, description="Models selected.")
    connectors: list[ShortText] = Field(default_factory=list, max_length=100, description="Connectors selected.")


class PolicyStatus(StatusBase):
    """Observed state of a Policy. Conditions: Ready (False with the offending rule and error when the policy
    cannot be enforced as written)."""

    selected: int | None = Field(default=None, ge=0, description="Resources the policy currently selects.")
    selection: Selection | None = Field(default=None, description="Which resources it selects, per kind.")


class Policy(Resource):
    """Governance enforced at call time: PII masking, retention, approvals, access, residency, rate limits."""

    KIND: ClassVar[str] = "Policy"
    PLURAL: ClassVar[str] = "policies"
    SHORT_NAMES: ClassVar[tuple[str, ...]] = ("aip",)
    PRINTER_COLUMNS: ClassVar[tuple[PrinterColumn, ...]] = (
        PrinterColumn(name="Selected", type="integer", json_path=".status.selected", description="Resources governed."),
        condition_column("Ready"),
        age_column(),
    )

    kind: Literal["Policy"] = "Policy"
    spec: PolicySpec
    status: PolicyStatus | None = None
