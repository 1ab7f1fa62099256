"""The CLI's client commands (`aiplane submit|approvals|approve|get|replay`) against a real gateway under uvicorn."""

from __future__ import annotations

import json

import pytest

from aiplane import cli
from engine import Worker
from tests.api.conftest import Keys, Reply, Served, Upstream
from tests.fixtures.polling import assert_eventually


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> object:
    assert cli.main(list(args)) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_submit_approve_and_follow_a_task(
    served: Served, keys: Keys, worker: Worker, capsys: pytest.CaptureFixture[str]
) -> None:
    submitter = ("--url", served.base_url, "--api-key", keys.alice)
    approver = ("--url", served.base_url, "--api-key", keys.bob)
    task = _run(capsys, "submit", "gated", "{}", *submitter)
    assert isinstance(task, dict)

    def pending() -> dict[str, object]:
        page = _run(capsys, "approvals", *approver)
        assert isinstance(page, dict)
        (approval,) = [a for a in page["items"] if a["taskId"] == task["id"]]
        return dict(approval)

    approval = assert_eventually(pending, timeout=30, interval=0.1)
    _run(capsys, "approve", str(approval["id"]), "--reason", "looks right", *approver)

    def finished() -> None:
        shown = _run(capsys, "get", str(task["id"]), *submitter)
        assert isinstance(shown, dict)
        assert shown["state"] == "succeeded"

    assert_eventually(finished, timeout=30, interval=0.1)
    events = _run(capsys, "get", str(task["id"]), "--events", *submitter)
    assert "approval.decided" in json.dumps(events)


def test_replay_a_dead_lettered_task(
    served: Served, keys: Keys, worker: Worker, upstream: Upstream, capsys: pytest.CaptureFixture[str]
) -> None:
    submitter = ("--url", served.base_url, "--api-key", keys.alice)
    # HTTP 400 is not retryable: the task is dead-lettered at its first attempt.
    upstream.script("/fragile", Reply(status=400, body={"error": "bad"}))
    task = _run(capsys, "submit", "fragile", "{}", *submitter)
    assert isinstance(task, dict)

    def state() -> str:
        shown = _run(capsys, "get", str(task["id"]), *submitter)
        assert isinstance(shown, dict)
        return str(shown["state"])

    assert_eventually(lambda: state() == "dead_lettered", timeout=30, interval=0.1)

    upstream.script("/fragile", Reply(status=200, body={"ok": True}))
    replayed = _run(capsys, "replay", str(task["id"]), *submitter)
    assert isinstance(replayed, dict)
    assert replayed["id"] == task["id"]
    assert_eventually(lambda: state() == "succeeded", timeout=30, interval=0.1)
    # Resumed from the failed step: one failed call, one that succeeded.
    assert upstream.count("/fragile") == 2
    # A task no longer dead-lettered is not replayed again: exit 1, the gateway's problem on stderr.
    assert cli.main(["replay", str(task["id"]), *submitter]) == 1
    assert "409" in capsys.readouterr().err


def test_submit_a_task_with_its_own_region(served: Served, keys: Keys, capsys: pytest.CaptureFixture[str]) -> None:
    task = _run(
        capsys, "submit", "gated", "{}", "--region", "eu-west", "--url", served.base_url, "--api-key", keys.alice
    )
    assert isinstance(task, dict)
    assert task["region"] == "eu-west"


def test_gateway_problems_are_reported_not_raised(
    served: Served, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["submit", "no-such-workflow", "{}", "--url", served.base_url, "--api-key", keys.alice]) == 1
    assert "404" in capsys.readouterr().err
    assert cli.main(["submit", "gated", "{not json", "--url", served.base_url, "--api-key", keys.alice]) == 2
