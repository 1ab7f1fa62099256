"""``SubmitFastPath`` answers every request as the FastAPI route does (the route serves what the fast path leaves)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.fast_submit import SubmitFastPath
from engine import Engine
from tests.api.conftest import Keys, app_without, auth

# Fields that differ between two submissions of the same request: the new task's identity and times.
_VOLATILE = {"id", "createdAt", "updatedAt", "deadline", "steps", "idempotencyKey"}


@pytest.fixture
def routed(engine: Engine) -> Iterator[TestClient]:
    """The gateway without ``SubmitFastPath``: every submission served by its FastAPI route."""
    with TestClient(app_without(engine, SubmitFastPath)) as test_client:
        yield test_client


GOOD = {"workflow": {"name": "echo"}, "input": {"claimId": "c-1"}, "priority": "high", "sla": "1h"}
CASES: list[tuple[str, str, dict[str, str], Any]] = [
    ("plain", "alice", {}, GOOD),
    ("with a key", "alice", {"Idempotency-Key": "{client}-k1"}, GOOD),
    ("annotated", "alice", {}, {**GOOD, "policy": {"privacy": "pii"}, "callbackUrl": "https://x.example/cb"}),
    ("async in the body", "alice", {}, {**GOOD, "mode": "async"}),
    ("unknown workflow", "alice", {}, {"workflow": {"name": "nope"}, "input": {}}),
    ("input against its schema", "alice", {}, {"workflow": {"name": "echo"}, "input": {"claimId": 7}}),
    ("malformed body", "alice", {}, {"workflow": {}, "input": []}),
    ("extra field", "alice", {}, {**GOOD, "surprise": 1}),
    ("deadline and sla", "alice", {}, {**GOOD, "deadline": "2999-01-01T00:00:00Z"}),
    ("not a submitter", "carol", {}, GOOD),
    ("no API key", "", {}, GOOD),
    ("key too long", "alice", {"Idempotency-Key": "k" * 256}, GOOD),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("query", ["", "?mode=async", "?mode=async&wait=2", "?wait=-1", "?mode=later"])
def test_fast_path_and_route_agree(
    client: TestClient, routed: TestClient, keys: Keys, case: tuple[str, str, dict[str, str], Any], query: str
) -> None:
    _, key, extra, body = case
    answers = []
    for name, http in (("fast", client), ("route", routed)):
        headers = {k: v.format(client=name) for k, v in extra.items()}
        headers = auth(getattr(keys, key), **headers) if key else headers
        answers.append(http.post(f"/v1/tasks{query}", json=body, headers=headers))
    fast, route = answers
    assert fast.status_code == route.status_code, (fast.text, route.text)
    assert fast.headers["content-type"] == route.headers["content-type"]
    if fast.status_code == 202:
        assert fast.headers["location"].endswith(fast.json()["id"])
        assert {k: v for k, v in fast.json().items() if k not in _VOLATILE} == {
            k: v for k, v in route.json().items() if k not in _VOLATILE
        }
        assert [s["name"] for s in fast.json()["steps"]] == [s["name"] for s in route.json()["steps"]]
    else:
        assert fast.json() == route.json()


def test_a_body_sent_in_pieces_is_read_whole(client: TestClient, keys: Keys) -> None:
    def pieces() -> Iterator[bytes]:
        yield b'{"workflow": {"name": "echo"}, '
        yield b'"input": {"claimId": "c-9"}}'

    headers = auth(keys.alice, **{"Content-Type": "application/json"})
    response = client.post("/v1/tasks", content=pieces(), headers=headers)
    assert response.status_code == 202, response.text
    assert response.json()["input"] == {"claimId": "c-9"}
