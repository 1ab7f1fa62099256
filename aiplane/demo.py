"""`aiplane demo`: the claims-triage case end to end on the embedded default, narrated.

Starts `aiplane dev` as a child process (exactly as a user would), submits two sample claims, shows the small one
decided automatically and the large one waiting for a human, approves it, and prints its trace. Then an incomplete
claim goes to the claims-completion agent, which asks the claimant portal for the missing document, reads the claim
again with it, and completes it; each of its proposals is shown with the engine's decision.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx

from aiplane.client import Client
from aiplane.modelserver import free_port
from aiplane.processes import stop_process_group

T = TypeVar("T")

SMALL_CLAIM = {
    "claimId": "CLM-1001",
    "document": (
        "Claim form. Policy number: PL-20481234. Incident date: 2026-11-02. Our car was hit in a parking lot; "
        "the rear bumper and a tail light need replacing at the body shop. Amount claimed: $1,240.00."
    ),
}
LARGE_CLAIM = {
    "claimId": "CLM-1002",
    "document": (
        "Dear claims team, a burst pipe flooded the ground floor of our house on 2026-10-28 and damaged the "
        "kitchen, floors and walls. Policy PL-77310020. The contractor's estimate for the water damage repairs "
        "is $48,500.00. Kind regards."
    ),
}
INCOMPLETE_CLAIM = {
    "claimId": "CLM-2001",
    "document": (
        "Hello, my suitcase was lost on my flight to Lisbon on 2026-10-14 and the airline never found it. "
        "I am claiming EUR 860.00 for the bag and its contents."
    ),
}
WORKFLOW = "claims-triage"
COMPLETION_WORKFLOW = "claims-completion"


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _until(what: str, check: Callable[[], T | None], timeout: float = 120.0) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value is not None:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not happen within {timeout:.0f}s")


@contextmanager
def dev_process(examples: Path, data_dir: Path, port: int) -> Iterator[str]:
    """Run `aiplane dev` and yield its API key once the gateway answers."""
    command = [sys.executable, "-m", "aiplane.cli", "dev", "--examples", str(examples)]
    command += ["--data-dir", str(data_dir), "--port", str(port)]
    log_path = data_dir / "dev.log"
    data_dir.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, start_new_session=True)
    try:
        assert process.stdout is not None
        key = ""
        for raw in process.stdout:
            line = raw.decode().rstrip()
            print(f"   | {line}", flush=True)
            if line.startswith("API key: "):
                key = line.removeprefix("API key: ")
                break
        if not key:
            raise RuntimeError(f"aiplane dev exited before printing its API key; see {log_path}")
        url = f"http://127.0.0.1:{port}"
        _until("the gateway to answer /readyz", lambda: _ready(url) or None)
        yield key
    finally:
        # SIGINT, as Ctrl-C would: aiplane dev stops its model servers on the way out.
        stop_process_group(process, 30, signal.SIGINT)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _state(client: Client, task_id: str, *states: str) -> dict[str, Any] | None:
    task: dict[str, Any] = client.get(task_id)
    return task if task["state"] in states else None


def _print_trace(trace: dict[str, Any]) -> None:
    spans = sorted(trace["spans"], key=lambda s: s.get("startTimeUnixNano") or 0)
    children: dict[str | None, list[dict[str, Any]]] = {}
    ids = {span.get("spanId") for span in spans}
    for span in spans:
        parent = span.get("parentSpanId")
        children.setdefault(parent if parent in ids else None, []).append(span)

    def walk(parent: str | None, depth: int) -> None:
        for span in children.get(parent, []):
            start, end = span.get("startTimeUnixNano"), span.get("endTimeUnixNano")
            took = f"{(end - start) / 1e6:8.1f} ms" if start and end else "         "
            print(f"   {took}  {'  ' * depth}{span['name']}", flush=True)
            walk(span.get("spanId"), depth + 1)

    walk(None, 0)


def run(examples: Path, port: int | None = None) -> int:
    port = port or free_port()
    with tempfile.TemporaryDirectory(prefix="aiplane-demo-") as tmp:
        _say(f"Starting `aiplane dev` on port {port} with {examples}")
        with dev_process(examples, Path(tmp), port) as key:
            client = Client(f"http://127.0.0.1:{port}", key)

            _say(f"Submitting a small claim ({SMALL_CLAIM['claimId']}) and waiting for its result")
            small = client.submit(WORKFLOW, SMALL_CLAIM, wait=60)
            small = _until("the small claim to finish", lambda: _state(client, small["id"], "succeeded", "failed"))
            extract = next(s for s in small["steps"] if s["name"] == "extract")["output"]
            print(
                f"   extracted: type={extract['claim_type']} amount={extract['amount']} "
                f"confidence={extract['confidence']:.2f}"
            )
            print(f"   decided:   {small['vars']} -> {small['state']} without a human")

            _say(f"Submitting a large claim ({LARGE_CLAIM['claimId']})")
            large = client.submit(WORKFLOW, LARGE_CLAIM)
            large = _until("the large claim to wait for a human", lambda: _state(client, large["id"], "waiting"))
            print(f"   task {large['id']} is {large['state']} at step {large['currentStep']}; vars {large['vars']}")

            pending = client.approvals()["items"]
            approval = next(a for a in pending if a["taskId"] == large["id"])
            print(f"   approval {approval['id']} for roles {approval['roles']}: {approval['prompt']}")

            _say("Approving it as an adjuster would")
            client.approve(approval["id"], "Estimate checked against the contractor's invoice.")
            large = _until("the approved claim to finish", lambda: _state(client, large["id"], "succeeded", "failed"))
            print(f"   task {large['id']} {large['state']}: published {large['result']}")

            _say(f"Trace of {large['id']} (gateway, engine, steps, model call)")
            _print_trace(client.trace(large["id"]))

            _say(f"Submitting a claim without a policy number ({INCOMPLETE_CLAIM['claimId']}) to {COMPLETION_WORKFLOW}")
            incomplete = client.submit(COMPLETION_WORKFLOW, INCOMPLETE_CLAIM)
            incomplete = _until(
                "the agent to finish", lambda: _state(client, incomplete["id"], "succeeded", "waiting", "failed")
            )
            agent = next(s for s in incomplete["steps"] if s["name"] == "complete")["output"]
            for entry in agent["transcript"]:
                what = entry["action"] or entry["decision"]
                print(f"   proposal {entry['step']}: {what:<17} {entry['decision']:<8} -> {entry['state']}")
            spent = f"{agent['steps']} proposals, cost {agent['cost']:g}"
            print(f"   agent {agent['status']} after {spent}: {agent.get('result')}")
            ok = small["state"] == "succeeded" and large["state"] == "succeeded" and incomplete["state"] == "succeeded"
    _say("Done" if ok else "A claim did not succeed")
    return 0 if ok else 1
