"""``aiplane dev``'s Policies follow their files: an edit to a Policy manifest applies to the next submission within
seconds, without a restart; a manifest that no longer parses leaves the Policies in force as they were."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from aiplane import manifests
from aiplane.policyfiles import PolicyFileWatch
from crds.policy import Policy
from engine import Engine
from engine.errors import PolicyDeniedError
from policies.effective import ref
from policies.sources import PolicySet
from tests.engine.conftest import fast_worker, wait_done
from tests.fixtures.devstack import dev_stack, write_manifest
from tests.fixtures.polling import assert_eventually

WORKFLOW = {
    "apiVersion": "aiplane.io/v1alpha1",
    "kind": "Workflow",
    "metadata": {"name": "claims", "labels": {"team": "claims"}},
    "spec": {"steps": [{"name": "decide", "type": "rules", "rules": {"set": {"ok": "true"}}}]},
}


def _policy(tenants: list[str], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "aiplane.io/v1alpha1",
        "kind": "Policy",
        "metadata": {"name": "who"},
        "spec": {"selector": {"matchLabels": {"team": "claims"}}, "access": {"tenants": tenants}, **spec},
    }


def test_an_edited_policy_file_applies_to_the_next_submission(tmp_path: Path) -> None:
    with dev_stack(tmp_path, {"workflow.yaml": WORKFLOW, "policy.yaml": _policy(["acme"])}) as (stack, engine):
        policy = stack.manifests_dir / "policy.yaml"
        engine.submit("acme", "claims", {})
        with pytest.raises(PolicyDeniedError):
            engine.submit("globex", "claims", {})

        write_manifest(policy, _policy(["globex"]))

        def globex_admitted() -> None:
            engine.submit("globex", "claims", {})

        assert_eventually(globex_admitted, timeout=10, retry_on=(PolicyDeniedError,))
        with pytest.raises(PolicyDeniedError):
            engine.submit("acme", "claims", {})


def _tenants(policies: PolicySet) -> list[str]:
    [policy] = policies.policies()
    assert policy.spec.access is not None
    return policy.spec.access.tenants


def test_a_broken_manifest_keeps_the_policies_in_force(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    policy = tmp_path / "policy.yaml"
    write_manifest(policy, _policy(["acme"]))
    policies = PolicySet(r for r in manifests.load([tmp_path]) if isinstance(r, Policy))
    watch = PolicyFileWatch([tmp_path], policies)
    assert not watch.check()  # nothing changed: nothing read

    policy.write_text("apiVersion: aiplane.io/v1alpha1\nkind: Policy\nmetadata: {name: who}\nspec: {quota: {}}\n")
    with caplog.at_level(logging.ERROR, logger="aiplane.policyfiles"):
        assert not watch.check()
        assert not watch.check()  # the same broken file: logged once
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "maxTasksInFlight" in caplog.records[0].message
    assert _tenants(policies) == ["acme"]

    # Fixed: applied.
    write_manifest(policy, _policy(["globex"], approvals=[{"name": "all", "when": "true"}]))
    assert watch.check()
    assert _tenants(policies) == ["globex"]


def test_a_part_no_policy_had_at_start_applies_to_the_next_task(tmp_path: Path) -> None:
    """A ``pii`` part added to a Policy file while dev runs masks the next task's input, with no restart: dev wires
    every enforcement point whether or not a Policy uses it yet, as a cluster's workers do."""
    claim = {"contact": "jane.roe@example.com"}
    with dev_stack(tmp_path, {"workflow.yaml": WORKFLOW, "policy.yaml": _policy(["acme"])}) as (stack, engine):
        policy = stack.manifests_dir / "policy.yaml"
        assert engine.submit("acme", "claims", claim).input == claim

        write_manifest(policy, _policy(["acme"], pii={"entities": ["EMAIL_ADDRESS"], "action": "redact"}))

        def masked() -> None:
            stored = engine.get("acme", engine.submit("acme", "claims", claim).id).input
            assert stored == {"contact": "<EMAIL_ADDRESS>"}, stored

        assert_eventually(masked, timeout=30)

        # An approval rule, which no Policy had either: the next task waits for a person.
        write_manifest(policy, _policy(["acme"], approvals=[{"name": "everything", "when": "true"}]))
        with fast_worker(engine):

            def gated() -> None:
                task = engine.submit("acme", "claims", claim)
                assert wait_done_or_waiting(engine, task.id) == "waiting"

            assert_eventually(gated, timeout=30)


def wait_done_or_waiting(engine: Engine, task_id: str) -> str:
    """The task's state once it is done or waiting for an approval."""

    def settled() -> str:
        state = str(engine.get("acme", task_id).state)
        assert state in {"succeeded", "failed", "waiting", "dead_lettered"}, state
        return state

    return assert_eventually(settled, timeout=10)


def test_a_file_policy_is_named_by_a_version_of_its_content(tmp_path: Path) -> None:
    """Manifest files carry no generation: their Policies are versioned by a digest of the spec, so audit records
    and lineage name them ``namespace/name@version`` as they name a cluster's Policies, and an edit shows."""
    with dev_stack(tmp_path, {"workflow.yaml": WORKFLOW, "policy.yaml": _policy(["acme"])}) as (stack, engine):
        policy = stack.manifests_dir / "policy.yaml"
        with pytest.raises(PolicyDeniedError) as first:
            engine.submit("globex", "claims", {})
        [named] = first.value.policies
        assert re.fullmatch(r"default/who@[0-9a-f]{12}", named), named
        # The same content read again (another process, a restart) is the same version.
        [reread] = [r for r in manifests.load([stack.manifests_dir]) if isinstance(r, Policy)]
        assert str(ref(reread)) == named
        # An admitted task's lineage names the file Policy by the same version.
        admitted = engine.submit("acme", "claims", {})
        with fast_worker(engine):
            wait_done(engine, "acme", admitted.id)
        assert named in engine.lineage("acme", admitted.id)["policies"]

        write_manifest(policy, _policy(["initech"]))

        def edited() -> str:
            with pytest.raises(PolicyDeniedError) as again:
                engine.submit("globex", "claims", {})
            [version] = again.value.policies
            assert version != named
            return version

        renamed = assert_eventually(edited, timeout=10)
        records = [json.loads(r.details) for r in engine.audit.records() if r.decision == "deny"]
        assert (records[0]["policies"], records[-1]["policies"]) == ([named], [renamed])

        with_generation = _policy(["initech"])
        with_generation["metadata"]["generation"] = 7  # a generation written in the file wins
        write_manifest(policy, with_generation)

        def generation_named() -> None:
            with pytest.raises(PolicyDeniedError) as again:
                engine.submit("globex", "claims", {})
            assert again.value.policies == ("default/who@7",)

        assert_eventually(generation_named, timeout=10)
