"""``aiplane validate`` (and so ``aiplane dev``) refuses what the Workflow operator would mark Valid=False on its
own spec: the same checks, on a laptop."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from aiplane import cli


def test_validate_refuses_a_cycle_and_bad_cel_naming_the_steps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = {
        "apiVersion": "aiplane.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": "loops"},
        "spec": {
            "steps": [
                {"name": "a", "type": "rules", "rules": {"set": {"x": "input.n >"}}},
                {"name": "b", "type": "rules", "rules": {"default": "a"}},
            ]
        },
    }
    bad = tmp_path / "loops.yaml"
    bad.write_text(yaml.safe_dump(manifest))
    assert cli.main(["validate", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "loops.yaml#0 (loops)" in err
    assert "spec.steps.b.rules.default: step 'b' rules.default leads back to 'a', a cycle (a -> b -> a)" in err
    assert "spec.steps.a.rules.set.x: step 'a' rules.set.x: cannot compile CEL expression 'input.n >'" in err
