"""``/v1/dead-letters``: the caller's tenant's dead-lettered tasks (replay them with POST /v1/tasks/{id}/replay)."""

from __future__ import annotations

from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Depends, Query, Request

from api.auth import Reader
from api.problems import problem_responses
from api.schemas import ULID_PATTERN, DeadLetterPage, DeadLetterView
from api.state import Gateway, gateway
from api.telemetry import gateway_span

router = APIRouter(prefix="/v1/dead-letters", tags=["tasks"])


@router.get(
    "",
    response_model=DeadLetterPage,
    summary="List dead-lettered tasks",
    responses=problem_responses(401, 403, 422),
)
async def list_dead_letters(
    *,
    request: Request,
    principal: Reader,
    gw: Annotated[Gateway, Depends(gateway)],
    include_replayed: Annotated[
        bool, Query(alias="includeReplayed", description="Also those already replayed.")
    ] = False,
    limit: Annotated[int, Query(ge=1, le=500, description="Page size.")] = 50,
    cursor: Annotated[str | None, Query(pattern=ULID_PATTERN, description="nextCursor of the previous page.")] = None,
) -> DeadLetterPage:
    with gateway_span(request, "list_dead_letters", tenant=principal.tenant):
        page = await anyio.to_thread.run_sync(
            lambda: gw.engine.dead_letters(
                principal.tenant, include_replayed=include_replayed, limit=limit, cursor=cursor
            )
        )
    return DeadLetterPage(items=[DeadLetterView.of(d) for d in page.items], next_cursor=page.next_cursor)
