"""PII masking through the real engine: personal data in a task's input and in a model's answer never reaches
the store (the SQLite file and its blobs searched byte for byte, every PostgreSQL table as text), the model, the
Kafka sink's records, the spans or the logs, when a Policy masks it; tokens open again for an unmask role."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from api import create_api_key, create_app
from crds.policy import PII
from engine import Engine, InMemorySink, StaticConnectorResolver, StaticModelResolver, TaskState
from engine.tracing import TaskSpanStore
from policies.masking import WorkflowMasking, detokenize, masks_in
from policies.tokens import MaskingKeys
from tests.api.conftest import Served
from tests.engine.conftest import fast_worker, wait_done
from tests.fixtures.downstream import Downstream, Reply

KEYS = MaskingKeys(bytes(range(100, 132)))
POLICY = PII.model_validate(
    {
        "entities": ["EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "DATE_OF_BIRTH", "PERSON"],
        "fields": ["input.claimant.policyRef"],
        "action": "tokenize",
        "unmaskRoles": ["auditor"],
    }
)
CLAIM: dict[str, Any] = {
    "claimId": "CLM-0000042",
    "claimant": {
        "name": "Jane Roe",
        "email": "jane.roe@example.com",
        "phone": "+1 415-555-0132",
        "dob": "1984-03-12",
        "ssn": "219-09-9999",
        "policyRef": "PR-7781-XK",
    },
    "description": "Refund to card 4111 1111 1111 1111 or IBAN DE89 3704 0044 0532 0130 00.",
    "amount": 12000,
}
ANSWER = {"label": "fraud", "adjuster": {"name": "Ann Adjuster", "email": "ann.adjuster@insurer-mail.com"}}
SECRETS = [
    "Jane Roe",
    "jane.roe@example.com",
    "415-555-0132",
    "1984-03-12",
    "219-09-9999",
    "PR-7781-XK",
    "4111 1111 1111 1111",
    "DE89 3704 0044 0532 0130 00",
    "Ann Adjuster",
    "ann.adjuster@insurer-mail.com",
]
WORKFLOW = {
    "steps": [
        {
            "name": "extract",
            "type": "model",
            "model": {
                "name": "m",
                "api": "extract",
                "input": {"text": "input.description", "claimant": "input.claimant"},
            },
        },
        {
            "name": "publish",
            "type": "connector",
            "connector": {"name": "decisions"},
        },
    ]
}
SINK = {
    "decisions": {
        "type": "kafkaSink",
        "kafkaSink": {
            "bootstrapServers": "unused:9092",
            "topic": "claims-out",
            "key": "input.claimId",
            "value": {
                "claimant": "input.claimant",
                "label": "steps.extract.output.label",
                "adjuster": "steps.extract.output.adjuster",
            },
        },
    }
}


@pytest.fixture(autouse=True)
def extractor(downstream: Downstream) -> None:
    downstream.script("/models/m/extract", Reply(body=ANSWER))


def models(downstream: Downstream) -> StaticModelResolver:
    return StaticModelResolver({"m": [{"version": "v1", "url": downstream.url("/models/m"), "weight": 100}]})


def run_claim(db_url: str, data_dir: Path, downstream: Downstream, sink: InMemorySink) -> tuple[Engine, str]:
    audits: list[dict[str, Any]] = []
    engine = Engine(
        db_url,
        data_dir=data_dir,
        model_resolver=StaticModelResolver(
            {"m": [{"version": "v1", "url": downstream.url("/models/m"), "weight": 100}]}
        ),
        connector_resolver=StaticConnectorResolver(SINK),
        sink=sink,
        sqlite_synchronous="NORMAL",
        pii=WorkflowMasking(
            lambda workflow: POLICY if workflow == "claims" else None,
            KEYS,
            on_masked=lambda tenant, workflow, summary: audits.append(summary.to_dict()),
        ),
    )
    engine.register_workflow("claims", WORKFLOW)
    with fast_worker(engine):
        task = wait_done(engine, "acme", engine.submit("acme", "claims", CLAIM).id)
    assert task.state == TaskState.SUCCEEDED, task.error
    # The audit trail says what was masked where, without a value.
    assert {"input.claimant.email", "input.claimant.policyRef", "input.description"} <= set(audits[0]["paths"])
    assert all(secret not in str(audits) for secret in SECRETS)
    return engine, task.id


def stored_text(engine: Engine, db_url: str, data_dir: Path) -> str:
    """Everything the store holds, as text: the SQLite file (and its WAL) byte for byte, or every PostgreSQL
    table row by row; and every blob."""
    parts: list[str] = []
    if db_url.startswith("sqlite"):
        path = Path(db_url.removeprefix("sqlite:///"))
        for file in path.parent.glob(path.name + "*"):
            parts.append(file.read_bytes().decode("utf-8", errors="replace"))
    else:
        with engine.db.read() as conn:
            for table in sa.inspect(conn).get_table_names():
                rows = conn.execute(sa.text(f'SELECT to_jsonb(t)::text FROM "{table}" t')).scalars()
                parts.extend(rows)
            # Large payloads are bytes there (hex in the dump above): read them as text too.
            blobs = conn.execute(sa.text("SELECT data FROM blobs")).scalars()
            parts.extend(bytes(data).decode("utf-8", errors="replace") for data in blobs)
    parts.extend(p.read_text(errors="replace") for p in data_dir.rglob("*") if p.is_file())
    return "\n".join(parts)


def test_personal_data_never_reaches_the_store_the_model_the_sink_the_spans_or_the_logs(
    db_url: str,
    tmp_path: Path,
    downstream: Downstream,
    spans: TaskSpanStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    sink = InMemorySink()
    data_dir = tmp_path / "data"
    engine, task_id = run_claim(db_url, data_dir, downstream, sink)
    try:
        task = engine.get("acme", task_id)
        steps = engine.steps("acme", task_id)
        text = stored_text(engine, db_url, data_dir)
    finally:
        engine.close()
    if db_url.startswith("sqlite"):  # after close, the WAL is checkpointed into the file: search it again
        text += stored_text(engine, db_url, data_dir)

    assert "CLM-0000042" in text  # the search does see the stored input
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} is in the store"

    # What the engine hands back is masked, structure and the rest kept.
    assert task.input["claimId"] == "CLM-0000042"
    assert task.input["amount"] == 12000
    assert task.input["claimant"]["email"].startswith("<EMAIL_ADDRESS:t:")
    assert task.input["description"].startswith("Refund to card <CREDIT_CARD:t:")
    assert steps[0].output is not None

    # The model saw the masked input only.
    (call,) = downstream.calls["/models/m/extract"]
    assert call.body["claimant"] == task.input["claimant"]
    # The sink record carries masks, and an auditor can open them.
    (record,) = sink.records("claims-out")
    assert record.key == "CLM-0000042"
    for secret in SECRETS:
        assert secret not in str(record.value)
    assert set(masks_in(record.value))
    opened = detokenize(record.value, POLICY, "acme", KEYS, roles=["auditor"])
    assert opened["claimant"] == CLAIM["claimant"]
    assert opened["adjuster"] == ANSWER["adjuster"]

    # Spans and logs.
    for span in spans.spans(task_id):
        described = f"{span.name} {dict(span.attributes or {})} {span.status.description}"
        for secret in SECRETS:
            assert secret not in described
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    for secret in SECRETS:
        assert secret not in logged


def test_without_a_pii_policy_nothing_is_masked(tmp_path: Path, downstream: Downstream) -> None:
    sink = InMemorySink()
    with Engine(
        f"sqlite:///{tmp_path / 'engine.db'}",
        model_resolver=StaticModelResolver(
            {"m": [{"version": "v1", "url": downstream.url("/models/m"), "weight": 100}]}
        ),
        connector_resolver=StaticConnectorResolver(SINK),
        sink=sink,
        sqlite_synchronous="NORMAL",
        pii=WorkflowMasking(lambda workflow: None, KEYS),
    ) as engine:
        engine.register_workflow("claims", WORKFLOW)
        with fast_worker(engine):
            task = wait_done(engine, "acme", engine.submit("acme", "claims", CLAIM).id)
        assert task.input == CLAIM
        (record,) = sink.records("claims-out")
        assert record.value["claimant"] == CLAIM["claimant"]


def test_aiplane_dev_masks_with_the_manifests_policies_and_keeps_its_key(tmp_path: Path) -> None:
    from aiplane import manifests
    from aiplane.dev import pii_masking
    from crds import Policy, Workflow
    from policies.sources import PolicySet

    resources = manifests.load([Path(__file__).parents[2] / "examples" / "claims-triage"])
    workflows = [r for r in resources if isinstance(r, Workflow)]
    policies = PolicySet([r for r in resources if isinstance(r, Policy)])
    masking = pii_masking(policies, workflows, tmp_path)
    masked = masking.input(
        "acme", "claims-triage", {"claimant": {"name": "Jane Roe"}, "document": "mail j@example.com"}
    )
    assert masked["claimant"]["name"].startswith("<FIELD:t:")  # the Policy names input.claimant.name
    assert masked["document"].startswith("mail <EMAIL_ADDRESS:t:")
    # The key made under the data directory is kept: a restarted dev stack opens the same tokens.
    again = pii_masking(policies, workflows, tmp_path)
    assert again.input("acme", "claims-triage", {"claimant": {"name": "Jane Roe"}}) == {
        "claimant": {"name": masked["claimant"]["name"]}
    }
    assert masking.input("acme", "ungoverned", {"e": "j@example.com"}) == {"e": "j@example.com"}
    # Wired with no pii Policy yet (one may come with an edit): nothing is masked.
    unmasked = pii_masking(PolicySet(), workflows, tmp_path)
    assert unmasked.input("acme", "claims-triage", {"document": "mail j@example.com"}) == {
        "document": "mail j@example.com"
    }


def test_a_refused_submission_s_span_carries_its_error_masked(tmp_path: Path, spans: TaskSpanStore) -> None:
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from engine.errors import InvalidRequestError
    from engine.runtime.intake import Submission

    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    def refuse(version: str, spec: Any) -> None:
        raise InvalidRequestError("input.claimant.email: 'jane.roe@example.com' is not an integer", field="input")

    with Engine(
        f"sqlite:///{tmp_path / 'engine.db'}",
        sqlite_synchronous="NORMAL",
        pii=WorkflowMasking(lambda workflow: POLICY, KEYS),
    ) as engine:
        engine.register_workflow("claims", {"steps": [{"name": "r", "type": "rules", "rules": {"set": {"a": "1"}}}]})
        [outcome] = engine.submit_many([Submission(tenant="acme", workflow="claims", input=CLAIM, validate=refuse)])
    assert isinstance(outcome, InvalidRequestError)
    (span,) = [s for s in exporter.get_finished_spans() if s.name == "aiplane.engine.submit"]
    assert span.status.description is not None
    assert "is not an integer" in span.status.description
    assert "jane.roe@example.com" not in span.status.description


class _CrashingResolver:
    """A model resolver with a bug whose message quotes the payload."""

    def endpoints(self, model: str) -> Any:
        raise RuntimeError(f"cannot route claim of {CLAIM['claimant']['email']}")


def test_a_crashing_step_is_logged_stored_and_traced_masked(
    tmp_path: Path, spans: TaskSpanStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    retry = {"maxAttempts": 1}
    workflow = {"steps": [{"name": "extract", "type": "model", "model": {"name": "m"}, "retry": retry}]}
    with Engine(
        f"sqlite:///{tmp_path / 'engine.db'}",
        model_resolver=_CrashingResolver(),
        sqlite_synchronous="NORMAL",
        pii=WorkflowMasking(lambda workflow: POLICY, KEYS),
    ) as engine:
        engine.register_workflow("claims", workflow)
        with fast_worker(engine):
            task = wait_done(engine, "acme", engine.submit("acme", "claims", CLAIM).id)
        assert task.state == TaskState.DEAD_LETTERED
        (step,) = engine.steps("acme", task.id)
    assert "cannot route claim of <EMAIL_ADDRESS:t:" in str(task.error)
    assert "jane.roe@example.com" not in str(step)
    crashed = [r for r in caplog.records if "crashed" in r.getMessage()]
    assert crashed
    assert "cannot route claim of <EMAIL_ADDRESS:t:" in crashed[0].getMessage()
    assert "jane.roe@example.com" not in "\n".join(f"{r.getMessage()} {r.exc_info}" for r in caplog.records)
    for span in spans.spans(task.id):
        assert "jane.roe@example.com" not in str(span.status.description)


class _QuotingValidators:
    """An input validator with a bug whose message quotes the task input (as a library's or a driver's error may)."""

    def check(self, workflow: str, version: str, schema: Any, value: Any) -> None:
        raise RuntimeError(f"cannot check the input of {workflow}: {value}")


def test_a_gateway_error_quoting_the_input_is_logged_masked(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    uvicorn_log = logging.getLogger("uvicorn.error")
    masking = WorkflowMasking(lambda workflow: POLICY, KEYS)
    rules = {"steps": [{"name": "note", "type": "rules", "rules": {"set": {"seen": "true"}}}]}
    try:
        with Engine(f"sqlite:///{tmp_path / 'engine.db'}", sqlite_synchronous="NORMAL", pii=masking) as engine:
            engine.register_workflow("claims", rules)
            key = create_api_key(engine, "acme", "sam", ["submitter"])
            app = create_app(engine)
            app.state.gateway.validators = _QuotingValidators()
            server = Served(app)
            # uvicorn logs what escapes the app on its own logger (configured as the server starts), which does not
            # propagate to the root one.
            uvicorn_log.addHandler(caplog.handler)
            try:
                body = {"workflow": {"name": "claims"}, "input": CLAIM}
                for mode in ("async", "sync"):  # the submission fast path, and the route
                    response = httpx.post(
                        f"{server.base_url}/v1/tasks?mode={mode}",
                        json=body,
                        headers={"Authorization": f"Bearer {key}"},
                        timeout=30,
                    )
                    assert response.status_code == 500, response.text
                    assert not any(secret in response.text for secret in SECRETS)
            finally:
                server.close()
    finally:
        uvicorn_log.removeHandler(caplog.handler)
    logged = "\n".join(f"{r.getMessage()} {r.exc_info} {r.exc_text} {r.__dict__}" for r in caplog.records)
    for secret in SECRETS[:8]:  # everything of the claim's, found by detection, by label (the name) or by path
        assert secret not in logged, secret
    # Both loggers logged the error, with its frames and its masked text.
    for name in ("aiplane.gateway", "uvicorn.error"):
        [first, *_] = [r.getMessage() for r in caplog.records if r.name == name and r.levelno >= logging.ERROR]
        assert "RuntimeError: cannot check the input of claims" in first
        assert "<EMAIL_ADDRESS:t:" in first
        assert 'File "' in first
        assert "in check" in first
    # A request whose workflow is not known yet: every entity redacted.
    assert "jane.roe@example.com" not in masking.error_text(None, None, f"failed on {CLAIM['claimant']['email']}")
