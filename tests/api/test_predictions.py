"""What the gateway counts for the canary analysis's drift check: the predicted class of each answer, per Model
namespace and version, read from the answer field the Model names, bounded in number."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from api import predictions
from api.predictions import MAX_CLASS_LENGTH, MAX_CLASSES, OTHER, prediction_class
from crds.model import Endpoint
from engine import Engine
from engine.executors.resolvers import ModelResolver
from tests.api.conftest import Keys, Reply, Upstream, auth


@pytest.mark.parametrize(
    ("content", "value"),
    [
        (b'{"claim_type":"auto","confidence":0.9}', "auto"),
        (b'{ "score": 0.2, "claim_type" :  "health" }', "health"),
        (b'{"claim_type":3}', "3"),
        (b'{"claim_type": true, "x": 1}', "true"),
        (b'{"claim_type":"a\\"b"}', 'a"b'),
        (json.dumps({"claim_type": "d\u00e9g\u00e2t"}).encode(), "d\u00e9g\u00e2t"),
        (json.dumps({"claim_type": "d\u00e9g\u00e2t"}, ensure_ascii=False).encode(), "d\u00e9g\u00e2t"),
        (b'{"other":"claim_type"}', None),  # the name as a value, not a key
        (b'{"claim_type":{"nested":1}}', None),
        (b'{"claim_type":["a"]}', None),
        (b'{"label":"auto"}', None),
        (b'{"claim_type":"unterminated', None),
        (b"", None),
    ],
)
def test_the_class_is_read_from_the_named_field(content: bytes, value: str | None) -> None:
    assert prediction_class(content, "claim_type") == value


def test_a_long_class_is_cut() -> None:
    assert prediction_class(json.dumps({"c": "x" * 500}).encode(), "c") == "x" * MAX_CLASS_LENGTH


def sample(namespace: str, model: str, version: str, cls: str) -> float:
    labels = {"namespace": namespace, "model": model, "version": version, "class": cls}
    return REGISTRY.get_sample_value("aiplane_gateway_model_predictions_total", labels) or 0.0


def test_classes_are_bounded_per_version() -> None:
    for i in range(MAX_CLASSES + 5):
        predictions.count("ns-bound", "m", "v1", json.dumps({"c": f"class-{i}"}).encode(), "c")
    assert len(predictions.classes_seen("ns-bound", "m", "v1")) == MAX_CLASSES + 1  # and "other"
    assert sample("ns-bound", "m", "v1", OTHER) == 5
    assert sample("ns-bound", "m", "v1", "class-0") == 1
    predictions.count("ns-bound", "m", "v1", b'{"c":"class-0"}', "c")
    assert sample("ns-bound", "m", "v1", "class-0") == 2  # a known class keeps its own label
    predictions.count("ns-bound", "m", "v1", b'{"c":"never-seen"}', "c")
    assert sample("ns-bound", "m", "v1", OTHER) == 6


class Labelled:
    """A resolver as the in-cluster one is: it knows the Models' namespace and which field holds the class."""

    def __init__(self, inner: ModelResolver, namespace: str, fields: dict[str, str]) -> None:
        self.inner, self.namespace, self.fields = inner, namespace, fields

    def endpoints(self, model: str) -> Sequence[Endpoint]:
        return self.inner.endpoints(model)

    def prediction_field(self, model: str) -> str | None:
        return self.fields.get(model)


def test_the_gateway_counts_classes_and_labels_calls_with_the_namespace(
    client: TestClient, engine: Engine, keys: Keys, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "model_resolver", Labelled(engine.model_resolver, "team-a", {"echo": "label"}))
    calls = {"namespace": "team-a", "model": "echo", "version": "v1", "outcome": "ok"}
    before = REGISTRY.get_sample_value("aiplane_gateway_model_call_duration_seconds_count", calls) or 0.0
    fraud, ok = sample("team-a", "echo", "v1", "fraud"), sample("team-a", "echo", "v1", "ok")
    upstream.script(
        "/models/echo/predict",
        Reply(body={"label": "fraud", "score": 0.9}),
        Reply(body={"label": "fraud", "score": 0.8}),
        Reply(body={"label": "ok", "score": 0.1}),
        Reply(body={"score": 0.5}),  # no class: a call, but no prediction
        Reply(status=503),  # a failure predicts nothing
    )
    statuses = [client.post("/v1/models/echo/predict", json={}, headers=auth(keys.alice)).status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 200, 502]
    assert sample("team-a", "echo", "v1", "fraud") == fraud + 2
    assert sample("team-a", "echo", "v1", "ok") == ok + 1
    assert REGISTRY.get_sample_value("aiplane_gateway_model_call_duration_seconds_count", calls) == before + 4
    assert 'aiplane_gateway_model_predictions_total{class="fraud",model="echo",namespace="team-a",version="v1"}' in (
        client.get("/metrics").text
    )
