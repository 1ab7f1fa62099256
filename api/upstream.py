"""The model client of the predict path: one keep-alive connection pool (httpx), shared by every request.

Requests go straight to ``httpx.AsyncHTTPTransport`` rather than through ``httpx.AsyncClient``: the client's
layers (auth, redirects, cookies, event hooks, URL merging) do nothing for a pass-through POST but cost about a
sixth of the gateway's own time per call. Timeouts travel in the request's ``timeout`` extension, as the client
would set them; errors are httpx's (``httpx.TimeoutException``, ``httpx.ConnectError``, ...).
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass

import httpx

if importlib.util.find_spec("sniffio") is None:
    # httpcore tries ``import sniffio`` on every request of an async connection; without the package each try
    # searches sys.path again (about 0.2 ms, several times per call). Remember once that it is missing.
    sys.modules.setdefault("sniffio", None)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Answer:
    status: int
    headers: httpx.Headers
    content: bytes


class ModelClient:
    def __init__(self, *, timeout: float, connect_timeout: float, max_connections: int) -> None:
        self.transport = httpx.AsyncHTTPTransport(
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
                keepalive_expiry=30.0,
            ),
            trust_env=False,
        )
        self._timeout = {"connect": connect_timeout, "read": timeout, "write": timeout, "pool": timeout}

    async def post(self, url: str, content: bytes, headers: dict[str, str]) -> Answer:
        request = httpx.Request("POST", url, content=content, headers=headers, extensions={"timeout": self._timeout})
        response = await self.transport.handle_async_request(request)
        try:
            body = await response.aread()
        finally:
            await response.aclose()
        return Answer(response.status_code, response.headers, body)

    async def aclose(self) -> None:
        await self.transport.aclose()
