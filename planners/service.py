"""The shipped planners as BentoML services: ``ScriptedPlanner`` and ``RetrievalPlanner``.

Serve one (from anywhere aiplane is installed)::

    bentoml serve planners.service:ScriptedPlanner --port 3000
    bentoml serve planners.service:RetrievalPlanner --port 3000

API ``plan`` (POST ``/plan``, JSON): the body is a ``crds.planner.PlanRequest`` as the agent step sends it
(camelCase), the answer a ``PlanResponse`` (camelCase). A config the planner cannot use (a rule that does not
compile, an unknown key, an action that does not exist) is answered 400, and a CEL expression that fails over this
request 422, as problem+json naming the config field (``config.rules[1].when``); a body that is not a PlanRequest
is BentoML's 400. Probes: ``/livez``, ``/readyz`` (the retrieval planner is ready once its model is loaded).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import bentoml
from starlette.responses import JSONResponse

from crds.planner import PlanRequest, PlanResponse
from planners import retrieval, scripted
from planners.embedding import MODEL_NAME, SentenceEmbedder, default_embedder, one_blas_thread
from planners.errors import PlanError

logger = logging.getLogger("bentoml.aiplane.planners")


def _respond(plan: Callable[[], PlanResponse]) -> JSONResponse:
    try:
        response = plan()
    except PlanError as exc:
        logger.info("plan refused (%s): %s", exc.status, exc.detail)
        return JSONResponse(exc.problem(), status_code=exc.status, media_type="application/problem+json")
    return JSONResponse(response.model_dump(mode="json", by_alias=True))


@bentoml.service(name="aiplane-scripted-planner", traffic={"timeout": 30})
class ScriptedPlanner:
    """Declarative rules in the step's planner.config: the first rule whose CEL condition holds answers."""

    @bentoml.api(output_spec=PlanResponse)  # type: ignore[untyped-decorator]  # bentoml is untyped (Any)
    async def plan(self, request: PlanRequest, /) -> JSONResponse:
        """The next action, done, or escalate: the first rule of config.rules whose `when` holds."""
        return _respond(lambda: scripted.plan(request))


@bentoml.service(name="aiplane-retrieval-planner", traffic={"timeout": 30})
class RetrievalPlanner:
    """The action whose description is most similar (all-MiniLM-L6-v2 embeddings) to the goal and the state."""

    def __init__(self) -> None:
        started = time.perf_counter()
        self.embedder: SentenceEmbedder = default_embedder()
        limited = one_blas_thread()
        logger.info(
            "embedding model %s loaded in %.2f s; BLAS threads %s",
            MODEL_NAME,
            time.perf_counter() - started,
            "limited to 1" if limited else "as the environment sets them",
        )

    def __is_ready__(self) -> bool:
        return self.embedder is not None

    # Not async: the forward pass is CPU work, so BentoML runs it in its thread pool, off the event loop.
    @bentoml.api(output_spec=PlanResponse)  # type: ignore[untyped-decorator]  # bentoml is untyped (Any)
    def plan(self, request: PlanRequest, /) -> JSONResponse:
        """The most similar action that is left to try, with a confidence from the similarity and its margin."""
        return _respond(lambda: retrieval.plan(request, self.embedder))
