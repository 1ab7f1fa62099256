"""What a planner answers instead of a plan: a problem the caller can fix, as RFC 9457 problem details."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

PROBLEM_BASE = "https://aiplane.io/problems/"


class PlanError(ValueError):
    """A request the planner cannot plan for; ``status`` is 400 (bad request or config) or 422 (an expression that
    does not evaluate over this request), never a 5xx: the same request fails the same way every time."""

    def __init__(self, slug: str, title: str, detail: str, *, status: int = 400, errors: list[dict[str, str]]) -> None:
        super().__init__(detail)
        self.slug = slug
        self.title = title
        self.detail = detail
        self.status = status
        self.errors = errors

    def problem(self) -> dict[str, Any]:
        return {
            "type": PROBLEM_BASE + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "errors": self.errors,
        }


def _location(prefix: str, loc: tuple[int | str, ...]) -> str:
    path = prefix
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def config_error(exc: ValidationError, planner: str) -> PlanError:
    """A ``config`` that does not validate: every problem with its field path (``config.rules[0].when``)."""
    errors = [{"field": _location("config", error["loc"]), "message": error["msg"]} for error in exc.errors()]
    detail = f"the {planner} planner's config (the step's planner.config) is invalid: " + "; ".join(
        f"{error['field']}: {error['message']}" for error in errors
    )
    return PlanError("invalid-planner-config", "Invalid planner config", detail, errors=errors)


def invalid_config(field: str, message: str, planner: str) -> PlanError:
    detail = f"the {planner} planner's config (the step's planner.config) is invalid: {field}: {message}"
    return PlanError(
        "invalid-planner-config", "Invalid planner config", detail, errors=[{"field": field, "message": message}]
    )


def evaluation_error(field: str, expression: str, message: str) -> PlanError:
    detail = f"{field}: CEL expression {expression!r} failed over this request: {message}"
    return PlanError(
        "planner-expression-failed",
        "Planner expression failed",
        detail,
        status=422,
        errors=[{"field": field, "message": message}],
    )
