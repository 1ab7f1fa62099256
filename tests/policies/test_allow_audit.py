"""Allowing and masking decisions on the audit log, through the real gateway and engine (SQLite and PostgreSQL): a
task admitted under Policies is a policy/allow record naming their versions, written with the task; a masked input
a policy/mask record naming paths and entities, never a value (the whole export searched); ``aiplane audit
verify`` passes and catches an edited allow record; no Policy, no record. Predictions a Model's Policies allow are
coalesced allow records whose counts add up to every call."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from aiplane.cli import main
from api import create_api_key, create_app
from api.auth import follow_policies
from api.routers.models import PredictFastPath
from crds.policy import Policy
from engine import Accepted, Engine, StaticConnectorResolver, StaticModelResolver, Submission, TaskState
from engine.runtime.bulk import Batch, Taken
from engine.store.schema import audit_log
from policies.audit import Record
from policies.coalesce import Coalescer
from policies.effective import Target, applicable
from policies.masking import WorkflowMasking
from policies.model_calls import ModelPolicies, default_target
from policies.sources import PolicySet
from tests.engine import test_agent as agents
from tests.engine.conftest import fast_worker, wait_done
from tests.fixtures.downstream import Downstream, Reply
from tests.policies.test_pii_engine import CLAIM, KEYS, SECRETS

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*httpx2.*")
    from fastapi.testclient import TestClient


def _policy(name: str, generation: int, spec: dict[str, Any]) -> Policy:
    return Policy.model_validate(
        {"metadata": {"name": name, "namespace": "claims", "generation": generation}, "spec": spec}
    )


CLAIMS_ONLY = {"matchLabels": {"team": "claims"}}
POLICIES = PolicySet(
    [
        _policy("partners", 3, {"selector": CLAIMS_ONLY, "access": {"tenants": ["acme"]}}),
        _policy(
            "claims-pii",
            4,
            {
                "selector": CLAIMS_ONLY,
                "pii": {
                    "entities": ["EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "PERSON"],
                    "fields": ["input.claimant.policyRef"],
                    "action": "hash",
                },
            },
        ),
        _policy(
            "claims-models",
            6,
            {"selector": {"kinds": ["Model"], "matchLabels": {"team": "claims"}}, "access": {"tenants": ["acme"]}},
        ),
    ]
)
TARGETS = {
    "claims": Target("Workflow", "claims", "claims", {"team": "claims"}),
    "open": Target("Workflow", "open", "claims", {}),  # no Policy selects it
}
MODELS = {"triage": Target("Model", "triage", "claims", {"team": "claims"})}
RULES = {"steps": [{"name": "r", "type": "rules", "rules": {"set": {"x": "1"}}}]}


def _governed_engine(db_url: str, tmp_path: Path, **options: Any) -> Engine:
    engine = Engine(
        db_url,
        data_dir=tmp_path / "data",
        sqlite_synchronous="NORMAL",
        tenants=lambda workflow: POLICIES.effective(TARGETS[workflow]).tenants,
        governing=lambda workflow: applicable(POLICIES.policies(), TARGETS[workflow]),
        pii=WorkflowMasking(lambda workflow: POLICIES.effective(TARGETS[workflow]).pii, KEYS),
        **options,
    )
    for name in TARGETS:
        engine.register_workflow(name, RULES)
    return engine


@pytest.fixture
def engine(db_url: str, tmp_path: Path) -> Iterator[Engine]:
    engine = _governed_engine(db_url, tmp_path)
    yield engine
    engine.close()


def _records(engine: Engine, decision: str) -> list[Record]:
    return [r for r in engine.audit.records() if (r.kind, r.decision) == ("policy", decision)]


def test_an_admitted_task_is_an_allow_record_and_its_masked_input_a_mask_record(
    engine: Engine, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = create_api_key(engine, "acme", "alice", ["submitter"])
    with TestClient(create_app(engine)) as client:
        response = client.post(
            "/v1/tasks",
            json={"workflow": {"name": "claims"}, "input": CLAIM},
            headers={"Authorization": f"Bearer {key}"},
        )
    assert response.status_code in (201, 202), response.text
    task_id = response.json()["id"]

    [allow] = _records(engine, "allow")
    assert (allow.subject, allow.tenant, allow.actor) == (f"task/{task_id}", "acme", "engine")
    details = json.loads(allow.details)
    # Both Policies of the workflow by version, not the Model's; the tenant check its access part made.
    assert details["policies"] == ["claims/claims-pii@4", "claims/partners@3"]
    assert details["checks"] == ["access"]
    assert (details["workflow"], details["by"]) == ("claims", "alice")
    assert details["version"] == engine.get("acme", task_id).workflow_version

    [mask] = _records(engine, "mask")
    assert mask.subject == f"task/{task_id}/input"
    masked = json.loads(mask.details)
    assert masked["action"] == "hash"
    assert masked["policies"] == ["claims/claims-pii@4"]  # the Policies whose pii parts were combined
    assert {"input.claimant.email", "input.claimant.policyRef", "input.claimant.name"} <= set(masked["paths"])
    assert {"EMAIL_ADDRESS", "PERSON", "FIELD"} <= set(masked["entities"])

    # The whole export holds no value the Policy masked, and the chain verifies.
    out = tmp_path / "audit.jsonl"
    assert main(["audit", "export", "--database", db_url, "-o", str(out)]) == 0
    exported = out.read_text()
    assert task_id in exported
    for secret in SECRETS[:8]:  # the claim's own values (the rest are a model's answer, not called here)
        assert secret not in exported
    assert main(["audit", "verify", "--database", db_url]) == 0
    assert "audit log intact: 2 records" in capsys.readouterr().out

    # An allow record edited to name another Policy is caught.
    forged = json.dumps({**details, "policies": ["claims/partners@3"]}, sort_keys=True, separators=(",", ":"))
    with engine.db.write() as conn:
        conn.execute(sa.update(audit_log).where(audit_log.c.seq == allow.seq).values(details=forged))
    assert main(["audit", "verify", "--database", db_url]) == 1
    assert f"TAMPERED record {allow.seq}: edited" in capsys.readouterr().out


def test_no_policy_no_record(engine: Engine, tmp_path: Path) -> None:
    key = create_api_key(engine, "acme", "alice", ["submitter"])
    with TestClient(create_app(engine)) as client:
        response = client.post(
            "/v1/tasks", json={"workflow": {"name": "open"}, "input": CLAIM}, headers={"Authorization": f"Bearer {key}"}
        )
    assert response.status_code in (201, 202), response.text
    assert engine.audit.records() == []
    # Nor without a policy source at all (the plain submit path: no audit write).
    plain = Engine(f"sqlite:///{tmp_path / 'plain.db'}", sqlite_synchronous="NORMAL")
    try:
        plain.register_workflow("claims", RULES)
        plain.submit("acme", "claims", CLAIM)
        assert plain.audit.records() == []
    finally:
        plain.close()


def test_a_batch_writes_one_allow_record_per_new_task(engine: Engine) -> None:
    outcomes = engine.submit_many(
        [
            Submission(tenant="acme", workflow="claims", input={"n": 1}, submitted_by="alice"),
            Submission(tenant="acme", workflow="open", input={"n": 2}),
            Submission(tenant="globex", workflow="claims", input={"n": 3}),  # denied: a deny record instead
            Submission(tenant="acme", workflow="claims", input={"n": 4}, idempotency_key="k-4"),
        ]
    )
    made = [o.task.id for o in outcomes if isinstance(o, Accepted)]
    assert len(made) == 3
    allows = _records(engine, "allow")
    assert sorted(r.subject for r in allows) == sorted(f"task/{made[i]}" for i in (0, 2))
    assert [json.loads(r.details)["policies"] for r in _records(engine, "deny")] == [["claims/partners@3"]]
    # The same idempotency key again gives the first task back, and no second record.
    again = engine.submit_many([Submission(tenant="acme", workflow="claims", input={"n": 4}, idempotency_key="k-4")])
    assert isinstance(again[0], Accepted)
    assert again[0].task.id == made[2]
    assert len(_records(engine, "allow")) == 2

    # A source's batch intake: one per new task too, no submitter; a batch read again adds none.
    batch = Batch(
        tenant="acme", workflow="claims", inputs=[{"m": 1}, {"m": 2}], keys=["m-1", "m-2"], trace_contexts=[None, None]
    )
    taken = {f"task/{t.task_id}" for t in engine.submit_batch(batch) if isinstance(t, Taken)}
    sourced = [r for r in _records(engine, "allow") if r.subject in taken]
    assert len(sourced) == 2
    assert {json.loads(r.details)["by"] for r in sourced} == {None}
    engine.submit_batch(batch)
    assert len(_records(engine, "allow")) == 4
    assert engine.audit.verify().ok


def test_allowed_predictions_are_coalesced_records_that_count_every_call(db_url: str, tmp_path: Path) -> None:
    upstream = Downstream()
    engine = Engine(
        db_url,
        data_dir=tmp_path / "data",
        model_resolver=StaticModelResolver(
            {
                name: [{"version": "v1", "url": upstream.url(f"/models/{name}"), "weight": 100}]
                for name in ("triage", "open")
            }
        ),
        sqlite_synchronous="NORMAL",
    )
    try:
        key = create_api_key(engine, "acme", "alice", ["submitter"])
        headers = {"Authorization": f"Bearer {key}"}
        fast, routed = create_app(engine), create_app(engine)  # the predict fast path, and the FastAPI route
        routed.user_middleware = [m for m in routed.user_middleware if m.cls is not PredictFastPath]  # type: ignore[comparison-overlap]
        for served, app in enumerate((fast, routed)):
            gw = app.state.gateway
            follow_policies(gw, POLICIES, {}, models=lambda model: MODELS.get(model) or default_target(model))
            gw.admitted = Coalescer(window=3600)  # a whole test in one window
            with TestClient(app) as client:
                for _ in range(3):
                    assert client.post("/v1/models/triage/predict", json={"x": 1}, headers=headers).status_code == 200
                assert client.post("/v1/models/open/predict", json={"x": 1}, headers=headers).status_code == 200
                # The first call is recorded before the model answers it; the two after it are counted.
                first = _records(engine, "allow")[-1]
                assert json.loads(first.details)["count"] == 1
            # The gateway's shutdown records the coalesced calls: the counts add up to every allowed call.
            records = _records(engine, "allow")[2 * served :]
            assert [r.subject for r in records] == ["model/triage/predict"] * 2
            assert records[0] == first
            details = [json.loads(r.details) for r in records]
            assert [d["count"] for d in details] == [1, 2]
            assert {(r.tenant, r.actor) for r in records} == {("acme", "gateway")}
            assert details[0] == {"model": "triage", "count": 1, "window": 3600, "policies": ["claims/claims-models@6"]}
        assert upstream.count("/models/triage/predict") == 6
        assert engine.audit.verify().ok
    finally:
        engine.close()
        upstream.close()


def test_a_quiet_key_is_recorded_with_the_next_record_of_another() -> None:
    now = [0.0]
    coalescer = Coalescer(window=1.0, clock=lambda: now[0])
    assert coalescer.note("a") == 1
    assert coalescer.note("a") is None  # counted, not recorded
    assert coalescer.overdue() == []  # not a whole window yet
    now[0] = 1.5
    assert coalescer.note("b") == 1
    assert coalescer.overdue() == [("a", 1, None)]
    assert coalescer.overdue() == []
    assert coalescer.drain() == []


def test_a_model_step_the_models_policies_allow_is_recorded_with_its_attempt(db_url: str, tmp_path: Path) -> None:
    upstream = Downstream()
    upstream.script("/models/flaky/predict", Reply(status=503), Reply(body={"label": "ok"}))
    targets = {**MODELS, "flaky": MODELS["triage"]}
    engine = Engine(
        db_url,
        data_dir=tmp_path / "data",
        model_resolver=StaticModelResolver(
            {
                name: [{"version": "v1", "url": upstream.url(f"/models/{name}"), "weight": 100}]
                for name in ("triage", "flaky", "open")
            }
        ),
        sqlite_synchronous="NORMAL",
        model_policies=ModelPolicies(POLICIES, lambda model: targets.get(model) or default_target(model)),
    )
    try:
        for name in ("triage", "flaky", "open"):
            step = {"name": "score", "type": "model", "model": {"name": name}}
            retry = {"maxAttempts": 2, "backoff": {"initial": "1ms", "max": "1ms"}}
            engine.register_workflow(f"call-{name}", {"steps": [{**step, "retry": retry}]})
        with fast_worker(engine):
            tasks = {name: engine.submit("acme", f"call-{name}", {"x": 1}).id for name in ("triage", "flaky", "open")}
            for task_id in tasks.values():
                assert wait_done(engine, "acme", task_id).state == TaskState.SUCCEEDED
        allows = {r.subject: json.loads(r.details) for r in _records(engine, "allow")}
        # One per attempt that called a Model its Policies govern: the failed first attempt of flaky too (its data
        # was sent); none for the Model no Policy selects.
        assert set(allows) == {
            f"task/{tasks['triage']}/step/score/attempt/1",
            f"task/{tasks['flaky']}/step/score/attempt/1",
            f"task/{tasks['flaky']}/step/score/attempt/2",
        }
        assert allows[f"task/{tasks['triage']}/step/score/attempt/1"] == {
            "workflow": "call-triage",
            "step": "score",
            "model": "triage",
            "policies": ["claims/claims-models@6"],
            "calls": 1,
        }
        # The task's lineage names the Model's Policy through the record.
        assert "claims/claims-models@6" in engine.lineage("acme", tasks["triage"])["policies"]
        assert engine.audit.verify().ok
    finally:
        engine.close()
        upstream.close()


def test_an_agents_planner_and_model_actions_the_models_policies_allow_are_recorded_with_its_attempt(
    db_url: str, tmp_path: Path
) -> None:
    downstream = Downstream()
    downstream.script("/models/m/extract", Reply(body={"label": "ok"}))
    downstream.script(agents.PLAN, agents.act("extract", document="the claim"), agents.done())
    # The action's Model and the planner's are both selected by claims-models.
    targets = {"m": MODELS["triage"], "planner": MODELS["triage"]}
    engine = Engine(
        db_url,
        data_dir=tmp_path / "data",
        model_resolver=agents.models(downstream),
        connector_resolver=StaticConnectorResolver(agents.connectors(downstream)),
        sqlite_synchronous="NORMAL",
        model_policies=ModelPolicies(POLICIES, lambda model: targets.get(model) or default_target(model)),
    )
    try:
        engine.register_workflow("agentic", agents.agent_workflow())
        with fast_worker(engine):
            task = engine.submit("acme", "agentic", {"claimId": "C-1"})
            assert wait_done(engine, "acme", task.id).state == TaskState.SUCCEEDED
        allows = _records(engine, "allow")
        assert {r.subject for r in allows} == {f"task/{task.id}/step/agent/attempt/1"}
        # One record per Model the attempt called, counting its calls: the planner twice (act, then done).
        assert sorted((json.loads(r.details) for r in allows), key=lambda d: d["model"]) == [
            {"workflow": "agentic", "step": "agent", "model": "m", "policies": ["claims/claims-models@6"], "calls": 1},
            {
                "workflow": "agentic",
                "step": "agent",
                "model": "planner",
                "policies": ["claims/claims-models@6"],
                "calls": 2,
            },
        ]
    finally:
        engine.close()
        downstream.close()
