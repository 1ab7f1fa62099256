"""``aiplane.io/endpoint-urls`` is a test-only knob: only an operator told to honour it publishes the URLs it
names; otherwise ``status.endpoints`` holds the Services' URLs whatever a Model's annotations say."""

from __future__ import annotations

import json

import pytest

from crds.model import Model
from operators.model import builders
from operators.model.config import Config
from operators.model.reconciler import ENDPOINT_URLS_ANNOTATION, endpoint_urls
from tests.operators.models import model

OWNER = builders.Owner(name="m", namespace="ns", uid="u-1")
SERVICE_URLS = {v: builders.service_url(model(), OWNER, v) for v in ("1.0.0", "2.0.0")}


def annotated(raw: str) -> Model:
    m = model()
    return m.model_copy(update={"metadata": {**m.metadata, "annotations": {ENDPOINT_URLS_ANNOTATION: raw}}})


def test_the_annotation_is_ignored_by_default() -> None:
    m = annotated(json.dumps({"1.0.0": "http://elsewhere.example:3000"}))
    assert endpoint_urls(m, OWNER, ["1.0.0", "2.0.0"]) == SERVICE_URLS


def test_an_operator_told_to_honour_it_publishes_the_urls_it_names() -> None:
    m = annotated(json.dumps({"1.0.0": "http://127.0.0.1:3001"}))
    urls = endpoint_urls(m, OWNER, ["1.0.0", "2.0.0"], honour_annotation=True)
    assert urls == {"1.0.0": "http://127.0.0.1:3001", "2.0.0": SERVICE_URLS["2.0.0"]}
    assert endpoint_urls(annotated("{"), OWNER, ["1.0.0"], honour_annotation=True) == {"1.0.0": SERVICE_URLS["1.0.0"]}


@pytest.mark.parametrize(("value", "honoured"), [(None, False), ("", False), ("false", False), ("true", True)])
def test_the_setting_is_off_unless_the_environment_says_true(
    monkeypatch: pytest.MonkeyPatch, value: str | None, honoured: bool
) -> None:
    if value is None:
        monkeypatch.delenv("AIPLANE_ENDPOINT_URLS_ANNOTATION", raising=False)
    else:
        monkeypatch.setenv("AIPLANE_ENDPOINT_URLS_ANNOTATION", value)
    assert Config.from_env().endpoint_urls_annotation is honoured
    assert Config().endpoint_urls_annotation is False
