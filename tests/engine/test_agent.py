"""Agent steps: the planner proposes, the engine checks, runs and records each action; limits, policy,
validation and escalation stop or redirect it; a crashed worker's agent resumes without repeating an action.

The planner here is the downstream HTTP server answering a script of ``PlanResponse`` bodies: these tests are
about the engine's loop. The shipped planners are BentoML services with tests of their own (tests/planners).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from crds.policy import PII, AgentActionRule, Policy
from engine import Engine, StaticConnectorResolver, StaticModelResolver, TaskSpanStore, TaskState
from engine.errors import PolicyDeniedError
from engine.runtime.intake import Accepted, Submission
from engine.store.schema import agent_actions, audit_log
from policies.effective import EffectiveAgentRule, PolicyRef
from policies.masking import WorkflowMasking
from policies.residency import Residency
from tests.engine.conftest import (
    QUICK_RETRY,
    Downstream,
    EngineFactory,
    Reply,
    fast_worker,
    kill_worker_mid_call,
    wait_done,
    wait_state,
)

REPO = Path(__file__).resolve().parents[2]
PLAN = "/planner/plan"


def models(downstream: Downstream) -> StaticModelResolver:
    return StaticModelResolver(
        {
            "m": [{"version": "v1", "url": downstream.url("/models/m"), "weight": 100}],
            "planner": [{"version": "v1", "url": downstream.url("/planner"), "weight": 100}],
        }
    )


def act(action: str, confidence: float = 0.9, **arguments: Any) -> Reply:
    return Reply(body={"action": action, "arguments": arguments, "confidence": confidence, "reasoning": f"do {action}"})


def done(**result: Any) -> Reply:
    return Reply(body={"done": True, "result": result, "confidence": 1.0, "reasoning": "goal reached"})


def agent_workflow(**agent: Any) -> dict[str, Any]:
    block: dict[str, Any] = {
        "goal": "Complete claim {{ input.claimId }}",
        "planner": {"model": "planner"},
        "actions": [
            {
                "name": "extract",
                "description": "Extract the claim's fields from its document.",
                "model": {"name": "m", "api": "extract"},
                "inputSchema": {
                    "type": "object",
                    "required": ["document"],
                    "properties": {"document": {"type": "string"}},
                },
                "retry": QUICK_RETRY,
            },
            {
                "name": "request-document",
                "description": "Ask the claimant for a missing document.",
                "connector": {"name": "c"},
                "retry": QUICK_RETRY,
            },
        ],
        **agent,
    }
    return {
        "steps": [
            {"name": "agent", "type": "agent", "agent": block, "end": True},
            {"name": "review", "type": "approval", "approval": {"prompt": "The agent needs a human."}},
        ]
    }


def connectors(downstream: Downstream) -> dict[str, Any]:
    return {"c": {"type": "http", "http": {"url": downstream.url("/c/x"), "allowPrivateNetworks": True}}}


def make(make_engine: EngineFactory, db_url: str, downstream: Downstream, **kwargs: Any) -> Engine:
    kwargs.setdefault("model_resolver", models(downstream))
    kwargs.setdefault("connector_resolver", StaticConnectorResolver(connectors(downstream)))
    return make_engine(db_url, **kwargs)


def plan_requests(downstream: Downstream) -> list[dict[str, Any]]:
    return [call.body for call in downstream.calls[PLAN]]


def records(engine: Engine, task_id: str) -> list[Any]:
    with engine.db.read() as conn:
        return list(
            conn.execute(
                sa.select(agent_actions).where(agent_actions.c.task_id == task_id).order_by(agent_actions.c.seq)
            )
        )


def test_the_agent_reaches_its_goal_and_every_proposal_is_recorded(
    make_engine: EngineFactory, db_url: str, downstream: Downstream
) -> None:
    engine = make(make_engine, db_url, downstream)
    engine.register_workflow("triage", agent_workflow())
    downstream.script(PLAN, act("extract", document="claim text"), act("request-document", kind="police"), done(ok=1))
    with fast_worker(engine):
        task = engine.submit("acme", "triage", {"claimId": "C-7"})
        finished = wait_done(engine, "acme", task.id)

    assert finished.state == TaskState.SUCCEEDED, finished.error
    output = finished.result
    assert (output["status"], output["result"], output["steps"], output["cost"]) == ("done", {"ok": 1}, 3, 5.0)
    assert [entry["state"] for entry in output["transcript"]] == ["succeeded", "succeeded", "done"]
    assert (downstream.count("/models/m/extract"), downstream.count("/c/x")) == (1, 1)
    # The action's arguments are its request body; each action has its own idempotency key.
    [extract] = downstream.calls["/models/m/extract"]
    assert extract.body == {"document": "claim text"}
    first, second, third = plan_requests(downstream)
    assert first["goal"] == "Complete claim C-7"
    assert first["state"] == {"claimId": "C-7"}
    assert [a["name"] for a in first["actions"]] == ["extract", "request-document"]
    assert first["budget"] == {"stepsLeft": 10, "costLeft": 50.0, "secondsLeft": first["budget"]["secondsLeft"]}
    assert first["transcript"] == []
    [seen] = second["transcript"]
    assert (seen["action"], seen["outcome"], seen["observation"]["received"]) == (
        "extract",
        "succeeded",
        {"document": "claim text"},
    )
    assert len(third["transcript"]) == 2
    keys = [call.headers["Idempotency-Key"] for call in downstream.calls[PLAN]]
    action_key = extract.headers["Idempotency-Key"]
    assert len(set(keys)) == 3
    assert action_key.endswith("/1")
    assert [(r.seq, r.decision, r.state) for r in records(engine, task.id)] == [
        (1, "allowed", "succeeded"),
        (2, "allowed", "succeeded"),
        (3, "done", "done"),
    ]
    with engine.db.read() as conn:
        kinds = [row.kind for row in conn.execute(sa.select(audit_log.c.kind).order_by(audit_log.c.seq))]
    assert kinds == ["agent-proposal", "agent-action", "agent-proposal", "agent-action", "agent-proposal"]
    assert engine.audit.verify().ok


def test_each_proposal_decision_and_action_is_a_span_of_the_task(
    spans: TaskSpanStore, make_engine: EngineFactory, db_url: str, downstream: Downstream
) -> None:
    engine = make(make_engine, db_url, downstream)
    engine.register_workflow("triage", agent_workflow())
    downstream.script(PLAN, act("extract", document="x"), act("fly"), done())
    with fast_worker(engine):
        task = engine.submit("acme", "triage", {"claimId": "C-19"})
        assert wait_done(engine, "acme", task.id).state == TaskState.SUCCEEDED

    found = [(span.name, dict(span.attributes or {})) for span in spans.spans(task.id)]
    plans = [a for name, a in found if name == "aiplane.engine.agent.plan"]
    decisions = [a for name, a in found if name == "aiplane.engine.agent.plan.decision"]
    [action] = [a for name, a in found if name == "aiplane.engine.agent.action"]
    assert [a["aiplane.agent.action"] for a in plans] == ["extract", "fly", "done"]
    assert [a["aiplane.agent.decision"] for a in decisions] == ["allowed", "invalid", "done"]
    assert (action["aiplane.agent.target"], action["aiplane.agent.outcome"]) == ("model/m", "succeeded")
    assert "aiplane.engine.model_call" in {name for name, _ in found}


def test_personal_data_in_proposals_and_observations_is_masked_before_it_is_recorded(
    make_engine: EngineFactory, db_url: str, downstream: Downstream
) -> None:
    pii = PII.model_validate({"entities": ["EMAIL_ADDRESS"], "action": "redact"})
    masking = WorkflowMasking(lambda workflow: pii if workflow == "triage" else None, None)
    engine = make(make_engine, db_url, downstream, pii=masking)
    engine.register_workflow("triage", agent_workflow())
    downstream.script("/models/m/extract", Reply(body={"contact": "jane.doe@example.com"}))
    downstream.script(PLAN, act("extract", document="write to jane.doe@example.com"), done())
    with fast_worker(engine):
        task = engine.submit("acme", "triage", {"claimId": "C-20"})
        assert wait_done(engine, "acme", task.id).state == TaskState.SUCCEEDED

    [extract] = downstream.calls["/models/m/extract"]
    assert extract.body == {"document": "write to <EMAIL_ADDRESS>"}  # the action gets what is recorded
    assert plan_requests(downstream)[1]["transcript"][0]["observation"] == {"contact": "<EMAIL_ADDRESS>"}
    with engine.db.read() as conn:
        stored = " ".join(str(value) for row in conn.execute(sa.select(agent_actions)) for value in row)
    assert "jane.doe" not in stored
    # Each masking is on the audit log with the proposal it belongs to (the proposal's, then its observation's):
    # paths, never the value.
    proposal = f"task/{task.id}/step/agent/proposal/1"
    masks = [json.loads(r.details) for r in engine.audit.records() if (r.subject, r.decision) == (proposal, "mask")]
    assert [m["paths"] for m in masks] == [
        ["steps.agent.proposals.1.arguments.document"],
        ["steps.agent.proposals.1.observation.contact"],
    ]
    assert {m["action"] for m in masks} == {"redact"}
    assert "jane.doe" not in "".join(r.details for r in engine.audit.records())
    assert engine.audit.verify().ok


def test_residency_denies_an_action_out_of_region_and_refuses_a_planner_out_of_region(
    make_engine: EngineFactory, db_url: str, downstream: Downstream
) -> None:
    eu_only = Policy.model_validate(
        {
            "metadata": {"name": "eu-only", "namespace": "claims"},
            "spec": {"selector": {"matchLabels": {"data": "pii"}}, "residency": {"regions": ["eu-west"]}},
        }
    )
    workflows = {"triage": ("claims", {"data": "pii"}), "far": ("claims", {"data": "pii"})}
    residency = Residency.from_manifests([eu_only], workflows, {"planner": "eu-west", "m": "us-east", "far": "us-east"})
    resolver = models(downstream)
    resolver.models["far"] = resolver.models["planner"]
    engine = make(make_engine, db_url, downstream, residency=residency, model_resolver=resolver)
    engine.register_workflow("triage", agent_workflow())
    far = agent_workflow()
    far["steps"][0]["agent"]["planner"]["model"] = "far"
    engine.register_workflow("far", far)
    downstream.script(PLAN, act("extract", document="x"), done())
    with fast_worker(engine):
        task = engine.submit("acme", "triage", {"claimId": "C-21"})
        assert wait_done(engine, "acme", task.id).state == TaskState.SUCCEEDED
        with pytest.raises(PolicyDeniedError, match="step 'agent': workflow 'far' keeps its data in eu-west"):
            engine.submit("acme", "far", {"claimId": "C-22"})

    assert downstream.count("/models/m/extract") == 0
    denied, _ = records(engine, task.id)
    assert denied.decision == "denied"
    assert "model 'm' is in 'us-east', so it is not called (data residency)" in denied.reason


def test_max_steps_stops_the_agent_and_escalates_with_the_transcript(
    make_engine: EngineFactory, db_url: str, downstream: Downstream
) -> None:
    engine = make(make_engine, db_url, downstream)
    engine.register_workflow(
        "triage", agent_workflow(limits={"maxSteps": 2}, escalation={"to": "review", "minConfidence": 0.1})
    )
    downstream.script(PLAN, act("request-document", kind="police"))
    with fast_worker(engine):
        task = engine.submit("acme", "triage", {"claimId": "C-8"})
        waiting = wait_state(engine, "acme", task.id, TaskState.WAITING)

    assert waiting.current_step == "review"
    assert downstream.count(PLAN) == 2
    [agent] = [s for s in engine.steps("acme", task.id) if s.name == "agent"]
    assert agent.output["status"] == "limit"
    assert "maxSteps reached: 2 proposals of 2" in agent.output["reason"]
    assert [entry["action"] for entry in agent.output["transcript"]] == ["request-document", "request-document", None]
    [approval] = engine.approvals("acme").items
    assert approval.step == "review"


def test_a_limit_without_escalation_dead_letters_the_task(
    make_engine: EngineFactory, db_url: str, downstream: Downstream
) -> None:
    engine = make(make_engine, db_url, downstream)
    engine.register_workflow("triage", agent_workflow(limits={"maxSteps": 1}))
    downstream.script(PLAN, act("request-document"))
    with fast_worker(engine):
        task = engine.submit("acme", "triage", {"claimId": "C-9"})
        finished = wait_done(engine, "acme", task.id)

    assert finished.state == TaskState.DEAD_LETTERED
    assert finished.error is not None
    assert finished.error["kind"] == "AgentLimitReached"
    assert downstream.count("/c/x") == 1


def test_the_cost_budget_stops_the_agent_before_an_action_it_cannot_afford(
    make_engine: EngineFactory, db_url: str, downstream: Downstream
) -> None:
    engine = make(make_engine, db_url, downstream)
    # planner 1 + extract 1 = 2 spent; the next proposal (1) leaves 1, and extract costs 1.5.
    workflow = agent_workflow(limits={"maxCost": 3.4}, escalation={"to": "review", "minConfidence": 0.1})
    workflow["steps"][0]["agent"]["actions"][0]["cost"] = 1.0
    workflow["steps"][0]["agent"]["actions"][1]["cost"] = 1.5
    engine.register_workflow("triage", workflow)
    downstream.script(PLAN, act("extract", document="x"), act("request-document"))
    with fast_worker(engine):
        task = engine.submit("acme", "triage", {"claimId": "C-10"})
        wait_state(engine, "acme", task.id, TaskState.WAITING)

    [agent] = [s for s in engine.steps("acme", task.id) if s.name == "agent"]
    assert agent.output["status"] == "limit"
    assert "maxCost reached: action 'request-document' costs 1.5" in agent.output["reason"]
    assert (downstream.count("/models/m/extract"), downstream.count("/c/x")) == (1, 0)
    assert agent.output["cost"] == 3.0


def test_a_disallowed_action_is_denied_recorded_and_told_to_the_planner(
    make_engine: EngineFactory, db_url: str, downstream: Downstream
) -> None:
    deny = AgentActionRule.model_validate(
        {"name": "no-mail-for-pii", "effect": "deny", "actions": ["connector/c"], "dataClasses": ["pii"]}
    )
    rules = (EffectiveAgentRule(deny, PolicyRef("claims", "agent-guard", 3)),)
    engine = make(make_engine, db_url, downstream, agent_rules=lambda workflow: rules)
    engine.register_workflow("triage", agent_workflow())
    downstream.script(PLAN, act("request-document", kind="police"), done(outcome="escalated by hand"))
    with fast_worker(engine):
        # The same workflow for a task without the data class: the rule does not apply.
        other = engine.submit("acme", "triage", {"claimId": "C-12"})
        assert wait_done(engine, "acme", other.id).state == TaskState.SUCCEEDED
        downstream.script(PLAN, act("request-document", kind="police"), done(outcome="escalated by hand"))
        [accepted] = engine.submit_many(
            [Submission(tenant="acme", workflow="triage", input={"claimId": "C-11"}, annotations={"privacy": "pii"})]
        )
        assert isinstance(accepted, Accepted)
        task = accepted.task
        finished = wait_done(engine, "acme", task.id)

    assert finished.state == TaskState.SUCCEEDED
    assert downstream.count("/c/x") == 1  # only the ungoverned task's
    denied, _ = records(engine, task.id)
    assert (denied.decision, denied.state, denied.policies) == ("denied", "denied", ["claims/agent-guard@3"])
    assert "denied by agent action rule claims/agent-guard@3/no-mail-for-pii" in denied.reason
    told = plan_requests(downstream)[-1]["transcript"][0]
    assert (told["outcome"], told["error"]) == ("denied", denied.reason)
    with engine.db.read() as conn:
        decisions = [
            (row.decision, json.loads(row.details)["policies"])
            for row in conn.execute(sa.select(audit_log).where(audit_log.c.subject.contains(task.id)))
        ]
    assert decisions[0] == ("denied", ["claims/agent-guard@3"])


def test_invalid_arguments_are_refused_before_anything_is_called(
    make_engine: EngineFactory, db_url: str, downstream: Downstream
) -> None:
    engine = make(make_engine, db_url, downstream)
    engine.register_workflow("triage", agent_workflow())
    downstream.script(PLAN, act("extract", document=5), act("fly", to="mars"), done())
    with fast_worker(engine):
        task = engine.submit("acme", "triage", {"claimId": "C-13"})
        assert wait_done(engine, "acme", task.id).state == TaskState.SUCCEEDED

    assert downstream.count("/models/m/extract") == 0
    wrong_type, unknown, _ = records(engine, task.id)
    assert (wrong_type.decision, unknown.decision) == ("invalid", "invalid")
    assert "arguments of 'extract' do not match its inputSchema: document: 5 is not of type \"string\"" in (
        wrong_type.reason
    )
    assert "no action 'fly': the actions are extract, request-document" in unknown.reason
    told = plan_requests(downstream)[2]["transcript"]
    assert [entry["outcome"] for entry in told] == ["invalid", "invalid"]


def test_low_confidence_escalates_to_an_approval_with_the_transcript(
    make_engine: EngineFactory, db_url: str, downstream: Downstream
) -> None:
    engine = make(make_engine, db_url, downstream)
    engine.register_workflow("triage", agent_workflow(escalation={"to": "review", "minConfidence": 0.7}))
    downstream.script(PLAN, act("extract", document="x"), act("request-document", confidence=0.3, kind="?"))
    with fast_worker(engine):
        task = engine.submit("acme", "triage", {"claimId": "C-14"})
        wait_state(engine, "acme", task.id, TaskState.WAITING)
        [approval] = engine.approvals("acme").items
        engine.approve(approval.id, "alice", "I called the claimant", tenant="acme", roles={"approver"})
        finished = wait_done(engine, "acme", task.id)

    assert finished.state == TaskState.SUCCEEDED
    assert downstream.count("/c/x") == 0
    [agent] = [s for s in engine.steps("acme", task.id) if s.name == "agent"]
    assert agent.output["status"] == "escalated"
    assert "confidence 0.3 is below escalation.minConfidence 0.7" in agent.output["reason"]
    assert [e["state"] for e in agent.output["transcript"]] == ["succeeded", "escalated"]
    assert agent.output["transcript"][0]["observation"]["received"] == {"document": "x"}


def test_a_failing_action_is_retried_then_reported_to_the_planner(
    make_engine: EngineFactory, db_url: str, downstream: Downstream
) -> None:
    engine = make(make_engine, db_url, downstream)
    engine.register_workflow("triage", agent_workflow())
    downstream.script("/models/m/extract", Reply(status=503), Reply(status=200, body={"amount": 12}))
    downstream.script("/c/x", Reply(status=500))
    downstream.script(PLAN, act("extract", document="x"), act("request-document"), done())
    with fast_worker(engine):
        task = engine.submit("acme", "triage", {"claimId": "C-15"})
        assert wait_done(engine, "acme", task.id).state == TaskState.SUCCEEDED

    extract, mail, _ = records(engine, task.id)
    assert (extract.state, extract.attempts) == ("succeeded", 2)
    assert (mail.state, mail.attempts) == ("failed", 3)
    assert downstream.count("/c/x") == 3
    first, second = downstream.calls["/models/m/extract"]
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"]
    told = plan_requests(downstream)[2]["transcript"][1]
    assert told["outcome"] == "failed"
    assert "500" in told["error"]


def test_a_workflow_action_runs_a_child_task_without_holding_a_worker(
    make_engine: EngineFactory, db_url: str, downstream: Downstream
) -> None:
    engine = make(make_engine, db_url, downstream)
    engine.register_workflow(
        "refund",
        {"steps": [{"name": "pay", "type": "connector", "connector": {"name": "c", "input": {"n": "input.n"}}}]},
    )
    workflow = agent_workflow()
    workflow["steps"][0]["agent"]["actions"].append(
        {"name": "refund", "description": "Refund the claimant.", "workflow": {"name": "refund"}}
    )
    engine.register_workflow("triage", workflow)
    downstream.script(PLAN, act("refund", n=3), done())
    with fast_worker(engine, concurrency=1):
        task = engine.submit("acme", "triage", {"claimId": "C-16"})
        finished = wait_done(engine, "acme", task.id)

    assert finished.state == TaskState.SUCCEEDED
    [refund, _] = records(engine, task.id)
    assert refund.state == "succeeded"
    child = engine.get("acme", refund.child_task_id)
    assert (child.workflow, child.state, child.input) == ("refund", TaskState.SUCCEEDED, {"n": 3})
    assert json.loads(refund.observation)["received"] == {"n": 3}


def test_a_killed_worker_resumes_the_loop_without_repeating_a_completed_action(
    make_engine: EngineFactory, db_url: str, downstream: Downstream, tmp_path: Path
) -> None:
    engine = make(make_engine, db_url, downstream)
    engine.register_workflow("triage", agent_workflow())
    resolvers = {
        "models": {
            "m": [{"version": "v1", "url": downstream.url("/models/m"), "weight": 100}],
            "planner": [{"version": "v1", "url": downstream.url("/planner"), "weight": 100}],
        },
        "connectors": connectors(downstream),
    }
    downstream.script(PLAN, act("extract", document="x"), act("request-document", kind="police"), done(ok=True))
    task = engine.submit("acme", "triage", {"claimId": "C-17"})
    # The second action's call is held open until its worker is dead.
    kill_worker_mid_call(db_url, tmp_path, resolvers, downstream=downstream, path="/c/x")
    with fast_worker(engine, worker_id="survivor"):
        finished = wait_done(engine, "acme", task.id)

    assert finished.state == TaskState.SUCCEEDED, finished.error
    # extract ran once; the action in flight at the kill ran again with its key; the planner was not asked again
    # for a proposal it had already made.
    assert (downstream.count("/models/m/extract"), downstream.count("/c/x"), downstream.count(PLAN)) == (1, 2, 3)
    first, second = downstream.calls["/c/x"]
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"]
    assert [(r.seq, r.state) for r in records(engine, task.id)] == [(1, "succeeded"), (2, "succeeded"), (3, "done")]


def test_erasing_a_subject_removes_its_agent_records_and_observation_blobs(
    make_engine: EngineFactory, db_url: str, downstream: Downstream
) -> None:
    engine = make(make_engine, db_url, downstream, inline_limit=16)  # observations go to blobs
    engine.register_workflow("triage", agent_workflow())
    downstream.script(PLAN, act("extract", document="a long enough claim document"), done())
    with fast_worker(engine):
        [accepted] = engine.submit_many(
            [Submission(tenant="acme", workflow="triage", input={"claimId": "C-18"}, annotations={"subject": "cust-1"})]
        )
        assert isinstance(accepted, Accepted)
        assert wait_done(engine, "acme", accepted.task.id).state == TaskState.SUCCEEDED
    [extract, _] = records(engine, accepted.task.id)
    assert extract.observation_ref is not None
    assert engine.codec.blobs.get(extract.observation_ref)

    erased = engine.erase("cust-1", actor="dpo")

    assert erased.tasks == (accepted.task.id,)
    assert records(engine, accepted.task.id) == []
    assert erased.blobs >= 1
    assert not engine.codec.blobs.delete(extract.observation_ref)  # type: ignore[attr-defined]  # gone already
