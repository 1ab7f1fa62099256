"""Model steps' calls are measured per Model version and outcome, with the gateway's labels and outcome words, so a
canary's analysis sees the engine's traffic to a version next to the gateway's."""

from __future__ import annotations

from prometheus_client import REGISTRY

from engine import Engine, StaticModelResolver, TaskState
from tests.engine.conftest import QUICK_RETRY, Downstream, EngineFactory, Reply, fast_worker, wait_done

METRIC = "aiplane_engine_model_call_duration_seconds_count"


class InNamespace(StaticModelResolver):
    """Static endpoints, and the namespace of the Models, as the in-cluster resolver knows it."""

    namespace = "team-a"


def calls(outcome: str, version: str = "v1") -> float:
    labels = {"namespace": "team-a", "model": "m", "version": version, "outcome": outcome}
    return REGISTRY.get_sample_value(METRIC, labels) or 0.0


def test_model_calls_are_measured_by_version_and_outcome(
    make_engine: EngineFactory, sqlite_url: str, downstream: Downstream
) -> None:
    resolver = InNamespace({"m": [{"version": "v1", "url": downstream.url("/models/m"), "weight": 100}]})
    engine: Engine = make_engine(sqlite_url, model_resolver=resolver)
    engine.register_workflow(
        "predict",
        {"steps": [{"name": "p", "type": "model", "model": {"name": "m"}, "timeout": "300ms", "retry": QUICK_RETRY}]},
    )
    before = {o: calls(o) for o in ("ok", "error", "timeout", "rejected")}
    downstream.script("/models/m/predict", Reply(status=503), Reply(delay=2.0), Reply(body={"label": "auto"}))
    with fast_worker(engine):
        done = wait_done(engine, "acme", engine.submit("acme", "predict", {}).id)
    assert done.state == TaskState.SUCCEEDED
    assert calls("error") == before["error"] + 1
    assert calls("timeout") == before["timeout"] + 1
    assert calls("ok") == before["ok"] + 1

    downstream.script("/models/m/predict", Reply(status=422, body={"detail": "bad input"}))
    with fast_worker(engine):
        failed = wait_done(engine, "acme", engine.submit("acme", "predict", {}).id)
    assert failed.state != TaskState.SUCCEEDED
    assert calls("rejected") == before["rejected"] + 1
