"""The CRD YAML is generated from the pydantic models, is structural, and the Python side refuses what the apiserver
would refuse."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from aiplane import manifests
from crds import RESOURCES, Resource
from crds.generate import crd_manifest, crd_path, render, stale_files
from tests.crds.cases import BAD_CASES, BadCase, example_documents

# The root's own apiVersion/kind/metadata are described by Kubernetes itself.
_ROOT_FIELDS = {"apiVersion", "kind", "metadata"}


def _nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, child in schema.get("properties", {}).items():
        yield from _nodes(child, f"{path}.{name}")
    if "items" in schema:
        yield from _nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _nodes(schema["additionalProperties"], f"{path}{{}}")


def _root(resource: type[Resource]) -> dict[str, Any]:
    root: dict[str, Any] = crd_manifest(resource)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return root


def test_generated_yaml_matches_the_models() -> None:
    assert stale_files() == [], "run `make generate` and commit crds/*.yaml"


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.KIND)
def test_drift_is_detected(resource: type[Resource], tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The drift check is not vacuous: an edited file is reported."""
    edited = tmp_path / crd_path(resource).name
    edited.write_text(render(resource).replace("description:", "description: edited", 1))
    monkeypatch.setattr("crds.generate.CRD_DIR", tmp_path)
    assert edited in stale_files()


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.KIND)
def test_schema_is_structural(resource: type[Resource]) -> None:
    for path, node in _nodes(_root(resource)):
        assert "$ref" not in node, path
        assert "anyOf" not in node or node.get("x-kubernetes-int-or-string"), path
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        assert not (node.get("type") == "object" and node.get("additionalProperties") is False), path


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.KIND)
def test_every_field_is_described(resource: type[Resource]) -> None:
    """`kubectl explain` shows descriptions; a field without one is a hole in the API reference."""
    undescribed = [
        path
        for path, node in _nodes(_root(resource))
        if path
        and path.split(".")[1] not in _ROOT_FIELDS
        and not path.endswith("[]")
        and not node.get("description")
        and not path.endswith("{}")
    ]
    assert undescribed == []


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.KIND)
def test_crd_identity(resource: type[Resource]) -> None:
    spec = crd_manifest(resource)["spec"]
    assert spec["group"] == "aiplane.io"
    assert spec["names"]["categories"] == ["aiplane"]
    assert spec["names"]["shortNames"][0].startswith("ai")
    version = spec["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert {"Ready", "Age"} <= {column["name"] for column in version["additionalPrinterColumns"]}


def test_examples_are_valid() -> None:
    kinds = {doc["kind"] for doc in example_documents()}
    assert kinds == {"Model", "Workflow", "Connector", "Policy"}
    for doc in example_documents():
        assert manifests.parse(doc, doc["metadata"]["name"]) is not None


@pytest.mark.parametrize("case", BAD_CASES, ids=lambda c: c.id)
def test_bad_manifest_is_refused_without_an_apiserver(case: BadCase) -> None:
    """The embedded mode refuses every manifest the apiserver refuses, naming the same field."""
    with pytest.raises(manifests.ManifestError) as refused:
        manifests.parse(case.manifest(), case.id)
    assert case.field in str(refused.value)


def test_field_paths_are_written_like_kubernetes() -> None:
    assert manifests.field_path(("spec", "steps", 0, "retry", "maxAttempts")) == "spec.steps[0].retry.maxAttempts"
