"""The gateway's error logs masked like everything else: a traceback whose exception quotes a task's input (a
validator's message, a driver's error echoing a parameter) must not put personal data into the logs when a Policy
masks it in the store.

While a request is served, ``bind`` keeps the engine's ``WorkflowMasking`` with what is known of the request (its
tenant once authenticated, its workflow once the body is read) in a context variable. ``MaskingFilter``, on the
loggers that log a request's errors (the gateway's exception handlers and uvicorn's "Exception in ASGI
application", which Starlette's last-resort handler re-raises to), turns every warning or error of such a request
into one masked line: its message and the formatted exception chain, masked by the workflow's Policy (and every
value of the task input that the Policy masks, wherever the text quotes it), or with every entity redacted while
the workflow is unknown (``WorkflowMasking.error_text``). A prediction binds its Model instead, with the masking of
the Policies that select it (``policies.model_calls``): its errors are masked by the Model's own ``pii``, as a
task's are by its workflow's. Outside a request, or without masking, records pass as they are.
"""

from __future__ import annotations

import logging
import traceback
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from policies.masking import WorkflowMasking

#: Loggers that log a request's exceptions.
LOGGERS = ("aiplane.gateway", "uvicorn.error")


@dataclass(frozen=True)
class _Bound:
    masking: WorkflowMasking
    tenant: str | None = None
    workflow: str | None = None
    data: Any = None
    #: A prediction's Model and the masking of its Policies (by Model name); they take the workflow's place.
    model: str | None = None
    model_masking: WorkflowMasking | None = None


_bound: ContextVar[_Bound | None] = ContextVar("aiplane_log_masking", default=None)


def bind(
    *,
    tenant: str | None = None,
    workflow: str | None = None,
    data: Any = None,
    model: str | None = None,
    model_masking: WorkflowMasking | None = None,
) -> None:
    """What the request is now known to be about: its tenant, its workflow and the task input it carries, or the
    Model it calls with the masking of the Model's Policies (a no-op outside a masked request)."""
    current = _bound.get()
    if current is not None:
        _bound.set(
            replace(
                current,
                tenant=tenant or current.tenant,
                workflow=workflow or current.workflow,
                data=data if data is not None else current.data,
                model=model or current.model,
                model_masking=model_masking or current.model_masking,
            )
        )


class MaskingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        bound = _bound.get()
        if bound is None or record.levelno < logging.WARNING:
            return True
        text = record.getMessage()
        if record.exc_info is not None and record.exc_info[1] is not None:
            text += "\n" + "".join(traceback.format_exception(record.exc_info[1])).rstrip()
        if bound.model is not None and bound.model_masking is not None:
            record.msg = bound.model_masking.error_text(bound.tenant, bound.model, text, data=bound.data)
        else:
            record.msg = bound.masking.error_text(bound.tenant, bound.workflow, text, data=bound.data)
        record.args = None
        record.exc_info = None
        record.exc_text = None
        return True


def install() -> None:
    """Put ``MaskingFilter`` on ``LOGGERS`` (once per process: it does nothing outside a masked request)."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, MaskingFilter) for f in logger.filters):
            logger.addFilter(MaskingFilter())


class LogMaskingMiddleware:
    """Outermost: binds ``masking`` for each HTTP request, so even an error before authentication is masked."""

    def __init__(self, app: ASGIApp, *, masking: WorkflowMasking) -> None:
        self.app = app
        self.masking = masking

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            # Set in this task's context, where uvicorn logs what escapes the app; each request is its own task.
            _bound.set(_Bound(self.masking))
        await self.app(scope, receive, send)
