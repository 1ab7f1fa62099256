"""The Model resource: a versioned BentoML service that aiplane serves, scales and rolls out with canaries."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar, Literal

from pydantic import ConfigDict, Field

from crds.base import (
    DNS_LABEL_PATTERN,
    Duration,
    K8sModel,
    PrinterColumn,
    Quantity,
    Resource,
    Role,
    StatusBase,
    VersionLabel,
    age_column,
    cel_rule,
    cel_rules,
    condition_column,
)

TrafficWeight = Annotated[int, Field(ge=1, le=100)]


class GPU(K8sModel):
    """GPUs each serving replica needs; the pods request nvidia.com/gpu and tolerate the GPU taint."""

    count: int = Field(default=1, ge=0, le=16, description="GPUs per replica (the nvidia.com/gpu limit).")
    type: str | None = Field(
        default=None,
        max_length=128,
        pattern=r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$",
        description="GPU product to schedule on, matched against the node label nvidia.com/gpu.product "
        "(e.g. NVIDIA-A100-SXM4-80GB). Omit to accept any GPU.",
    )


class Resources(K8sModel):
    """Compute each serving replica requests."""

    cpu: Quantity = Field(default="1", description="CPU request per replica, e.g. 500m or 2.")
    memory: Quantity = Field(default="2Gi", description="Memory request and limit per replica, e.g. 4Gi.")
    gpu: GPU | None = Field(default=None, description="GPUs per replica; omit for CPU-only serving.")


class Toleration(K8sModel):
    """A pod toleration (corev1.Toleration) added to the serving pods."""

    key: str | None = Field(
        default=None, max_length=316, description="Taint key to tolerate; empty with Exists matches all."
    )
    operator: Literal["Exists", "Equal"] = Field(default="Equal", description="How the key and value are matched.")
    value: str | None = Field(default=None, max_length=63, description="Taint value, with operator Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to tolerate; empty matches all effects."
    )


class Analysis(K8sModel):
    """Thresholds a canary must hold at every traffic step; breaking one rolls the canary back."""

    max_error_rate: float = Field(
        default=0.05, ge=0, le=1, description="Highest share of failed requests (0-1) the canary may return."
    )
    max_p99_latency_ms: int = Field(
        default=1000, ge=1, le=600_000, description="Highest p99 request latency of the canary, in milliseconds."
    )
    max_drift: float = Field(
        default=0.2,
        ge=0,
        le=10,
        description="Highest population stability index of the canary's predictions against the stable version.",
    )
    min_requests: int = Field(
        default=20,
        ge=0,
        le=1_000_000,
        description="Requests the canary must have served at a step before the analysis may judge it.",
    )
    prediction_field: str | None = Field(
        default=None,
        max_length=128,
        pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$",
        description="Top-level field of the model's JSON answer that holds the predicted class (e.g. claim_type). "
        "While the canary runs, the gateway counts each version's classes, and drift is their population "
        "stability index, canary against stable. Omit to leave drift unmeasured.",
    )


class PromotionApproval(K8sModel):
    """People who must approve before the canary becomes stable: the rollout holds the last traffic step (as an
    Argo Rollouts pause step would) until they decide through the approvals API or ``aiplane approve``."""

    roles: list[Role] = Field(
        default=["approver"],
        max_length=4,
        description="Roles (in the tenant below) whose holders may decide.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    users: list[Annotated[str, Field(max_length=253)]] = Field(
        default_factory=list, max_length=64, description="Named users who may decide, in addition to the roles."
    )
    quorum: int = Field(default=1, ge=1, le=16, description="Distinct approvals needed to promote.")
    expiry: Duration = Field(
        default="24h",
        description="How long the approval waits; nobody deciding in time rolls the canary back like a rejection.",
    )
    tenant: str | None = Field(
        default=None,
        max_length=63,
        pattern=r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$",
        description="Tenant whose approvers decide (their API keys or tokens); defaults to the Model's namespace.",
    )


class Promotion(K8sModel):
    """What the canary needs, besides a passing analysis at every step, to become the stable version."""

    approval: PromotionApproval | None = Field(
        default=None, description="A human approval at the last traffic step; omit to promote on the analysis alone."
    )


class Strategy(K8sModel):
    """How a new version rolls out next to the stable one: the traffic steps, each held for an interval while the
    analysis holds, then the promotion. Shared by spec.canary and spec.rollout."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel_rule(
                "self.steps.isSorted()",
                "traffic steps must be in ascending order, e.g. [10, 50, 100]",
                field_path=".steps",
            ),
        )
    )

    steps: list[TrafficWeight] = Field(
        default=[10, 50, 100],
        min_length=1,
        max_length=10,
        description="Traffic weights (percent of requests) the new version gets, in ascending order, each 1-100.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    interval: Duration = Field(default="5m", description="How long each traffic step is held and analysed.")
    analysis: Analysis = Field(default_factory=Analysis, description="Thresholds that decide promotion or rollback.")
    promotion: Promotion | None = Field(
        default=None, description="Gates on promotion beyond the analysis, such as a human approval."
    )


class Canary(Strategy):
    """A rollout of a new version next to the stable one, moving traffic step by step while the analysis holds."""

    version: VersionLabel = Field(description="Version being rolled out.")
    bento: str | None = Field(
        default=None,
        max_length=512,
        description="BentoML service of the canary, if it differs from spec.bento.",
    )
    image: str | None = Field(default=None, max_length=512, description="Serving image of the canary, if it differs.")


class ModelSpec(K8sModel):
    """Desired state of a Model."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel_rule(
                "self.minReplicas <= self.maxReplicas",
                "minReplicas must be less than or equal to maxReplicas",
                field_path=".minReplicas",
            ),
            cel_rule(
                "!has(self.canary) || self.canary.version != self.version",
                "canary.version must differ from the stable version",
                field_path=".canary.version",
            ),
            cel_rule(
                "!has(self.canary) || !has(self.rollout)",
                "canary and rollout are two ways to roll a version out, set one: with rollout, change version to "
                "roll the new version out; with canary, name it in canary.version",
                field_path=".canary",
            ),
        )
    )

    bento: str = Field(
        min_length=1,
        max_length=512,
        description="BentoML service to serve: what `bentoml serve` takes, e.g. service:ClaimsExtractor or "
        "a bento tag claims_extractor:1.2.0.",
    )
    version: VersionLabel = Field(
        description="Version of the model to serve, e.g. 1.4.0. Changing it rolls the new version out: step by "
        "step with spec.rollout, else by switching all traffic to it once its replicas are ready. "
        "status.stableVersion says which version serves."
    )
    image: str | None = Field(
        default=None,
        max_length=512,
        description="Container image that holds the service; defaults to the operator's serving image.",
    )
    port: int = Field(default=3000, ge=1, le=65535, description="Port the BentoML server listens on.")
    resources: Resources = Field(default_factory=Resources, description="Compute per serving replica.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels the serving pods must match.")
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=32, description="Taints the serving pods tolerate."
    )
    min_replicas: int = Field(default=1, ge=0, le=1000, description="Fewest serving replicas per live version.")
    max_replicas: int = Field(default=1, ge=1, le=1000, description="Most serving replicas per live version.")
    scale_metric: Literal["cpu", "concurrency"] = Field(
        default="cpu", description="Autoscaling signal: CPU utilisation or in-flight requests per replica."
    )
    scale_target: int = Field(
        default=80,
        ge=1,
        le=10_000,
        description="Autoscaling target: percent CPU utilisation, or in-flight requests per replica.",
    )
    canary: Canary | None = Field(
        default=None,
        description="A rollout of the version it names next to spec.version; omit when none runs. Not with "
        "spec.rollout.",
    )
    rollout: Strategy | None = Field(
        default=None,
        description="How a change of spec.version rolls out: the new version comes up as a canary of the one "
        "serving (status.stableVersion) and moves through these steps while the analysis holds; it is promoted "
        "after the last, or rolled back and not tried again until spec.version changes. Omit to switch to a new "
        "version as soon as it is ready. Not with spec.canary.",
    )
    region: str | None = Field(
        default=None,
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
        description="Region the model serves in; tasks pinned to another region never call it.",
    )


class Endpoint(K8sModel):
    """One live version that the gateway routes to."""

    version: str = Field(max_length=63, description="Model version behind this endpoint.")
    url: str = Field(max_length=2048, description="Base URL of the BentoML service.")
    weight: int = Field(ge=0, le=100, description="Percent of requests routed here.")


class VersionReplicas(K8sModel):
    """Replica counts of one live version."""

    version: str = Field(max_length=63, description="Model version.")
    desired: int = Field(ge=0, description="Replicas wanted.")
    ready: int = Field(ge=0, description="Replicas ready to serve.")


class GPUQuota(K8sModel):
    """The namespace's GPU ResourceQuota as it bears on this Model (the tightest one, when several limit GPUs)."""

    quota: str = Field(max_length=253, description="Name of the ResourceQuota.")
    hard: int = Field(ge=0, description="GPUs the quota allows in the namespace.")
    used: int = Field(ge=0, description="GPUs the namespace's pods hold under the quota now.")
    requested: int = Field(
        ge=0, description="GPUs this Model's serving replicas ask for: replicas of every live version times GPUs each."
    )


RolloutPhase = Literal["Progressing", "Paused", "AwaitingApproval", "Promoted", "RolledBack", "Aborted"]
ApprovalState = Literal["pending", "approved", "rejected", "expired", "cancelled"]


class RolloutApproval(K8sModel):
    """The approval a promotion waits for (an approval of the engine, decided through its API or CLI)."""

    id: str = Field(max_length=64, description="Approval id: what `aiplane approve` and /v1/approvals take.")
    task_id: str = Field(max_length=64, description="The engine task that holds the approval.")
    tenant: str = Field(max_length=63, description="Tenant whose approvers decide.")
    state: ApprovalState = Field(description="pending, approved, rejected, expired or cancelled.")
    roles: list[str] = Field(default_factory=list, max_length=4, description="Roles that may decide.")
    users: list[str] = Field(default_factory=list, max_length=64, description="Named users who may decide.")
    quorum: int = Field(default=1, ge=1, le=16, description="Distinct approvals needed.")
    expires_at: datetime | None = Field(default=None, description="When the approval expires (UTC).")
    decided_by: list[str] = Field(default_factory=list, max_length=16, description="Who decided, in order.")
    reason: str = Field(default="", max_length=4096, description="The deciding approver's reason.")


class Rollout(K8sModel):
    """Where the rollout of one version stands (a spec.canary, or a spec.version change under spec.rollout); the
    operator resumes from here after a restart."""

    version: str = Field(max_length=63, description="Canary version this rollout is about.")
    phase: RolloutPhase = Field(
        description="Progressing (moving through the steps), Paused (held by the user), AwaitingApproval (at the "
        "last step, waiting for the promotion approval), Promoted (the canary is now stable), RolledBack "
        "(the analysis failed, or the promotion was rejected or expired) or Aborted (stopped by the user)."
    )
    step: int = Field(
        default=-1,
        ge=-1,
        le=10,
        description="Index into the steps (of spec.canary or spec.rollout) of the weight the canary holds now; -1 "
        "while it comes up.",
    )
    step_started_at: datetime | None = Field(
        default=None, description="When the current step started (UTC); the interval is counted from here."
    )
    message: str = Field(default="", max_length=4096, description="What happened last, in words.")
    reason: Literal["AnalysisFailed", "PromotionRejected"] | None = Field(
        default=None,
        description="Why a RolledBack rollout was rolled back: AnalysisFailed (a threshold broke) or "
        "PromotionRejected (its promotion approval was rejected, expired or cancelled).",
    )
    stable_replicas: int | None = Field(
        default=None,
        ge=0,
        le=1000,
        description="Replicas of both versions together while free GPUs cannot hold a full canary next to the "
        "stable version and replicas move from one to the other one at a time; unset otherwise.",
    )
    approval: RolloutApproval | None = Field(
        default=None, description="The approval the promotion waits for or waited for; unset without one."
    )


class ModelStatus(StatusBase):
    """Observed state of a Model. Conditions: Ready, Progressing, Degraded, RolledBack."""

    stable_version: str | None = Field(
        default=None,
        max_length=63,
        description="Version serving most traffic. During a rollout of a new spec.version, and after one was "
        "rolled back, the previous version.",
    )
    canary_version: str | None = Field(
        default=None,
        max_length=63,
        description="Version being rolled out (spec.canary's, or a new spec.version under spec.rollout); unset when "
        "none runs.",
    )
    canary_weight: int | None = Field(default=None, ge=0, le=100, description="Percent of traffic on the canary.")
    endpoints: list[Endpoint] = Field(
        default_factory=list, max_length=4, description="Live versions, their URLs and traffic weights."
    )
    replicas: list[VersionReplicas] = Field(
        default_factory=list, max_length=4, description="Desired and ready replicas per live version."
    )
    rollout: Rollout | None = Field(default=None, description="The canary rollout, while one runs and after it ends.")
    gpu_quota: GPUQuota | None = Field(
        default=None,
        description="The namespace's GPU quota, for a Model that asks for GPUs where a ResourceQuota limits them "
        "(requests.nvidia.com/gpu or limits.nvidia.com/gpu); unset otherwise.",
    )


class Model(Resource):
    """A versioned BentoML service that aiplane serves on Kubernetes, autoscales, and rolls out with canaries."""

    KIND: ClassVar[str] = "Model"
    PLURAL: ClassVar[str] = "models"
    SHORT_NAMES: ClassVar[tuple[str, ...]] = ("aim",)
    PRINTER_COLUMNS: ClassVar[tuple[PrinterColumn, ...]] = (
        PrinterColumn(name="Version", type="string", json_path=".spec.version", description="Desired version."),
        PrinterColumn(
            name="Stable", type="string", json_path=".status.stableVersion", description="Version serving most traffic."
        ),
        PrinterColumn(
            name="Canary", type="string", json_path=".status.canaryVersion", description="Version being rolled out."
        ),
        PrinterColumn(
            name="Weight", type="integer", json_path=".status.canaryWeight", description="Canary traffic percent."
        ),
        condition_column("Ready"),
        age_column(),
    )

    kind: Literal["Model"] = "Model"
    spec: ModelSpec
    status: ModelStatus | None = None
