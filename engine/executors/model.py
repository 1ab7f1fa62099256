"""Model steps: POST to a Model's BentoML API, on a live version picked by traffic weight.

Before the call: the workflow's residency (``policies.residency``), then the Policies that select the Model
(``policies.model_calls``: tenant access and residency, as for a prediction through the gateway). A refusal fails
the step without retries and the model is not called."""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Any

from engine.errors import StepDeferredError, StepError
from engine.executors.base import StepContext, StepOutcome
from engine.executors.http import CONNECTION_ERROR, TIMEOUT, HttpCaller
from engine.executors.resolvers import ModelResolver, pick_endpoint
from engine.flow import cel
from engine.metrics import MODEL_CALL_DURATION
from engine.tracing import ATTR_TASK_ID, SPAN_MODEL_CALL, tracer
from policies import metrics as policy_metrics
from policies import residency as residency_rules
from policies.model_calls import TENANT_DENIED

if TYPE_CHECKING:
    from policies.model_calls import ModelPolicies

MODEL_UNAVAILABLE = "ModelUnavailable"


def request_body(ctx: StepContext, expressions: dict[str, str], where: str) -> Any:
    """The step's CEL ``input`` map evaluated over the task's data, or the task input when the map is empty."""
    if not expressions:
        return ctx.input
    return cel.evaluate_map(expressions, cel.activation(ctx.input, ctx.steps, ctx.vars), where=where)


class ModelExecutor:
    def __init__(
        self,
        resolver: ModelResolver,
        http: HttpCaller,
        rng: random.Random | None = None,
        *,
        residency: residency_rules.Residency | None = None,
        model_policies: ModelPolicies | None = None,
    ) -> None:
        self.resolver = resolver
        self.residency = residency
        self.model_policies = model_policies
        self.http = http
        self.rng = rng or random.Random()
        # The namespace of the resolver's Models (a cluster's resolver knows it; the static ones do not).
        self.namespace = str(getattr(resolver, "namespace", "") or "")

    def execute(self, ctx: StepContext) -> StepOutcome:
        call = ctx.step.model
        assert call is not None
        residency = self.residency
        denied = (
            residency.check(ctx.tenant, ctx.workflow, "model", call.name, task_region=ctx.region) if residency else None
        )
        if denied is not None:  # not retried: the answer does not change by trying again
            policy_metrics.denied("residency")
            raise StepError(residency_rules.DENIED, denied, retryable=False)
        allowed_by = self.check_model_policies(ctx.tenant, call.name) if self.model_policies is not None else ()
        endpoint = pick_endpoint(self.resolver.endpoints(call.name), self.rng)
        if endpoint is None:
            # Retryable: a model that is rolling out or scaling from zero has no live endpoint for a moment.
            raise StepError(MODEL_UNAVAILABLE, f"model {call.name!r} has no live endpoint", retryable=True)
        body = request_body(ctx, call.input, f"step {ctx.step.name!r} model.input")
        url = f"{endpoint.url.rstrip('/')}/{call.api}"
        with tracer().start_as_current_span(
            SPAN_MODEL_CALL,
            attributes={
                ATTR_TASK_ID: ctx.task_id,
                "aiplane.model.name": call.name,
                "aiplane.model.version": endpoint.version,
                "aiplane.model.api": call.api,
                "url.full": url,
            },
        ):
            start = time.perf_counter()
            outcome = "error"
            try:
                output = self.http.call(
                    ctx, downstream=f"model/{call.name}", method="POST", url=url, body=body, timeout=ctx.timeout
                )
                outcome = "ok"
            except StepDeferredError:
                outcome = ""  # held back before anything was sent: not a call
                raise
            except StepError as error:
                outcome = _outcome(error)
                raise
            finally:
                if outcome:
                    MODEL_CALL_DURATION.labels(self.namespace, call.name, endpoint.version, outcome).observe(
                        time.perf_counter() - start
                    )
                    if allowed_by:  # a call was made (not held back): the attempt's allow record names it
                        ctx.allowed.append({"model": call.name, "policies": list(allowed_by)})
        lineage = {"model": call.name, "version": endpoint.version, "endpoint": url}
        return StepOutcome(output=output, lineage=lineage)

    def check_model_policies(self, tenant: str, model: str) -> tuple[str, ...]:
        """Raise the step error of a call the Model's own Policies refuse ``tenant`` (``ModelCall.refusal``, the
        gateway's predict decision): not retried, naming the Policies and why. Otherwise the versions of the
        Policies that selected the Model and allowed the call (empty: none governs it)."""
        assert self.model_policies is not None
        region = self.residency.model_regions.get(model) if self.residency is not None else None
        decided = self.model_policies.call(model, tenant)
        refused = decided.refusal(region)
        if refused is None:
            return decided.policies
        tenant_denied = refused.reason == "tenant-denied"
        policy_metrics.denied("access" if tenant_denied else "residency")
        by = ", ".join(refused.policies) or "its Policies"
        raise StepError(
            TENANT_DENIED if tenant_denied else residency_rules.DENIED,
            f"{refused.detail} (Policy {by} selecting model {model!r})",
            retryable=False,
            policies=refused.policies,
        )


def _outcome(error: StepError) -> str:
    """The gateway's outcome words for a failed call, so the two histograms add up."""
    if error.kind == TIMEOUT:
        return "timeout"
    if error.kind == CONNECTION_ERROR:
        return "unreachable"
    status = error.status or 0
    return "rejected" if 400 <= status < 500 else "error"
