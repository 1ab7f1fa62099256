"""The Workflow resource: a graph of steps that the engine runs durably for each task.

Control flow follows a state-machine shape (as in AWS Step Functions): steps run in list order unless a step names
its ``next`` step or ``end``s the task; a ``rules`` step chooses among ``branches``; an ``approval`` step continues
on approve and may jump elsewhere on reject or expiry.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import ConfigDict, Field

from crds.base import (
    CelExpression,
    Duration,
    K8sModel,
    Name,
    PrinterColumn,
    Resource,
    Role,
    StatusBase,
    age_column,
    cel_rule,
    cel_rules,
    condition_column,
)

StepType = Literal["model", "connector", "rules", "approval", "agent"]
STEP_TYPES: tuple[str, ...] = ("model", "connector", "rules", "approval", "agent")


class Backoff(K8sModel):
    """Exponential backoff between attempts: initial * multiplier^(attempt-1), capped at max, with jitter."""

    initial: Duration = Field(default="1s", description="Delay before the second attempt.")
    max: Duration = Field(default="5m", description="Longest delay between two attempts.")
    multiplier: float = Field(default=2.0, ge=1, le=10, description="Growth factor of the delay per attempt.")
    jitter: float = Field(
        default=0.2, ge=0, le=1, description="Random spread added to each delay, as a share of it (0-1)."
    )


class Retry(K8sModel):
    """How a failed step is retried before the task goes to the dead-letter queue."""

    max_attempts: int = Field(default=3, ge=1, le=100, description="Attempts in total, the first one included.")
    backoff: Backoff = Field(default_factory=Backoff, description="Delay between attempts.")
    non_retryable: list[Annotated[str, Field(max_length=128)]] = Field(
        default_factory=list,
        max_length=32,
        description="Error kinds that fail the step at once, e.g. BadRequest, Unauthorized, ValidationError.",
    )


class ModelRef(K8sModel):
    """A Model's BentoML API; traffic is split between its live versions by their weights."""

    name: Name = Field(description="Name of the Model resource in the same namespace.")
    api: str = Field(
        default="predict",
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="BentoML API (endpoint) to call, e.g. extract.",
    )


class ModelCall(ModelRef):
    """Calls a Model's BentoML API; traffic is split between its live versions by their weights."""

    input: dict[str, CelExpression] = Field(
        default_factory=dict,
        description="Request body: each key is set to the value of its CEL expression. Empty sends the task input.",
    )


class ConnectorRef(K8sModel):
    """A Connector (HTTP, PostgreSQL, Kafka sink) and the operation to run on it."""

    name: Name = Field(description="Name of the Connector resource in the same namespace.")
    operation: str | None = Field(
        default=None,
        max_length=128,
        description="Connector-specific operation, e.g. a named query of a postgres Connector.",
    )


class ConnectorCall(ConnectorRef):
    """Calls a Connector (HTTP, PostgreSQL, Kafka sink) with a body built from the task's data."""

    input: dict[str, CelExpression] = Field(
        default_factory=dict,
        description="Payload: each key is set to the value of its CEL expression. Empty sends the task input.",
    )


class Branch(K8sModel):
    """A conditional jump taken when its CEL condition is true."""

    when: CelExpression = Field(description="Condition; the first true branch wins.")
    next: Name = Field(description="Step to continue with.")


class Rules(K8sModel):
    """Decides values and chooses the next step with CEL, without calling anything."""

    set: dict[str, CelExpression] = Field(
        default_factory=dict, description="Values to decide: vars.<key> is set to the value of each CEL expression."
    )
    branches: list[Branch] = Field(
        default_factory=list, max_length=32, description="Conditional jumps, tried in order."
    )
    default: Name | None = Field(
        default=None, description="Step to continue with when no branch matches; omit to follow the usual order."
    )


class Approvers(K8sModel):
    """Who may decide an approval."""

    roles: list[Role] = Field(
        default=["approver"],
        max_length=16,
        description="Roles (in the task's tenant) whose members may decide.",
    )
    users: list[Annotated[str, Field(max_length=253)]] = Field(
        default_factory=list,
        max_length=64,
        description="Named users who may decide, in addition to the roles.",
    )


class Approval(K8sModel):
    """A human gate: the task waits, holding no worker, until approvers decide or the approval expires."""

    approvers: Approvers = Field(default_factory=Approvers, description="Who may decide.")
    quorum: int = Field(default=1, ge=1, le=16, description="Approvals needed to continue.")
    prompt: str = Field(
        default="Please review this task.",
        max_length=4096,
        description="What approvers are asked; shown with the task's data.",
    )
    expiry: Duration = Field(default="72h", description="How long the approval waits for a decision.")
    on_reject: Name | None = Field(
        default=None, description="Step to continue with when rejected; omit to end the task as rejected."
    )
    on_expire: Name | None = Field(
        default=None, description="Step to continue with when the approval expires (escalation); omit to fail."
    )
    separation_of_duties: bool = Field(
        default=False,
        description="Whoever submitted the task may not approve it (they may still reject); the engine refuses "
        "such an approval with 403 and records the refusal in the audit log.",
    )


class ActionWorkflow(K8sModel):
    """An agent action that runs another Workflow as a child task with the planner's arguments as its input."""

    name: Name = Field(description="Name of the Workflow in the same namespace.")
    version: str | None = Field(
        default=None, max_length=64, description="A registered version of it; omit for the current one."
    )


class AgentAction(K8sModel):
    """Something the agent may do: one model, connector or sub-workflow, described for the planner."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel_rule(
                "[has(self.model), has(self.connector), has(self.workflow)].filter(x, x).size() == 1",
                "an action names exactly one of model, connector or workflow",
            )
        )
    )

    name: Name = Field(description="Name the planner proposes the action by, unique within the step.")
    description: str = Field(
        min_length=1,
        max_length=2048,
        description="What the action does and when it helps: the planner chooses by it (the retrieval planner "
        "embeds it).",
    )
    model: ModelRef | None = Field(
        default=None, description="The Model the action calls, with the planner's arguments as the request body."
    )
    connector: ConnectorRef | None = Field(
        default=None, description="The Connector the action calls, with the planner's arguments as the payload."
    )
    workflow: ActionWorkflow | None = Field(default=None, description="The Workflow the action runs as a child task.")
    input_schema: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object"},
        description="JSON Schema the planner's arguments must match; arguments that do not are refused before "
        "anything is called, and the planner is told why.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    cost: float = Field(
        default=1.0,
        ge=0,
        le=1000,
        description="What one run of the action spends of limits.maxCost, in model-call units.",
    )
    retry: Retry = Field(default_factory=Retry, description="Attempts and backoff when the action fails.")
    timeout: Duration = Field(default="30s", description="Longest time one attempt of the action may take.")


class Planner(K8sModel):
    """The Model that proposes the agent's next action (the planner contract: docs/agents.md)."""

    model: Name = Field(description="Name of the Model resource serving the planner API.")
    api: str = Field(
        default="plan",
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="BentoML API of the planner.",
    )
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="Sent as is with every request: e.g. the scripted planner's rules.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    cost: float = Field(default=1.0, ge=0, le=1000, description="What one planner call spends of limits.maxCost.")
    timeout: Duration = Field(default="30s", description="Longest time one planner call may take.")


class AgentLimits(K8sModel):
    """When the agent stops without reaching its goal."""

    max_steps: int = Field(default=10, ge=1, le=100, description="Actions proposed, at most.")
    max_cost: float = Field(
        default=50.0, gt=0, le=100_000, description="Cost of planner calls and actions, in model-call units."
    )
    deadline: Duration = Field(default="10m", description="Wall-clock time from the agent's first proposal.")


class Escalation(K8sModel):
    """When the agent hands over to people: the step it continues with gets the whole transcript."""

    to: Name = Field(description="Step to continue with, usually an approval step; it sees steps.<agent>.output.")
    min_confidence: float = Field(
        default=0.5, ge=0, le=1, description="A proposal with a lower confidence escalates instead of running."
    )
    when: CelExpression | None = Field(
        default=None,
        description="Escalate when true; over proposal (action, arguments, confidence), transcript and the task's "
        "data.",
    )
    on_limit: bool = Field(
        default=True, description="Escalate when a limit stops the agent; false fails the step (dead letter)."
    )


class Agent(K8sModel):
    """A planner-driven loop of governed actions toward a goal: each action is checked and checkpointed."""

    goal: str = Field(
        min_length=1,
        max_length=4096,
        description="What the agent is to achieve; {{ expr }} parts are CEL over the task's data, e.g. "
        "Complete claim {{ input.claimId }}.",
    )
    planner: Planner = Field(description="The Model that proposes each next action.")
    actions: list[AgentAction] = Field(
        min_length=1,
        max_length=32,
        description="What the agent may do.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    state: dict[str, CelExpression] = Field(
        default_factory=dict,
        description="What the planner sees of the task: each key set to its CEL value; empty sends the task input.",
    )
    limits: AgentLimits = Field(default_factory=AgentLimits, description="When the agent stops.")
    escalation: Escalation | None = Field(
        default=None, description="When to hand over to people; omit to fail the step where it would escalate."
    )


def _exactly_the_block_for_type() -> list[dict[str, str]]:
    return [
        cel_rule(
            f"has(self.{step_type}) == (self.type == '{step_type}')",
            f"a step of type {step_type} needs a '{step_type}' block, and only such a step may have one",
            field_path=f".{step_type}",
        )
        for step_type in STEP_TYPES
    ]


class Step(K8sModel):
    """One node of the workflow graph."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            *_exactly_the_block_for_type(),
            cel_rule(
                "!(has(self.next) && has(self.end) && self.end)",
                "a step may set next or end, not both",
                field_path=".next",
            ),
        )
    )

    name: Name = Field(description="Unique name of the step within the workflow.")
    type: StepType = Field(description="What the step does: model, connector, rules, approval or agent.")
    model: ModelCall | None = Field(default=None, description="With type model: the model to call.")
    connector: ConnectorCall | None = Field(default=None, description="With type connector: the connector to call.")
    rules: Rules | None = Field(default=None, description="With type rules: values to decide and branches.")
    approval: Approval | None = Field(default=None, description="With type approval: the human gate.")
    agent: Agent | None = Field(default=None, description="With type agent: the goal, planner, actions and limits.")
    next: Name | None = Field(default=None, description="Step to continue with; omit to go to the next in the list.")
    end: bool = Field(default=False, description="End the task after this step.")
    retry: Retry = Field(default_factory=Retry, description="Attempts and backoff when the step fails.")
    timeout: Duration = Field(default="30s", description="Longest time one attempt may take.")


class SLA(K8sModel):
    """The service level a task of this workflow is held to."""

    deadline: Duration = Field(description="Time from submission by which a task must finish.")
    escalate_to: Name | None = Field(
        default=None, description="Step to jump to when the deadline passes (e.g. a human approval)."
    )


# Every place a step is referenced by name must name a step that exists: (where, "step s references nothing").
_DANGLING_REFERENCES = (
    ("next", "has(s.next) && !self.steps.exists(t, t.name == s.next)"),
    (
        "rules.branches[].next",
        "has(s.rules) && has(s.rules.branches) && s.rules.branches.exists(b, !self.steps.exists(t, t.name == b.next))",
    ),
    ("rules.default", "has(s.rules) && has(s.rules.default) && !self.steps.exists(t, t.name == s.rules.default)"),
    (
        "approval.onReject",
        "has(s.approval) && has(s.approval.onReject) && !self.steps.exists(t, t.name == s.approval.onReject)",
    ),
    (
        "approval.onExpire",
        "has(s.approval) && has(s.approval.onExpire) && !self.steps.exists(t, t.name == s.approval.onExpire)",
    ),
    (
        "agent.escalation.to",
        "has(s.agent) && has(s.agent.escalation) && !self.steps.exists(t, t.name == s.agent.escalation.to)",
    ),
)


def _step_reference_rules() -> list[dict[str, str]]:
    # Static messages: a messageExpression that names the offending steps costs as much as the rule again, and the
    # apiserver's CEL cost estimate for a 64-step list then exceeds the CRD's budget. The Workflow operator names
    # the step in the Valid condition.
    return [
        cel_rule(
            f"!self.steps.exists(s, {dangling})",
            f"every step's {where} must name a step of this workflow",
            field_path=".steps",
            reason="FieldValueInvalid",
        )
        for where, dangling in _DANGLING_REFERENCES
    ]


class WorkflowSpec(K8sModel):
    """Desired state of a Workflow."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            *_step_reference_rules(),
            cel_rule(
                "!has(self.sla) || !has(self.sla.escalateTo) || self.steps.exists(t, t.name == self.sla.escalateTo)",
                "sla.escalateTo must name a step of this workflow",
                field_path=".sla.escalateTo",
            ),
        )
    )

    description: str = Field(default="", max_length=4096, description="What the workflow automates.")
    input_schema: dict[str, Any] | None = Field(
        default=None,
        description="JSON Schema that a task's input must match; tasks with other input are refused with 422.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    steps: list[Step] = Field(
        min_length=1,
        max_length=64,
        description="The steps, run in list order unless a step says otherwise.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    sla: SLA | None = Field(default=None, description="Deadline for each task, and where to escalate.")
    policies: list[Name] = Field(
        default_factory=list, max_length=16, description="Policies applied to every task, besides selected ones."
    )


class WorkflowStatus(StatusBase):
    """Observed state of a Workflow. Conditions: Valid (reason Cycle, CelCompileError, ModelNotFound, ...), Ready."""

    version: str | None = Field(
        default=None,
        max_length=128,
        description="Content version of the last valid spec: what new tasks run (running tasks keep theirs).",
    )


class Workflow(Resource):
    """A graph of steps (model, connector, rules, approval, agent) with retries, timeouts and an SLA."""

    KIND: ClassVar[str] = "Workflow"
    PLURAL: ClassVar[str] = "workflows"
    SHORT_NAMES: ClassVar[tuple[str, ...]] = ("aiw",)
    PRINTER_COLUMNS: ClassVar[tuple[PrinterColumn, ...]] = (
        PrinterColumn(name="Version", type="string", json_path=".status.version", description="Definition version."),
        condition_column("Valid"),
        condition_column("Ready"),
        age_column(),
    )

    kind: Literal["Workflow"] = "Workflow"
    spec: WorkflowSpec
    status: WorkflowStatus | None = None
