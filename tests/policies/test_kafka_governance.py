"""Tasks that come from a Kafka source are governed as the gateway's are, through the real broker and store: their
input is masked before it is stored, a tenant or a residency the workflow's Policies deny sends the message to the
dead-letter topic with the same reason and text the gateway answers with, the approval gate holds them, and a rate
limit slows the source down (messages wait on the topic) instead of dropping or dead-lettering anything."""

from __future__ import annotations

import json
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from api import create_api_key, create_app
from connectors.kafka import KafkaSource, SourceSettings, SourceStalledError
from connectors.kafka.source import BatchResult
from crds.connector import KafkaSource as KafkaSourceSpec
from crds.policy import Policy, RateLimit
from engine import Engine, StaticModelResolver, TaskState
from engine.runtime.gate import POLICY_APPROVAL_STEP
from policies.effective import Target
from policies.masking import WorkflowMasking
from policies.ratelimit import RateLimiter, SharedRateLimiter
from policies.residency import Residency
from policies.sources import PolicySet
from tests.connectors.kafkaio import committed, headers, produce, read_all
from tests.engine.conftest import fast_worker, wait_state
from tests.fixtures.clocks import SettableClock
from tests.fixtures.kafka import Kafka
from tests.fixtures.polling import assert_eventually
from tests.policies.test_pii_engine import CLAIM, KEYS, SECRETS

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*httpx2.*")
    from fastapi.testclient import TestClient

ENTITIES = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "DATE_OF_BIRTH", "PERSON")
CLAIMS = Target("Workflow", "claims", "default", {"team": "claims"})
CLAIMS_EU = Target("Workflow", "claims-eu", "default", {"team": "claims", "data": "eu"})
RULES = {"steps": [{"name": "decide", "type": "rules", "rules": {"set": {"big": "input.amount > 10000"}}}]}
SCHEMA = {
    "inputSchema": {"type": "object", "required": ["amount"], "properties": {"amount": {"type": "number"}}},
    **RULES,
}


def _policies() -> PolicySet:
    return PolicySet(
        [
            Policy.model_validate(
                {
                    "metadata": {"name": "claims-governance", "namespace": "default", "generation": 2},
                    "spec": {
                        "selector": {"matchLabels": {"team": "claims"}},
                        "access": {"tenants": ["acme"]},
                        "pii": {
                            "entities": [*ENTITIES],
                            "fields": ["input.claimant.policyRef"],
                            "action": "tokenize",
                            "unmaskRoles": ["auditor"],
                        },
                        "approvals": [{"name": "large-claim", "when": "input.amount > 10000"}],
                    },
                }
            ),
            Policy.model_validate(
                {
                    "metadata": {"name": "eu-only", "namespace": "default"},
                    "spec": {"selector": {"matchLabels": {"data": "eu"}}, "residency": {"regions": ["eu-west"]}},
                }
            ),
        ]
    )


@pytest.fixture
def governed(tmp_path: Path) -> Iterator[Engine]:
    """An engine wired to the Policies as ``aiplane dev`` and ``--from-cluster`` wire it."""
    policies = _policies()
    targets = {"claims": CLAIMS, "claims-eu": CLAIMS_EU}

    def effective(workflow: str) -> Any:
        return policies.effective(targets.get(workflow) or Target("Workflow", workflow))

    engine = Engine(
        f"sqlite:///{tmp_path / 'engine.db'}",
        data_dir=tmp_path / "data",
        sqlite_synchronous="NORMAL",
        model_resolver=StaticModelResolver({"triage-us": [{"version": "v1", "url": "http://unused", "weight": 100}]}),
        pii=WorkflowMasking(lambda workflow: effective(workflow).pii, KEYS),
        approval_rules=lambda workflow: effective(workflow).approvals,
        tenants=lambda workflow: effective(workflow).tenants,
        residency=Residency.from_policy_set(policies, targets, {"triage-us": "us-east"}),
    )
    engine.register_workflow("claims", SCHEMA)
    engine.register_workflow(
        "claims-eu", {"steps": [{"name": "call", "type": "model", "model": {"name": "triage-us"}}]}
    )
    yield engine
    engine.close()


@pytest.fixture
def open_sources() -> Iterator[list[KafkaSource]]:
    sources: list[KafkaSource] = []
    yield sources
    for source in sources:
        source.close()


def _source(
    kafka: Kafka,
    engine: Engine,
    sources: list[KafkaSource],
    *,
    tenant: str = "acme",
    workflow: str = "claims",
    **kw: Any,
) -> tuple[KafkaSource, str, str]:
    """A source on a fresh one-partition topic; (source, topic, dead-letter topic)."""
    topic = kafka.new_topic(partitions=1, prefix="gov-in")
    dlq = kafka.new_topic(partitions=1, prefix="gov-dlq")
    config = SourceSettings(
        connector=f"gov-{uuid.uuid4().hex[:6]}",
        tenant=tenant,
        spec=KafkaSourceSpec.model_validate(
            {"bootstrapServers": kafka.bootstrap_servers, "topic": topic, "workflow": workflow, "deadLetterTopic": dlq}
        ),
        batch_size=50,
        poll_timeout=0.2,
    )
    source = KafkaSource(engine, config, **kw)
    sources.append(source)
    return source, topic, dlq


def _consume(source: KafkaSource, count: int) -> BatchResult:
    """Poll until ``count`` messages were taken, dead-lettered or deferred (a group's first join takes polls)."""
    total = BatchResult()

    def done() -> None:
        try:
            batch = source.poll_once()
        except SourceStalledError as exc:
            raise AssertionError(f"stalled: {exc}") from exc
        total.accepted += batch.accepted
        total.duplicates += batch.duplicates
        total.dead_lettered += batch.dead_lettered
        total.deferred = batch.deferred
        total.retry_after = batch.retry_after
        assert total.consumed + batch.deferred >= count, f"{total.consumed} of {count} messages taken"

    assert_eventually(done, timeout=60, interval=0)
    return total


def _store_bytes(tmp_path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())


def test_a_kafka_task_is_masked_before_it_is_stored_and_held_by_the_approval_gate(
    kafka: Kafka, governed: Engine, open_sources: list[KafkaSource], tmp_path: Path
) -> None:
    source, topic, _ = _source(kafka, governed, open_sources)
    produce(kafka.bootstrap_servers, topic, [CLAIM])
    assert _consume(source, 1).accepted == 1
    [task] = governed.list("acme", include_payloads=True).items
    assert task.input["claimant"]["email"].startswith("<EMAIL_ADDRESS:t:")
    assert task.input["claimant"]["policyRef"].startswith("<FIELD:t:")
    with fast_worker(governed):
        waiting = wait_state(governed, "acme", task.id, TaskState.WAITING)
    assert waiting.current_step == POLICY_APPROVAL_STEP  # amount 12000 > 10000: the Policy's rule holds it
    [rule] = [r for r in governed.audit.records() if r.kind == "approval-rule"]
    assert rule.decision == "required"
    assert json.loads(rule.details)["policies"] == ["default/claims-governance@2"]
    stored = _store_bytes(tmp_path)
    for secret in SECRETS:
        assert secret.encode() not in stored, f"{secret!r} is in the store"


@pytest.mark.parametrize(
    ("tenant", "workflow", "reason", "said"),
    [
        ("globex", "claims", "tenant-denied", "tenant 'globex' may not run workflow 'claims'"),
        ("acme", "claims-eu", "residency-denied", "workflow 'claims-eu' keeps its data in eu-west"),
    ],
)
def test_a_denied_message_is_dead_lettered_with_the_reason_the_gateway_gives(
    kafka: Kafka,
    governed: Engine,
    open_sources: list[KafkaSource],
    *,
    tenant: str,
    workflow: str,
    reason: str,
    said: str,
) -> None:
    source, topic, dlq = _source(kafka, governed, open_sources, tenant=tenant, workflow=workflow)
    produce(kafka.bootstrap_servers, topic, [{"amount": 5}])
    result = _consume(source, 1)
    assert (result.accepted, result.dead_lettered) == (0, 1)
    [dead] = read_all(kafka.bootstrap_servers, dlq, 1)
    assert dead.value == b'{"amount": 5}'
    assert headers(dead)["aiplane-dlq-reason"] == reason
    detail = headers(dead)["aiplane-dlq-detail"]
    assert said in detail
    assert committed(kafka.bootstrap_servers, source.settings.group_id, topic) == 1
    assert governed.list(tenant).items == []

    key = create_api_key(governed, tenant, "alice", ["submitter"])
    with TestClient(create_app(governed)) as client:
        response = client.post(
            "/v1/tasks",
            json={"workflow": {"name": workflow}, "input": {"amount": 5}},
            headers={"Authorization": f"Bearer {key}"},
        )
    assert response.status_code == 403, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["type"] == f"https://aiplane.io/problems/{reason}"
    assert response.json()["detail"] == detail  # one decision, one text, whichever way the task came
    # Both refusals are on the audit log, the submitter named where there is one.
    denials = [r for r in governed.audit.records() if r.decision == "deny"]
    assert [(r.subject, r.tenant, r.actor) for r in denials] == [
        (f"workflow/{workflow}/submission", tenant, "engine")
    ] * 2
    assert [json.loads(r.details)["reason"] for r in denials] == [reason, reason]
    assert [json.loads(r.details)["by"] for r in denials] == [None, "alice"]
    assert governed.audit.verify().ok


def test_a_regional_consumer_dead_letters_a_workflow_pinned_to_another_region(
    kafka: Kafka, governed: Engine, open_sources: list[KafkaSource]
) -> None:
    """A consumer pod of a regional release (AIPLANE_REGION: ``Residency.home``) writes into its region's store, so
    a message of a workflow pinned elsewhere is not taken, as the region's gateway refuses it."""
    assert governed.residency is not None
    governed.residency.home = "us-east"  # what aiplane.incluster gives a pod with AIPLANE_REGION=us-east
    source, topic, dlq = _source(kafka, governed, open_sources, workflow="claims-eu")
    produce(kafka.bootstrap_servers, topic, [{"amount": 5}])
    assert _consume(source, 1).dead_lettered == 1
    [dead] = read_all(kafka.bootstrap_servers, dlq, 1)
    assert headers(dead)["aiplane-dlq-reason"] == "residency-denied"
    assert "keeps its data in eu-west; this aiplane serves region 'us-east'" in headers(dead)["aiplane-dlq-detail"]
    assert governed.list("acme").items == []


def test_a_dead_letters_detail_is_masked_like_the_input(
    kafka: Kafka, governed: Engine, open_sources: list[KafkaSource]
) -> None:
    source, topic, dlq = _source(kafka, governed, open_sources)
    produce(kafka.bootstrap_servers, topic, [{"amount": "jane.roe@example.com"}])  # the schema's error quotes it
    assert _consume(source, 1).dead_lettered == 1
    [dead] = read_all(kafka.bootstrap_servers, dlq, 1)
    assert headers(dead)["aiplane-dlq-reason"] == "invalid"
    detail = headers(dead)["aiplane-dlq-detail"]
    assert "jane.roe@example.com" not in detail
    assert "<EMAIL_ADDRESS" in detail


def test_a_rate_limited_source_leaves_the_rest_on_the_topic_and_takes_it_once_tokens_refill(
    kafka: Kafka, governed: Engine, open_sources: list[KafkaSource]
) -> None:
    clock = SettableClock(0.0)
    limiter = SharedRateLimiter(limiter=RateLimiter([RateLimit(requests_per_second=1, burst=3)], clock=clock))
    source, topic, dlq = _source(kafka, governed, open_sources, rate=limiter)
    produce(kafka.bootstrap_servers, topic, [{"amount": n} for n in range(5)])
    first = _consume(source, 5)
    assert (first.accepted, first.dead_lettered, first.deferred) == (3, 0, 2)
    assert first.retry_after == pytest.approx(1.0)
    assert committed(kafka.bootstrap_servers, source.settings.group_id, topic) == 3
    assert len(governed.list("acme").items) == 3

    # Nothing refilled: the next poll reads the two again and leaves them again.
    def left_again() -> None:
        again = source.poll_once()
        assert (again.accepted, again.deferred) == (0, 2)

    assert_eventually(left_again, timeout=30, interval=0)
    clock.now += 2.0
    rest = _consume(source, 2)
    assert (rest.accepted, rest.deferred) == (2, 0)
    assert committed(kafka.bootstrap_servers, source.settings.group_id, topic) == 5
    assert sorted(t.input["amount"] for t in governed.list("acme", include_payloads=True).items) == [0, 1, 2, 3, 4]
    with pytest.raises(AssertionError):  # nothing was dead-lettered on the way
        read_all(kafka.bootstrap_servers, dlq, 1, timeout=1.0)


def test_the_source_follows_the_policies_rate_limits() -> None:
    policies = PolicySet()
    limiter = SharedRateLimiter(policies)
    assert limiter.take("acme", "normal") is None
    policies.put(
        Policy.model_validate(
            {"metadata": {"name": "slow"}, "spec": {"rateLimits": [{"requestsPerSecond": 0.001, "burst": 1}]}}
        )
    )
    assert limiter.take("acme", "normal") is None
    refused = limiter.take("acme", "normal")
    assert refused is not None
    assert "over its rate limit" in refused.describe()
