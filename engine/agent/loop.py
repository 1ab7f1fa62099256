"""The agent step: ask the planner for the next action, check it, run it as a checkpointed sub-step, repeat.

One attempt of an agent step runs the loop until the planner is done, a limit stops it, or it escalates. Every
proposal is written (with the decision about it) before its action runs and finished after (``records``), so:

* a retried or re-claimed attempt (the worker crashed, the lease ran out) reads the record and resumes: finished
  actions are never run again; an action that may have started runs again with the same idempotency key
  (``<step key>/<proposal>``), as any step does;
* the planner is asked again only for a proposal that was never recorded, with the same key, so an idempotent
  planner answers the same.

Actions reuse the model and connector executors (traffic split, SSRF guard, residency, circuit breakers, the
``Idempotency-Key`` header). A failed action is retried in the attempt by the action's own ``retry``; once its
attempts are spent the failure goes back to the planner as an observation, like a denial or invalid arguments:
the agent may choose another way. A workflow action starts a child task and waits for it without holding a worker
(the step is deferred and re-claimed). Each proposal and action is a span; each decision an audit record.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import jsonschema_rs
from pydantic import ValidationError

from crds import checks
from crds.planner import ActionSpec, Budget, PlanRequest, PlanResponse
from crds.workflow import Agent, AgentAction, ConnectorCall, ModelCall, Step
from engine.agent import metrics
from engine.agent.records import FINAL_DECISIONS, ActionRecord, Checkpoints, Decision, Holder, proposal_subject
from engine.clock import Clock, utcnow
from engine.durations import parse_duration
from engine.errors import StepDeferredError, StepError
from engine.executors.base import StepContext, StepExecutor, StepOutcome
from engine.executors.http import HttpCaller
from engine.executors.model import MODEL_UNAVAILABLE
from engine.executors.resolvers import ConnectorResolver, ModelResolver, pick_endpoint
from engine.flow import cel
from engine.retry import is_retryable, retry_delay
from engine.tracing import ATTR_TASK_ID, tracer
from policies import agents as agent_rules
from policies import residency as residency_rules
from policies.effective import EffectiveAgentRule

if TYPE_CHECKING:
    from policies.audit import Entry as AuditEntry
    from policies.masking import WorkflowMasking

log = logging.getLogger(__name__)

SPAN_PLAN = "aiplane.engine.agent.plan"
SPAN_ACTION = "aiplane.engine.agent.action"

# Step error kinds of an agent step.
LIMIT_REACHED = "AgentLimitReached"
ESCALATION_UNAVAILABLE = "AgentEscalated"
BAD_PLANNER_ANSWER = "PlannerAnswerInvalid"
CHILD_WAIT = timedelta(seconds=1)
MAX_VALIDATORS = 1024

AgentRulesFor = Callable[[str], Sequence[EffectiveAgentRule]]


class ChildTasks(Protocol):
    """Runs a workflow action as a child task (the engine's intake)."""

    def start(
        self, *, tenant: str, workflow: str, version: str | None, input: Any, key: str, trace_context: str | None
    ) -> str:
        """Submit the child (idempotent by ``key``); its task id."""
        ...

    def outcome(self, tenant: str, task_id: str) -> tuple[str, Any, Mapping[str, Any] | None]:
        """(state, result, error) of the child."""
        ...


@dataclass(frozen=True)
class _Stop:
    """Why the loop ends: what the step outputs and where it continues."""

    status: str
    reason: str
    result: Any = None


class AgentExecutor:
    def __init__(
        self,
        checkpoints: Checkpoints,
        *,
        models: ModelResolver,
        connectors: ConnectorResolver,
        http: HttpCaller,
        model: StepExecutor,
        connector: StepExecutor,
        children: ChildTasks | None = None,
        rules_for: AgentRulesFor | None = None,
        residency: residency_rules.Residency | None = None,
        clock: Clock = utcnow,
        rng: random.Random | None = None,
        sleep: Callable[[float], None] = time.sleep,
        pii: WorkflowMasking | None = None,
        check_model: Callable[[str, str], Sequence[str]] | None = None,
    ) -> None:
        self.checkpoints = checkpoints
        self.models = models
        self.connectors = connectors
        self.http = http
        self.model = model
        self.connector = connector
        self.children = children
        self.rules_for = rules_for
        self.residency = residency
        self.clock = clock
        self.rng = rng or random.Random()
        self.sleep = sleep
        #: Masks proposals and observations before they are recorded, acted on or shown to the planner, as step
        #: inputs and outputs are (``policies.masking``).
        self.pii = pii
        #: Raises the step error of a call to a Model its own Policies refuse the tenant (``policies.model_calls``;
        #: ``ModelExecutor.check_model_policies``), asked before each planner call; actions go through the model
        #: executor, which asks it too. None: no Policy selects Models.
        self.check_model = check_model
        self._validators: dict[str, Any] = {}

    # ---------------------------------------------------------------- the loop

    def execute(self, ctx: StepContext) -> StepOutcome:
        agent = ctx.step.agent
        assert agent is not None
        holder = Holder(
            task_id=ctx.task_id,
            tenant=ctx.tenant,
            workflow=ctx.workflow,
            step=ctx.step.name,
            step_run_id=ctx.step_run_id,
            lease_token=ctx.lease_token,
        )
        records = self.checkpoints.load(ctx.step_run_id)
        activation = cel.activation(ctx.input, ctx.steps, ctx.vars)
        goal = checks.render_template(agent.goal, lambda expr: cel.evaluate(expr, activation, where="agent.goal"))
        state = (
            cel.evaluate_map(agent.state, activation, where=f"step {ctx.step.name!r} agent.state")
            if agent.state
            else ctx.input
        )
        started = records[0].created_at if records else self.clock()
        deadline = started + parse_duration(agent.limits.deadline)
        # The task's data class, for the Policies' agentActions rules (read once per attempt, only when there are any).
        data_class = self.checkpoints.data_class(ctx.task_id) if self.rules_for is not None else None
        while True:
            if records and records[-1].state == "running":
                records[-1] = self._run(ctx, holder, agent, records[-1])
                continue
            if records and records[-1].decision in FINAL_DECISIONS:
                return self._finish(ctx, agent, records)
            stop = self._limit(agent, records, deadline, self.clock())
            seq = len(records) + 1
            if stop is not None:
                records.append(self._record_limit(holder, agent, seq, stop))
                continue
            request = self._request(agent, goal, state, records, deadline)
            proposal, masking = self._masked_proposal(ctx, self._plan(ctx, agent, request, seq), seq)
            records.append(
                self._decide(
                    ctx,
                    holder=holder,
                    agent=agent,
                    seq=seq,
                    proposal=proposal,
                    records=records,
                    data_class=data_class,
                    masking=masking,
                )
            )

    def _finish(self, ctx: StepContext, agent: Agent, records: list[ActionRecord]) -> StepOutcome:
        last = records[-1]
        transcript = [record.as_json() for record in records]
        spent = round(sum(record.cost for record in records), 6)
        metrics.RUNS.labels(ctx.workflow, last.decision).inc()
        if last.decision == "done":
            output = {
                "status": "done",
                "result": last.proposal.result,
                "steps": len(records),
                "cost": spent,
                "transcript": transcript,
            }
            return StepOutcome(output=output)
        escalation = agent.escalation
        output = {"status": last.decision, "reason": last.reason, "steps": len(records), "cost": spent}
        if escalation is None or (last.decision == "limit" and not escalation.on_limit):
            kind = LIMIT_REACHED if last.decision == "limit" else ESCALATION_UNAVAILABLE
            # Not retried: running the loop again would stop at the same place.
            raise StepError(kind, f"agent step {ctx.step.name!r} stopped: {last.reason}", retryable=False)
        return StepOutcome(output={**output, "transcript": transcript}, next_step=escalation.to)

    @staticmethod
    def _limit(agent: Agent, records: Sequence[ActionRecord], deadline: datetime, now: datetime) -> str | None:
        limits = agent.limits
        spent = sum(record.cost for record in records)
        if len(records) >= limits.max_steps:
            return f"maxSteps reached: {len(records)} proposals of {limits.max_steps}"
        if spent + agent.planner.cost > limits.max_cost:
            return (
                f"maxCost reached: {spent:g} of {limits.max_cost:g} spent, and the next planner call costs "
                f"{agent.planner.cost:g}"
            )
        if now >= deadline:
            return f"deadline {limits.deadline} passed"
        return None

    def _record_limit(self, holder: Holder, agent: Agent, seq: int, reason: str) -> ActionRecord:
        metrics.PROPOSALS.labels(holder.workflow, "limit").inc()
        return self.checkpoints.propose(
            holder,
            seq=seq,
            proposal=PlanResponse(reasoning="(no planner call: a limit was reached)"),
            decision="limit",
            reason=reason,
            policies=[],
            target=None,
            cost=0.0,
            now=self.clock(),
        )

    # ---------------------------------------------------------------- planning

    def _request(
        self, agent: Agent, goal: str, state: Any, records: Sequence[ActionRecord], deadline: datetime
    ) -> PlanRequest:
        spent = sum(record.cost for record in records)
        transcript = [entry for entry in (r.transcript_entry() for r in records) if entry is not None]
        return PlanRequest(
            goal=goal,
            state=state,
            actions=[_spec(action) for action in agent.actions],
            transcript=transcript,
            budget=Budget(
                steps_left=agent.limits.max_steps - len(records),
                cost_left=round(agent.limits.max_cost - spent, 6),
                seconds_left=max(0.0, (deadline - self.clock()).total_seconds()),
            ),
            config=agent.planner.config,
        )

    def _plan(self, ctx: StepContext, agent: Agent, request: PlanRequest, seq: int) -> PlanResponse:
        planner = agent.planner
        residency = self.residency
        denied = (
            residency.check(ctx.tenant, ctx.workflow, "model", planner.model, task_region=ctx.region)
            if residency
            else None
        )
        if denied is not None:  # the planner would see the task's data: not retried, the answer stays the same
            raise StepError(residency_rules.DENIED, f"planner: {denied}", retryable=False)
        allowed_by = self.check_model(ctx.tenant, planner.model) if self.check_model is not None else ()
        endpoint = pick_endpoint(self.models.endpoints(planner.model), self.rng)
        if endpoint is None:
            raise StepError(MODEL_UNAVAILABLE, f"planner model {planner.model!r} has no live endpoint", retryable=True)
        url = f"{endpoint.url.rstrip('/')}/{planner.api}"
        call = replace(ctx, idempotency_key=f"{ctx.idempotency_key}/plan/{seq}")
        attributes: dict[str, str | int] = {
            ATTR_TASK_ID: ctx.task_id,
            "aiplane.agent.proposal": seq,
            "aiplane.model.name": planner.model,
            "aiplane.model.version": endpoint.version,
        }
        with tracer().start_as_current_span(SPAN_PLAN, attributes=attributes) as span:
            sent = True
            try:
                answer = self.http.call(
                    call,
                    downstream=f"model/{planner.model}",
                    method="POST",
                    url=url,
                    body=request.model_dump(mode="json", by_alias=True),
                    timeout=parse_duration(planner.timeout).total_seconds(),
                )
            except StepDeferredError:
                sent = False  # held back: the planner saw nothing
                raise
            finally:
                if sent and allowed_by:  # the attempt's allow record names the planner's Policies too
                    ctx.allowed.append({"model": planner.model, "policies": list(allowed_by)})
            try:
                proposal = PlanResponse.model_validate(answer)
            except ValidationError as error:
                problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in error.errors())
                # Retryable: a planner (an LLM above all) may answer well the next time.
                raise StepError(
                    BAD_PLANNER_ANSWER,
                    f"planner {planner.model!r} answered something that is not a PlanResponse ({problems})",
                    retryable=True,
                ) from None
            span.set_attribute("aiplane.agent.action", proposal.action or ("done" if proposal.done else ""))
            span.set_attribute("aiplane.agent.confidence", proposal.confidence)
        return proposal

    def _masked_proposal(
        self, ctx: StepContext, proposal: PlanResponse, seq: int
    ) -> tuple[PlanResponse, AuditEntry | None]:
        """The proposal as it is kept, and the audit record of what was masked in its arguments and result (None:
        nothing). Its free-text reasoning is masked too, but not recorded (free text, as error texts)."""
        if self.pii is None:
            return proposal, None
        tenant, workflow, step = ctx.tenant, ctx.workflow, ctx.step.name
        root = f"steps.{step}.proposals.{seq}"
        arguments = self.pii.mask_at(tenant, workflow, proposal.arguments, f"{root}.arguments")
        result = self.pii.mask_at(tenant, workflow, proposal.result, f"{root}.result")
        masked = proposal.model_copy(
            update={
                "arguments": arguments.value,
                "result": result.value,
                "reasoning": self.pii.text(tenant, workflow, proposal.reasoning),
            }
        )
        if not (arguments.summary or result.summary):
            return masked, None
        first = arguments.summary if arguments.summary else result.summary  # its action
        summary = replace(first, items=arguments.summary.items + result.summary.items)
        subject = proposal_subject(ctx.task_id, step, seq)
        return masked, self.pii.audit_entry(tenant, workflow, subject, summary, actor="engine")

    def _decide(
        self,
        ctx: StepContext,
        *,
        holder: Holder,
        agent: Agent,
        seq: int,
        proposal: PlanResponse,
        records: Sequence[ActionRecord],
        data_class: str | None,
        masking: AuditEntry | None = None,
    ) -> ActionRecord:
        """Check a proposal and record it with its decision (and ``masking``, the record of what was masked in
        it)."""
        action = next((a for a in agent.actions if a.name == proposal.action), None)
        target = _target(action) if action is not None else None
        decision, reason, policies = self._judge(
            ctx, agent=agent, proposal=proposal, action=action, records=records, data_class=data_class
        )
        metrics.PROPOSALS.labels(ctx.workflow, decision).inc()
        trace = tracer().start_as_current_span(
            f"{SPAN_PLAN}.decision",
            attributes={
                ATTR_TASK_ID: ctx.task_id,
                "aiplane.agent.proposal": seq,
                "aiplane.agent.decision": decision,
                "aiplane.agent.reason": reason[:512],
            },
        )
        with trace:
            return self.checkpoints.propose(
                holder,
                seq=seq,
                proposal=proposal,
                decision=decision,
                reason=reason,
                policies=policies,
                target=target,
                cost=agent.planner.cost,
                now=self.clock(),
                masking=masking,
            )

    def _judge(
        self,
        ctx: StepContext,
        *,
        agent: Agent,
        proposal: PlanResponse,
        action: AgentAction | None,
        records: Sequence[ActionRecord],
        data_class: str | None,
    ) -> tuple[Decision, str, list[str]]:
        if proposal.done:
            return "done", proposal.reasoning or "the planner reports the goal reached", []
        escalation = agent.escalation
        if proposal.escalate:
            return "escalated", f"the planner asked for a human: {proposal.reasoning or 'no reason given'}", []
        if escalation is not None and proposal.confidence < escalation.min_confidence:
            return (
                "escalated",
                f"confidence {proposal.confidence:g} is below escalation.minConfidence {escalation.min_confidence:g} "
                f"(proposed {proposal.action!r})",
                [],
            )
        if escalation is not None and escalation.when is not None:
            variables = {
                "proposal": proposal.model_dump(mode="json", by_alias=True),
                "transcript": [record.as_json() for record in records],
                **cel.activation(ctx.input, ctx.steps, ctx.vars),
            }
            if cel.evaluate(escalation.when, variables, where=f"step {ctx.step.name!r} agent.escalation.when") is True:
                return "escalated", f"escalation.when {escalation.when!r} holds for proposal {proposal.action!r}", []
        if action is None:
            names = ", ".join(a.name for a in agent.actions)
            return "invalid", f"no action {proposal.action!r}: the actions are {names}", []
        problems = self._argument_problems(action, proposal.arguments)
        if problems:
            return "invalid", f"arguments of {action.name!r} do not match its inputSchema: {problems}", []
        spent = sum(record.cost for record in records) + agent.planner.cost
        if spent + action.cost > agent.limits.max_cost:
            return (
                "limit",
                f"maxCost reached: action {action.name!r} costs {action.cost:g}, {agent.limits.max_cost - spent:g} "
                "is left",
                [],
            )
        denied = self._residency(ctx, action)
        if denied is not None:
            return "denied", denied, []
        if self.rules_for is not None:
            proposed = agent_rules.Proposed(
                action=action.name,
                target=_target(action),
                arguments=proposal.arguments,
                tenant=ctx.tenant,
                data_class=data_class,
                input=ctx.input,
            )
            verdict = agent_rules.decide(self.rules_for(ctx.workflow), proposed)
            policies = [str(ref) for ref in verdict.policies]
            if not verdict.allowed:
                return "denied", verdict.reason, policies
            return "allowed", verdict.reason, policies
        return "allowed", "no agent action rule applies", []

    def _argument_problems(self, action: AgentAction, arguments: Mapping[str, Any]) -> str:
        key = json.dumps(action.input_schema, sort_keys=True)
        validator = self._validators.get(key)
        if validator is None:
            try:
                validator = jsonschema_rs.validator_for(action.input_schema, offline=True)
            except (ValueError, jsonschema_rs.ValidationError) as error:
                raise StepError(
                    "InvalidSpec",
                    f"action {action.name!r} has an inputSchema that is not a valid JSON Schema "
                    f"({str(error).splitlines()[0]}); fix the Workflow",
                    retryable=False,
                ) from None
            if len(self._validators) >= MAX_VALIDATORS:
                self._validators.clear()
            self._validators[key] = validator
        found = []
        for problem in validator.iter_errors(dict(arguments)):
            path = "/".join(str(part) for part in problem.instance_path) or "(arguments)"
            found.append(f"{path}: {problem.message}")
            if len(found) == 10:
                break
        return "; ".join(found)

    def _residency(self, ctx: StepContext, action: AgentAction) -> str | None:
        if self.residency is None:
            return None
        if action.model is not None:
            return self.residency.check(ctx.tenant, ctx.workflow, "model", action.model.name, task_region=ctx.region)
        if action.connector is not None:
            spec = self.connectors.connector(action.connector.name)
            region = spec.region if spec is not None else None
            return self.residency.check(
                ctx.tenant, ctx.workflow, "connector", action.connector.name, region, task_region=ctx.region
            )
        return None

    # ---------------------------------------------------------------- acting

    def _run(self, ctx: StepContext, holder: Holder, agent: Agent, record: ActionRecord) -> ActionRecord:
        action = next((a for a in agent.actions if a.name == record.proposal.action), None)
        if action is None:  # the spec a running task uses never changes, so this is a corrupt record
            raise StepError(
                "InvalidState", f"recorded action {record.proposal.action!r} is not in the spec", retryable=False
            )
        target = _target(action)
        attributes: dict[str, str | int] = {
            ATTR_TASK_ID: ctx.task_id,
            "aiplane.agent.proposal": record.seq,
            "aiplane.agent.action": action.name,
            "aiplane.agent.target": target,
        }
        with tracer().start_as_current_span(SPAN_ACTION, attributes=attributes) as span:
            if action.workflow is not None:
                succeeded, observation, error, attempts = self._run_child(ctx, holder, action, record)
            else:
                succeeded, observation, error, attempts = self._run_call(ctx, action, record)
            span.set_attribute("aiplane.agent.outcome", "succeeded" if succeeded else "failed")
        masking = None
        if self.pii is not None:
            root = f"steps.{ctx.step.name}.proposals.{record.seq}.observation"
            masked = self.pii.mask_at(ctx.tenant, ctx.workflow, observation, root)
            observation = masked.value
            if masked.summary:
                subject = proposal_subject(ctx.task_id, ctx.step.name, record.seq)
                masking = self.pii.audit_entry(ctx.tenant, ctx.workflow, subject, masked.summary, actor="engine")
            if error is not None and isinstance(error.get("message"), str):
                error = {**error, "message": self.pii.text(ctx.tenant, ctx.workflow, error["message"])}
        metrics.ACTIONS.labels(ctx.workflow, "succeeded" if succeeded else "failed").inc()
        return self.checkpoints.finish(
            holder,
            record,
            succeeded=succeeded,
            observation=observation,
            error=error,
            action_cost=action.cost,
            attempts=attempts,
            target=target,
            now=self.clock(),
            masking=masking,
        )

    def _run_call(
        self, ctx: StepContext, action: AgentAction, record: ActionRecord
    ) -> tuple[bool, Any, dict[str, Any] | None, int]:
        """Run a model or connector action with its own retries, in this attempt."""
        calls: dict[str, Any]
        if action.model is not None:
            calls = {"type": "model", "model": ModelCall(name=action.model.name, api=action.model.api)}
        else:
            assert action.connector is not None
            connector = action.connector
            calls = {
                "type": "connector",
                "connector": ConnectorCall(name=connector.name, operation=connector.operation),
            }
        # The step the executor sees: the action's call, retries and timeout, under the agent step's name.
        step = Step(name=ctx.step.name, retry=action.retry, timeout=action.timeout, **calls)
        executor = self.model if action.model is not None else self.connector
        attempt = record.attempts
        while True:
            attempt += 1
            sub = replace(
                ctx,
                step=step,
                input=dict(record.proposal.arguments),
                attempt=attempt,
                idempotency_key=f"{ctx.idempotency_key}/{record.seq}",
                timeout=parse_duration(action.timeout).total_seconds(),
            )
            try:
                return True, executor.execute(sub).output, None, attempt
            except StepError as error:
                if not is_retryable(error, action.retry) or attempt >= action.retry.max_attempts:
                    return False, None, error.as_dict(), attempt
                delay = retry_delay(error, action.retry, attempt, self.rng).total_seconds()
                log.info(
                    "agent action %s of task %s failed (attempt %d), retrying in %.2fs: %s",
                    action.name,
                    ctx.task_id,
                    attempt,
                    delay,
                    error,
                )
                self.sleep(delay)

    def _run_child(
        self, ctx: StepContext, holder: Holder, action: AgentAction, record: ActionRecord
    ) -> tuple[bool, Any, dict[str, Any] | None, int]:
        """Start the child task once, then wait for it without holding a worker."""
        assert action.workflow is not None
        if self.children is None:
            raise StepError("NotConfigured", "this worker cannot run workflow actions", retryable=True)
        if record.child_task_id is None:
            try:
                child = self.children.start(
                    tenant=ctx.tenant,
                    workflow=action.workflow.name,
                    version=action.workflow.version,
                    input=dict(record.proposal.arguments),
                    key=f"agent:{ctx.idempotency_key}/{record.seq}",
                    trace_context=ctx.trace_context,
                )
            except StepError as refused:
                if refused.retryable:
                    raise
                return False, None, refused.as_dict(), 1
            record = self.checkpoints.started_child(holder, record, child)
        assert record.child_task_id is not None
        state, result, error = self.children.outcome(ctx.tenant, record.child_task_id)
        if state == "succeeded":
            return True, result, None, 1
        if state in ("failed", "cancelled", "dead_lettered", "rejected"):
            failure = dict(error or {"kind": "ChildTaskFailed"})
            failure.setdefault(
                "message", f"child task {record.child_task_id} of workflow {action.workflow.name!r} {state}"
            )
            return False, None, failure, 1
        raise StepDeferredError(f"waiting for child task {record.child_task_id} ({state})", delay=CHILD_WAIT)


def _target(action: AgentAction) -> str:
    if action.model is not None:
        return f"model/{action.model.name}"
    if action.connector is not None:
        return f"connector/{action.connector.name}"
    assert action.workflow is not None
    return f"workflow/{action.workflow.name}"


def _spec(action: AgentAction) -> ActionSpec:
    kind = "model" if action.model is not None else "connector" if action.connector is not None else "workflow"
    return ActionSpec(
        name=action.name,
        description=action.description,
        kind=kind,
        input_schema=action.input_schema,
        cost=action.cost,
    )
