"""Policy decisions the engine enforces, as Prometheus metrics: approval rules that park a task, and residency
refusing a step at call time."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY

from crds.policy import Policy
from engine import Engine, StaticConnectorResolver, TaskState, WorkerConfig
from policies.residency import DENIED, Residency
from tests.engine.conftest import EngineFactory, fast_worker, wait_state
from tests.engine.test_approval_rules import CLAIMS_SPEC, LARGE, gate_of, policy
from tests.fixtures.downstream import Downstream
from tests.fixtures.polling import assert_eventually


def _decisions(check: str, decision: str) -> float:
    labels = {"check": check, "decision": decision}
    return REGISTRY.get_sample_value("aiplane_policy_decisions_total", labels) or 0.0


def test_an_approval_rule_that_parks_a_task_is_counted(make_engine: EngineFactory, sqlite_url: str) -> None:
    engine = make_engine(sqlite_url, approval_rules=gate_of(policy("large-claims", LARGE)).rules_for)
    engine.register_workflow("claims", CLAIMS_SPEC)
    before = _decisions("approval", "required")
    with fast_worker(engine):
        task = engine.submit("acme", "claims", {"amount": 25000, "confidence": 0.95})
        wait_state(engine, "acme", task.id, TaskState.WAITING)
    assert _decisions("approval", "required") - before == 1


def test_a_step_refused_for_residency_is_a_deny(tmp_path: Path, downstream: Downstream) -> None:
    pinned = Policy.model_validate(
        {
            "metadata": {"name": "eu-only", "namespace": "claims"},
            "spec": {"selector": {"matchLabels": {"data": "pii"}}, "residency": {"regions": ["eu-west"]}},
        }
    )
    residency = Residency.from_manifests([pinned], {"claims-eu": ("claims", {"data": "pii"})}, {})
    http: dict[str, Any] = {"url": downstream.url("/crm-us"), "allowPrivateNetworks": True}
    engine = Engine(
        f"sqlite:///{tmp_path / 'engine.db'}",
        data_dir=tmp_path / "data",
        connector_resolver=StaticConnectorResolver({"crm-us": {"type": "http", "http": http, "region": "us-east"}}),
        sqlite_synchronous="NORMAL",
        residency=residency,
    )
    try:
        step = {"name": "call", "type": "connector", "connector": {"name": "crm-us", "input": {"x": "1"}}}
        engine.register_workflow("claims-eu", {"steps": [{**step, "retry": {"maxAttempts": 1}}]})
        # Refused at call time (a task submitted before the pin came): intake would refuse it otherwise.
        engine.intake.admission = None
        before = _decisions("residency", "deny")
        task = engine.submit("acme", "claims-eu", {})
        with engine.worker(WorkerConfig(poll_interval=0.02, lease=timedelta(seconds=10))):
            done = assert_eventually(lambda: _done(engine, task.id), timeout=30, interval=0.02)
        assert done.error is not None
        assert done.error["kind"] == DENIED
        assert _decisions("residency", "deny") - before == 1
        assert downstream.count("/crm-us") == 0
    finally:
        engine.close()


def _done(engine: Engine, task_id: str) -> Any:
    current = engine.get("acme", task_id)
    assert current.done, current.state
    return current
