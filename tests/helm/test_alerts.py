"""The alert rules: valid for Prometheus' own checker, a promtool unit test per alert, a runbook per alert."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.helm.chart import CHART, REPO_ROOT

RULES = CHART / "alerts" / "aiplane.rules.yaml"
UNIT_TESTS = Path(__file__).with_name("alerts_test.yaml")
RUNBOOKS = REPO_ROOT / "docs" / "runbooks.md"
RUNBOOK_BASE = "https://aiplane.github.io/aiplane/runbooks/"


def _promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool not found (make setup installs Debian's prometheus package, which has it)"
    return path


def _alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_check_rules() -> None:
    proc = subprocess.run([_promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_unit_tests(tmp_path: Path) -> None:
    # The unit tests leave annotations out (their text is checked above); so does the copy they run against.
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / RULES.name).write_text(yaml.safe_dump(rules, sort_keys=False))
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    proc = subprocess.run(
        [_promtool(), "test", "rules", UNIT_TESTS.name], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_fires_in_a_unit_test() -> None:
    tests = yaml.safe_load(UNIT_TESTS.read_text())["tests"]
    firing = {case["alertname"] for test in tests for case in test.get("alert_rule_test", []) if case.get("exp_alerts")}
    assert {rule["alert"] for rule in _alerts()} <= firing


def test_the_issues_alerts_are_there() -> None:
    names = {rule["alert"] for rule in _alerts()}
    # SLA breach rate, multi-window error budget burn, retry storm, circuit open, consumer lag, DLQ growth, canary
    # rolled back, audit chain broken (and its scheduled check failing).
    assert {
        "AiplaneSLABreaches",
        "AiplaneErrorBudgetFastBurn",
        "AiplaneErrorBudgetSlowBurn",
        "AiplaneRetryStorm",
        "AiplaneCircuitOpen",
        "AiplaneConsumerLag",
        "AiplaneDeadLetterQueueGrowing",
        "AiplaneCanaryRolledBack",
        "AiplaneAuditChainBroken",
        "AiplaneAuditVerifyJobFailed",
    } <= names


def _anchors(markdown: str) -> set[str]:
    """Heading ids as mkdocs' toc extension makes them (lower case, punctuation dropped, spaces to dashes)."""
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", markdown, flags=re.MULTILINE)
    return {re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", heading).strip().lower()) for heading in headings}


def test_every_alert_links_its_runbook() -> None:
    anchors = _anchors(RUNBOOKS.read_text())
    for rule in _alerts():
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        url = rule["annotations"]["runbook_url"]
        assert url == f"{RUNBOOK_BASE}#{rule['alert'].lower()}", rule["alert"]
        assert rule["alert"].lower() in anchors, f"docs/runbooks.md has no section {rule['alert']}"
        assert rule["annotations"]["summary"], rule["alert"]
