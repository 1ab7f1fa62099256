"""A small client of the gateway for the CLI (`aiplane submit|get|approvals|approve|reject|replay|detokenize`)."""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8080"


class GatewayError(RuntimeError):
    """The gateway answered with a problem; the message is its title and detail."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        detail = problem.get("detail") or problem.get("title") or "request failed"
        super().__init__(f"{status} {problem.get('title', '')}: {detail}".strip())


@dataclass
class Client:
    url: str
    api_key: str
    timeout: float = 90.0

    @classmethod
    def from_env(cls, url: str | None = None, api_key: str | None = None) -> Client:
        key = api_key or os.environ.get("AIPLANE_API_KEY")
        if not key:
            raise GatewayError(401, {"title": "No API key", "detail": "pass --api-key or set AIPLANE_API_KEY"})
        return cls(url or os.environ.get("AIPLANE_URL", DEFAULT_URL), key)

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.api_key}", **kwargs.pop("headers", {})}
        response = httpx.request(method, self.url.rstrip("/") + path, headers=headers, timeout=self.timeout, **kwargs)
        if response.status_code >= 400:
            try:
                problem = response.json()
            except ValueError:
                problem = {"title": response.reason_phrase, "detail": response.text[:500]}
            raise GatewayError(response.status_code, problem)
        return response.json() if response.content else None

    def submit(
        self,
        workflow: str,
        task_input: dict[str, Any],
        *,
        wait: float | None = None,
        key: str | None = None,
        region: str | None = None,
    ) -> Any:
        params = {"mode": "sync", "wait": str(wait)} if wait else {"mode": "async"}
        body: dict[str, Any] = {"workflow": {"name": workflow}, "input": task_input}
        if region is not None:
            body["region"] = region
        headers = {"Idempotency-Key": key or str(uuid.uuid4())}
        return self._request("POST", "/v1/tasks", params=params, json=body, headers=headers)

    def get(self, task_id: str) -> Any:
        return self._request("GET", f"/v1/tasks/{task_id}")

    def trace(self, task_id: str) -> Any:
        return self._request("GET", f"/v1/tasks/{task_id}/trace")

    def events(self, task_id: str) -> Any:
        return self._request("GET", f"/v1/tasks/{task_id}/events")

    def approvals(self, state: str = "pending") -> Any:
        return self._request("GET", "/v1/approvals", params={"state": state})

    def approve(self, approval_id: str, reason: str) -> Any:
        return self._request("POST", f"/v1/approvals/{approval_id}/approve", json={"reason": reason})

    def reject(self, approval_id: str, reason: str) -> Any:
        return self._request("POST", f"/v1/approvals/{approval_id}/reject", json={"reason": reason})

    def replay(self, task_id: str) -> Any:
        return self._request("POST", f"/v1/tasks/{task_id}/replay")

    def detokenize(
        self, reason: str, *, task_id: str | None = None, workflow: str | None = None, value: Any = None
    ) -> Any:
        """Open tokenized personal data (``POST /v1/detokenize``): a task's, or ``value`` masked by ``workflow``'s
        Policies. The gateway checks the unmask roles and audits the request, opened or refused."""
        body: dict[str, Any] = {"reason": reason}
        if task_id is not None:
            body["taskId"] = task_id
        else:
            body.update(workflow=workflow, value=value)
        return self._request("POST", "/v1/detokenize", json=body)


def dumps(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=False, default=str)
