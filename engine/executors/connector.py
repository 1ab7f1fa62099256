"""Connector steps: HTTP calls, PostgreSQL statements and kafkaSink records."""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from crds.base import SecretKeyRef
from crds.connector import HTTP, KafkaSink, Postgres
from crds.workflow import ConnectorCall
from engine.durations import parse_duration
from engine.errors import StepError
from engine.executors.base import StepContext, StepOutcome
from engine.executors.destinations import Resolver, check_destination, resolve_host
from engine.executors.http import HttpCaller
from engine.executors.model import request_body
from engine.executors.postgres import NO_DATABASE_CLIENT, PostgresClient, pick_query, query_params
from engine.executors.resolvers import ConnectorResolver, SecretResolver
from engine.flow import cel
from engine.sinks import InMemorySink, Record, RecordSink
from engine.tracing import ATTR_TASK_ID, SPAN_CONNECTOR_CALL, tracer
from policies import metrics as policy_metrics
from policies import residency as residency_rules

CONNECTOR_NOT_FOUND = "ConnectorNotFound"
UNSUPPORTED_CONNECTOR = "UnsupportedConnector"
INVALID_INPUT = "InvalidInput"
SECRET_UNAVAILABLE = "SecretUnavailable"


def render_url(template: str, values: Any) -> tuple[str, set[str]]:
    """Fill ``{name}`` placeholders from the step input (URL-encoded); returns the URL and the names used."""
    fields = [name for _, name, _, _ in string.Formatter().parse(template) if name]
    if not fields:
        return template, set()
    if not isinstance(values, Mapping):
        raise StepError(
            INVALID_INPUT, f"URL {template!r} has placeholders but the input is not an object", retryable=False
        )
    missing = [name for name in fields if name not in values]
    if missing:
        raise StepError(INVALID_INPUT, f"URL {template!r} needs input field(s) {', '.join(missing)}", retryable=False)
    return template.format_map({name: quote(str(values[name]), safe="") for name in fields}), set(fields)


class ConnectorExecutor:
    def __init__(
        self,
        resolver: ConnectorResolver,
        http: HttpCaller,
        secrets: SecretResolver | None = None,
        sink: RecordSink | None = None,
        *,
        postgres: PostgresClient | None = None,
        resolve: Resolver = resolve_host,
        residency: residency_rules.Residency | None = None,
    ) -> None:
        self.resolver = resolver
        self.residency = residency
        self.http = http
        self.secrets = secrets
        self.sink: RecordSink = sink or InMemorySink()
        self.postgres = postgres
        self.resolve = resolve

    def execute(self, ctx: StepContext) -> StepOutcome:
        call = ctx.step.connector
        assert call is not None
        spec = self.resolver.connector(call.name)
        if spec is None:
            raise StepError(CONNECTOR_NOT_FOUND, f"connector {call.name!r} does not exist", retryable=True)
        if self.residency is not None:
            denied = self.residency.check(
                ctx.tenant, ctx.workflow, "connector", call.name, spec.region, task_region=ctx.region
            )
            if denied is not None:
                policy_metrics.denied("residency")
                raise StepError(residency_rules.DENIED, denied, retryable=False)
        payload = request_body(ctx, call.input, f"step {ctx.step.name!r} connector.input")
        if spec.type == "http" and spec.http is not None:
            return StepOutcome(
                output=self._call_http(ctx, call.name, spec.http, payload), lineage={"connector": call.name}
            )
        if spec.type == "kafkaSink" and spec.kafka_sink is not None:
            return StepOutcome(
                output=self._send_record(ctx, call.name, spec.kafka_sink, payload), lineage={"connector": call.name}
            )
        if spec.type == "postgres" and spec.postgres is not None:
            return StepOutcome(
                output=self._run_query(ctx, call, spec.postgres, payload), lineage={"connector": call.name}
            )
        raise StepError(
            UNSUPPORTED_CONNECTOR,
            f"connector {call.name!r} is of type {spec.type}; connector steps support http, postgres and kafkaSink",
            retryable=False,
        )

    def _send_record(self, ctx: StepContext, name: str, sink: KafkaSink, payload: Any) -> dict[str, Any]:
        variables = cel.activation(ctx.input, ctx.steps, ctx.vars)
        where = f"connector {name!r} kafkaSink"
        key = ctx.task_id if sink.key is None else str(cel.evaluate(sink.key, variables, where=f"{where}.key"))
        value = cel.evaluate_map(sink.value, variables, where=f"{where}.value") if sink.value else payload
        headers = {"Idempotency-Key": ctx.idempotency_key, "aiplane-task-id": ctx.task_id}
        with tracer().start_as_current_span(
            SPAN_CONNECTOR_CALL,
            attributes={ATTR_TASK_ID: ctx.task_id, "aiplane.connector.name": name, "messaging.destination": sink.topic},
        ):
            try:
                self.sink.send(Record(topic=sink.topic, key=key, value=value, headers=headers, connector=name))
            except Exception as exc:  # the sink is a downstream like any other: its failure is a retryable attempt
                raise StepError("SinkUnavailable", f"connector {name!r}: {exc}", retryable=True) from exc
        return {"topic": sink.topic, "key": key}

    def _call_http(self, ctx: StepContext, name: str, http: HTTP, payload: Any) -> Any:
        url, used = render_url(http.url, payload)
        allow = http.allow_private_networks
        params: dict[str, str] | None = None
        body = payload
        if http.method in ("GET", "DELETE"):
            # No body on GET/DELETE: scalar input fields not used in the URL become query parameters.
            body = None
            if isinstance(payload, Mapping):
                params = {
                    k: str(v) for k, v in payload.items() if k not in used and isinstance(v, str | int | float | bool)
                }
        timeout = min(parse_duration(http.timeout).total_seconds(), ctx.timeout)
        with tracer().start_as_current_span(
            SPAN_CONNECTOR_CALL,
            attributes={ATTR_TASK_ID: ctx.task_id, "aiplane.connector.name": name, "http.request.method": http.method},
        ):
            return self.http.call(
                ctx,
                downstream=f"connector/{name}",
                method=http.method,
                url=url,
                body=body,
                params=params,
                headers=self._headers(name, http),
                timeout=timeout,
                # Checked for the URL and for every redirect; the call connects to the address that was checked.
                guard=lambda target: check_destination(target, allow, self.resolve),
            )

    def _run_query(self, ctx: StepContext, call: ConnectorCall, postgres: Postgres, payload: Any) -> Any:
        name = call.name
        query = pick_query(name, postgres, call.operation)
        params = query_params(ctx, name, payload)
        dsn = self._secret(name, postgres.dsn, "dsn")
        if self.postgres is None:
            raise StepError(
                NO_DATABASE_CLIENT,
                f"connector {name!r} is a postgres connector, and this engine was started without a PostgreSQL "
                "client (Engine(postgres=connectors.postgres.PostgresClient()))",
                retryable=False,
            )
        with tracer().start_as_current_span(
            SPAN_CONNECTOR_CALL,
            attributes={
                ATTR_TASK_ID: ctx.task_id,
                "aiplane.connector.name": name,
                "db.system": "postgresql",
                "db.operation.name": query.name,
            },
        ):
            return self.postgres.run(
                connector=name,
                dsn=dsn,
                query=query,
                params=params,
                timeout=ctx.timeout,
                pool_size=postgres.pool_size,
            )

    def _headers(self, name: str, http: HTTP) -> dict[str, str]:
        headers: dict[str, str] = {}
        for header in http.headers:
            if header.value is not None:
                headers[header.name] = header.value
            elif header.value_from is not None:
                headers[header.name] = self._secret(name, header.value_from, f"header {header.name}")
        return headers

    def _secret(self, name: str, ref: SecretKeyRef, what: str) -> str:
        """A Secret's value; retryable when missing, as a Secret may be created after the Connector."""
        value = self.secrets.secret(ref.name, ref.key) if self.secrets else None
        if value is None:
            raise StepError(
                SECRET_UNAVAILABLE,
                f"connector {name!r} {what} needs secret {ref.name}/{ref.key}, which is not available",
                retryable=True,
            )
        return value
