"""Rules steps: decide ``vars`` with CEL, then choose the next step by the first true branch or the default."""

from __future__ import annotations

from typing import Any

from engine.errors import StepError
from engine.executors.base import StepContext, StepOutcome
from engine.flow import cel
from engine.tracing import ATTR_TASK_ID, SPAN_RULES, tracer


class RulesExecutor:
    def execute(self, ctx: StepContext) -> StepOutcome:
        rules = ctx.step.rules
        assert rules is not None
        where = f"step {ctx.step.name!r}"
        with tracer().start_as_current_span(SPAN_RULES, attributes={ATTR_TASK_ID: ctx.task_id}):
            decided: dict[str, Any] = {}
            task_vars = dict(ctx.vars)
            for key, expression in rules.set.items():
                # Each value sees the ones set before it in the same step: set: {score: ..., tier: vars.score > 5}
                value = cel.evaluate(
                    expression, cel.activation(ctx.input, ctx.steps, task_vars), where=f"{where} rules.set.{key}"
                )
                decided[key] = value
                task_vars[key] = value
            variables = cel.activation(ctx.input, ctx.steps, task_vars)
            chosen: str | None = None
            # Which rules fired, for the step's decision record: each condition tried, in order, and its verdict.
            tried: list[dict[str, Any]] = []
            for index, branch in enumerate(rules.branches):
                label = f"{where} rules.branches[{index}].when"
                matched = cel.evaluate(branch.when, variables, where=label)
                if not isinstance(matched, bool):
                    raise StepError(
                        cel.CEL_EVALUATION_ERROR,
                        f"{label}: {branch.when!r} gave {matched!r}, not a boolean",
                        retryable=False,
                    )
                tried.append({"when": branch.when, "next": branch.next, "matched": matched})
                if matched:
                    chosen = branch.next
                    break
            if chosen is None:
                chosen = rules.default
        return StepOutcome(
            output={"vars": decided, "next": chosen},
            vars=decided,
            next_step=chosen,
            lineage={"branches": tried} if rules.branches else None,
        )
