"""The Policies' agentActions rules reach the engine from `aiplane dev` and from --from-cluster, and `aiplane dev`'s
stand-in for an http Connector's system: which Connectors have one and where their calls go."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from aiplane import manifests
from aiplane.dev import agent_rules
from aiplane.incluster import ClusterSources
from aiplane.modelserver import ModelServerError, served_by, stand_in
from crds import Connector, Policy, Workflow
from policies.sources import PolicySet

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "claims-triage"
RESOURCES = manifests.load([EXAMPLES])
POLICIES = [r for r in RESOURCES if isinstance(r, Policy)]
WORKFLOWS = [r for r in RESOURCES if isinstance(r, Workflow)]


def _rule_names(rules: Any) -> list[str]:
    return [f"{rule.source.namespace}/{rule.source.name}/{rule.rule.name}" for rule in rules]


def test_dev_gives_each_workflow_its_policies_agent_rules() -> None:
    rules_for = agent_rules(PolicySet(POLICIES), WORKFLOWS)
    assert _rule_names(rules_for("claims-completion")) == [
        "default/claims-governance/no-portal-requests-for-health-claims"
    ]
    assert _rule_names(rules_for("not-selected")) == []
    without = [p.model_copy(update={"spec": p.spec.model_copy(update={"agent_actions": []})}) for p in POLICIES]
    assert _rule_names(agent_rules(PolicySet(without), WORKFLOWS)("claims-completion")) == []


def test_the_cluster_sources_give_the_engine_the_agent_rules() -> None:
    sources = ClusterSources(
        namespace="default",
        client=cast(Any, None),
        models=cast(Any, SimpleNamespace(regions=lambda: {})),
        connectors=cast(Any, SimpleNamespace(connector=lambda name: None)),
        secrets=cast(Any, None),
        policies=PolicySet(POLICIES),
        labels={"claims-completion": {"app.kubernetes.io/part-of": "claims-triage"}},
    )
    rules_for = sources.engine_options()["agent_rules"]
    assert _rule_names(rules_for("claims-completion")) == [
        "default/claims-governance/no-portal-requests-for-health-claims"
    ]
    assert rules_for("unseen") == ()


def connector(name: str, **annotations: str) -> Connector:
    found = next(r for r in RESOURCES if isinstance(r, Connector) and r.metadata["name"] == name)
    metadata = {**found.metadata, "annotations": annotations}
    return found.model_copy(update={"metadata": metadata})


def test_a_connector_that_names_a_stand_in_is_served_locally(tmp_path: Path) -> None:
    portal = next(r for r in RESOURCES if isinstance(r, Connector) and r.metadata["name"] == "claimant-portal")
    server = stand_in(portal, EXAMPLES, tmp_path)
    assert server is not None
    assert (server.bento, server.working_dir) == ("service:ClaimantPortal", EXAMPLES / "portal")
    assert server.log_path == tmp_path / "connector-claimant-portal.log"

    local = served_by(portal.spec, "http://127.0.0.1:41234")
    assert local.http is not None
    assert local.http.url == "http://127.0.0.1:41234/request_document"
    assert local.http.allow_private_networks
    assert portal.spec.http is not None
    assert not portal.spec.http.allow_private_networks  # the manifest's own spec is left as it was

    assert stand_in(connector("claims-decisions"), EXAMPLES, tmp_path) is None
    with pytest.raises(ModelServerError, match="stands in for http Connectors only"):
        stand_in(connector("claims-decisions", **{"aiplane.io/dev-bento": "service:X"}), EXAMPLES, tmp_path)
