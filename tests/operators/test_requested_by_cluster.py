"""Who requested a Model's canary, on the real apiserver: the chart's ValidatingAdmissionPolicy admits the
aiplane.io/requested-by annotation only when it names the user making the change (impersonated users here), and
the operator's builder reads it into the promotion request whose requester may not approve it."""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from crds.model import Model
from operators.model import promotion
from tests.fixtures.cluster import Cluster
from tests.fixtures.polling import assert_eventually
from tests.helm.chart import objects, render

CANARY = {"version": "2.0.0", "steps": [50, 100], "interval": "1m"}


def _model(name: str, requested_by: str | None, canary: dict[str, Any] | None = CANARY) -> str:
    metadata: dict[str, Any] = {"name": name}
    if requested_by is not None:
        metadata["annotations"] = {promotion.REQUESTED_BY: requested_by}
    spec: dict[str, Any] = {"bento": "service:Claims", "version": "1.0.0"}
    if canary is not None:
        spec["canary"] = canary
    return json.dumps({"apiVersion": "aiplane.io/v1alpha1", "kind": "Model", "metadata": metadata, "spec": spec})


def _as(user: str) -> tuple[str, ...]:
    # An impersonated user with every right: only the admission policy can refuse.
    return ("--as", user, "--as-group", "system:masters")


@pytest.fixture
def guarded(crds_installed: Cluster) -> Iterator[tuple[Cluster, str, str]]:
    """Two namespaces, each under the chart's policy of one release: lenient (the default) and required."""
    cluster = crds_installed
    run = uuid.uuid4().hex[:8]
    namespaces, applied = [], []
    try:
        for mode in ("lenient", "required"):
            namespace = cluster.create_namespace(f"req-{mode}")
            namespaces.append(namespace)
            cluster.kubectl("label", "namespace", namespace, f"aiplane-test-requested-by={run}-{mode}")
            selector = json.dumps({"matchLabels": {"aiplane-test-requested-by": f"{run}-{mode}"}})
            docs = [
                d
                for d in objects(
                    render(
                        "--set",
                        f"modelRequester.required={str(mode == 'required').lower()}",
                        "--set-json",
                        f"modelRequester.namespaceSelector={selector}",
                        release=f"req-{run}-{mode}",
                    )
                )
                if d["kind"].startswith("ValidatingAdmissionPolicy")
            ]
            assert [d["kind"] for d in docs] == ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]
            applied.append(docs)  # before applying: a half-applied pair is deleted too
            cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
        yield cluster, namespaces[0], namespaces[1]
    finally:
        for docs in applied:
            for doc in reversed(docs):
                cluster.kubectl("delete", doc["kind"], doc["metadata"]["name"], "--ignore-not-found", check=False)
        for namespace in namespaces:
            cluster.delete_namespace(namespace)


def test_the_annotation_names_only_the_user_making_the_change(guarded: tuple[Cluster, str, str]) -> None:
    cluster, lenient, required = guarded

    probes = itertools.count()

    def refused_as_alice() -> None:
        # A new object each time: a probe admitted before the policy was in force would make every later apply of
        # it a no-op that kubectl never sends, so never refused.
        probe = _model(f"probe-{next(probes)}", "bob")
        proc = cluster.kubectl("apply", "-n", lenient, "-f", "-", *_as("alice"), input=probe, check=False)
        assert proc.returncode != 0, "the admission policy is not in force yet"
        assert "must name the user making this change (alice), not bob" in proc.stderr

    # The apiserver loads a new policy within moments: poll instead of sleeping.
    assert_eventually(refused_as_alice, timeout=60, interval=0.5)

    cluster.kubectl("apply", "-n", lenient, "-f", "-", *_as("alice"), input=_model("extractor", "alice"))
    # Carol changes the canary under alice's name: refused; under her own: admitted.
    moved = _model("extractor", "alice", {**CANARY, "version": "3.0.0"})
    proc = cluster.kubectl("apply", "-n", lenient, "-f", "-", *_as("carol"), input=moved, check=False)
    assert proc.returncode != 0
    assert "not alice" in proc.stderr
    # Leaving the canary as it is, anyone may edit the rest (labels, the operator's finalizers and status).
    cluster.kubectl("label", "-n", lenient, "aim", "extractor", "tier=critical", *_as("carol"))
    cluster.kubectl(
        "apply",
        "-n",
        lenient,
        "-f",
        "-",
        *_as("carol"),
        input=_model("extractor", "carol", {**CANARY, "version": "3.0.0"}),
    )
    # Without the annotation the lenient policy admits a change (nobody is named, nobody is kept out).
    cluster.kubectl("apply", "-n", lenient, "-f", "-", *_as("dave"), input=_model("other", None))

    # The operator's builder reads what the apiserver admitted: carol asked for 3.0.0, so she may not approve it.
    found = json.loads(cluster.kubectl("get", "-n", lenient, "aim", "extractor", "-o", "json").stdout)
    asked = promotion.request(
        Model.model_validate(found),
        "1.0.0",
        promotion.Demand(rules=("four-eyes",), roles=("approver",), quorum=1, separation_of_duties=True),
    )
    assert asked is not None
    assert (asked.requested_by, asked.separation_of_duties, asked.version) == ("carol", True, "3.0.0")

    # Required: a canary change must name its requester; a Model without a canary needs nobody.
    def refused_unnamed() -> None:
        proc = cluster.kubectl("apply", "-n", required, "-f", "-", *_as("dave"), input=_model("x", None), check=False)
        assert proc.returncode != 0, "the admission policy is not in force yet"
        assert "must name its requester" in proc.stderr
        assert "(dave)" in proc.stderr

    assert_eventually(refused_unnamed, timeout=60, interval=0.5)
    cluster.kubectl("apply", "-n", required, "-f", "-", *_as("dave"), input=_model("x", "dave"))
    cluster.kubectl("apply", "-n", required, "-f", "-", *_as("dave"), input=_model("plain", None, None))
