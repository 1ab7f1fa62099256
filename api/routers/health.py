"""``/healthz`` (the process answers), ``/readyz`` (the store is reachable), ``/metrics`` (Prometheus)."""

from __future__ import annotations

import contextlib
from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from sqlalchemy.exc import SQLAlchemyError

from api.problems import ProblemError, problem_responses
from api.schemas import Health
from api.state import Gateway, gateway

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health, summary="Liveness: the gateway answers", responses=problem_responses())
async def healthz() -> Health:
    return Health()


@router.get(
    "/readyz",
    response_model=Health,
    summary="Readiness: the store is reachable",
    responses=problem_responses(503),
)
async def readyz(gw: Annotated[Gateway, Depends(gateway)]) -> Health:
    def ping() -> None:
        gw.keys.ping()
        gw.engine.list("", limit=1)

    try:
        await anyio.to_thread.run_sync(ping)
    except SQLAlchemyError as exc:
        raise ProblemError(
            503,
            "store-unavailable",
            f"the task store is not reachable ({type(exc).__name__}); check the database and its URL",
            headers={"Retry-After": "5"},
        ) from exc
    return Health()


@router.get(
    "/metrics",
    summary="Prometheus metrics of the gateway and the engine",
    response_class=Response,
    responses={
        200: {"description": "Prometheus text format.", "content": {"text/plain": {"schema": {"type": "string"}}}},
        **problem_responses(),
    },
)
async def metrics(gw: Annotated[Gateway, Depends(gateway)]) -> Response:
    # The store gauges are otherwise set only by workers, and this process may run none.
    with contextlib.suppress(SQLAlchemyError):  # an unreachable store shows in /readyz; metrics still answer
        await anyio.to_thread.run_sync(gw.engine.refresh_gauges)
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
