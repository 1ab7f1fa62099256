"""The retrieval planner with the real embedding model: it picks the action the claims agent needs, skips what it
must not propose again, escalates when nothing fits, and refuses bad configs with the field to fix."""

from __future__ import annotations

from typing import Any

import pytest

from planners import retrieval
from planners.embedding import SentenceEmbedder
from planners.errors import PlanError
from planners.retrieval import RetrievalConfig, confidence, words
from tests.planners.requests import ACTIONS, entry, request

EMPTY_EXTRACTION = {
    "claimId": "C-2",
    "extractedFields": {"amount": None, "incidentDate": None},
    "problem": "extraction returned empty fields",
}


def test_a_missing_document_is_requested(embedder: SentenceEmbedder) -> None:
    answer = retrieval.plan(request(), embedder)
    assert answer.action == "request-document"
    # No argument map configured: the state's keys that the action's input schema lists.
    assert answer.arguments == {"claimId": "C-1"}
    assert answer.confidence >= 0.5
    assert answer.reasoning.startswith("chose request-document: similarity to the query: request-document ")
    assert "missing Documents police report" in answer.reasoning


def test_empty_extracted_fields_rerun_the_extraction(embedder: SentenceEmbedder) -> None:
    answer = retrieval.plan(request(goal="Complete claim C-2", state=EMPTY_EXTRACTION), embedder)
    assert answer.action == "rerun-extraction"
    assert answer.arguments == EMPTY_EXTRACTION  # its schema lists no properties: the whole state
    assert answer.confidence >= 0.5


def test_the_last_observation_steers_the_next_choice(embedder: SentenceEmbedder) -> None:
    requested = entry(
        1,
        "request-document",
        "succeeded",
        {"received": "police report", "extraction": "amount and incident date came back empty"},
    )
    answer = retrieval.plan(request(state={"claimId": "C-1"}, transcript=[requested]), embedder)
    assert answer.action == "rerun-extraction"
    assert "Last: request document succeeded: received police report" in answer.reasoning


def test_nothing_similar_enough_escalates(embedder: SentenceEmbedder) -> None:
    answer = retrieval.plan(request(goal="Bake a chocolate cake", state={}), embedder)
    assert answer.escalate
    assert answer.action is None
    assert answer.confidence == 0.0
    assert "no action is similar enough" in answer.reasoning


@pytest.mark.parametrize("outcome", ["succeeded", "denied", "invalid"])
def test_an_action_is_not_proposed_again_after(embedder: SentenceEmbedder, outcome: str) -> None:
    answer = retrieval.plan(request(transcript=[entry(1, "request-document", outcome)]), embedder)
    assert answer.action not in (None, "request-document")


def test_a_failed_action_may_be_proposed_again(embedder: SentenceEmbedder) -> None:
    failed = entry(1, "request-document", "failed", error="connector timed out")
    assert retrieval.plan(request(transcript=[failed]), embedder).action == "request-document"


def test_allow_repeat_keeps_succeeded_actions_but_not_refused_ones(embedder: SentenceEmbedder) -> None:
    config = {"allowRepeat": True}
    succeeded = [entry(1, "request-document", "succeeded", "sent")]
    assert retrieval.plan(request(config=config, transcript=succeeded), embedder).action == "request-document"
    denied = [entry(1, "request-document", "denied", error="policy")]
    assert retrieval.plan(request(config=config, transcript=denied), embedder).action != "request-document"


def test_no_action_left_escalates(embedder: SentenceEmbedder) -> None:
    transcript = [entry(i + 1, action["name"], "succeeded") for i, action in enumerate(ACTIONS)]
    answer = retrieval.plan(request(transcript=transcript), embedder)
    assert answer.escalate
    assert "no action left to try" in answer.reasoning


def test_done_when_and_result(embedder: SentenceEmbedder) -> None:
    config = {
        "doneWhen": "'request-document' in succeeded",
        "result": {"claimId": "state.claimId", "document": "succeeded['request-document']"},
    }
    assert retrieval.plan(request(config=config), embedder).action == "request-document"
    answer = retrieval.plan(
        request(config=config, transcript=[entry(1, "request-document", "succeeded", "D-9")]), embedder
    )
    assert (answer.done, answer.result) == (True, {"claimId": "C-1", "document": "D-9"})
    default = retrieval.plan(
        request(
            config={"doneWhen": "attempts['request-document'] > 0"}, transcript=[entry(1, "request-document", "failed")]
        ),
        embedder,
    )
    assert (default.done, default.result) == (True, {"claimId": "C-1", "missingDocuments": ["police_report"]})


def test_argument_maps_and_a_custom_query(embedder: SentenceEmbedder) -> None:
    config = {
        "arguments": {"request-document": {"claimId": "state.claimId", "documentType": "state.missingDocuments[0]"}},
        "query": "'the police report is missing'",
    }
    answer = retrieval.plan(request(config=config, state={"claimId": "C-7", "missingDocuments": ["receipt"]}), embedder)
    assert (answer.action, answer.arguments) == ("request-document", {"claimId": "C-7", "documentType": "receipt"})
    assert answer.reasoning.endswith("query: the police report is missing")


def test_a_state_that_is_not_an_object_gives_no_default_arguments(embedder: SentenceEmbedder) -> None:
    answer = retrieval.plan(request(goal="Ask the claimant for the missing police report", state="C-1"), embedder)
    assert (answer.action, answer.arguments) == ("request-document", {})


def test_confidence_mapping() -> None:
    config = RetrievalConfig()  # minSimilarity 0.25, fullSimilarity 0.6, fullMargin 0.1
    assert confidence(0.8, 0.3, config) == 1.0  # relevant and decisive
    assert confidence(0.8, None, config) == 1.0  # the only candidate
    assert confidence(0.8, 0.8, config) == 0.5  # a tie: a coin toss
    assert confidence(0.25, 0.0, config) == 0.0  # barely relevant
    assert confidence(0.425, 0.375, config) == pytest.approx(0.5 * 0.75, abs=1e-4)
    values = [confidence(best, 0.2, config) for best in (0.3, 0.4, 0.5, 0.6, 0.7)]
    assert values == sorted(values)  # monotone in the similarity


def test_words() -> None:
    assert (
        words({"missingDocuments": ["police_report", 2], "ok": None}) == "missing Documents police report, 2; ok null"
    )


def test_same_request_same_answer(embedder: SentenceEmbedder) -> None:
    first = retrieval.plan(request(), embedder)
    assert retrieval.plan(request(), embedder) == first


@pytest.mark.parametrize(
    ("config", "field", "message"),
    [
        ({"minSimilarty": 0.3}, "config.minSimilarty", "Extra inputs"),
        ({"minSimilarity": 0.7}, "config", "fullSimilarity (0.6) must be above minSimilarity (0.7)"),
        ({"doneWhen": "state.("}, "config.doneWhen", "does not compile"),
        ({"result": "state"}, "config", "result goes with doneWhen"),
        ({"arguments": {"fly": {"a": "1"}}}, "config.arguments.fly", "'fly' is not one of the agent's actions"),
        ({"arguments": {"request-document": {"a": ")"}}}, "config.arguments.request-document.a", "does not compile"),
        ({"allowRepeat": "maybe"}, "config.allowRepeat", "valid boolean"),
    ],
)
def test_bad_config_is_a_400_naming_the_field(
    embedder: SentenceEmbedder, config: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(PlanError) as raised:
        retrieval.plan(request(config=config), embedder)
    assert raised.value.status == 400
    assert any(e["field"] == field and message in e["message"] for e in raised.value.errors), raised.value.errors


@pytest.mark.parametrize(
    ("config", "field"),
    [({"doneWhen": "state.claimId"}, "config.doneWhen"), ({"query": "budget.stepsLeft"}, "config.query")],
)
def test_an_expression_of_the_wrong_type_is_a_422(
    embedder: SentenceEmbedder, config: dict[str, Any], field: str
) -> None:
    with pytest.raises(PlanError) as raised:
        retrieval.plan(request(config=config), embedder)
    assert (raised.value.status, raised.value.errors[0]["field"]) == (422, field)
