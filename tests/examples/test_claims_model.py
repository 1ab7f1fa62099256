"""The claims-triage extraction model: synthetic data, training metrics, field extraction, and the real service.

Unit tests import the model's modules directly (``conftest.py`` puts ``examples/claims-triage/model`` on the
path). The integration tests start ``bentoml serve`` as a subprocess on a free local port, wait for ``/readyz``,
talk to it over HTTP and stop it with SIGTERM, checking that its worker processes go away too.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from claims_model import CLAIM_TYPES, MODEL_VERSION
from claims_model.classifier import META_FILE, NaiveBayes
from claims_model.extraction import extract_fields, parse_number
from claims_model.faults import DELAY_ENV, DRIFT_CLASS_ENV, DRIFT_RATE_ENV, ERROR_RATE_ENV, FaultInjector
from claims_model.synthetic import add_typos, generate
from claims_model.train import MODEL_DIR_ENV, default_model_dir, load_or_train, train, train_and_save

from aiplane.modelserver import free_port
from tests.examples.conftest import CLAIMS_MODEL_DIR
from tests.fixtures.polling import assert_eventually

SERVE_READY_TIMEOUT = 180.0  # seconds; generous for a loaded CI box, the service is normally ready in a few
SERVE_STOP_TIMEOUT = 30.0


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, NaiveBayes, dict[str, Any]]:
    """The model trained with the default (build-time) settings into a fresh folder: (folder, model, meta)."""
    directory = tmp_path_factory.mktemp("claims-model")
    model, meta = train_and_save(directory)
    return directory, model, meta


# --- synthetic data ----------------------------------------------------------------------------------------------


def test_synthetic_set_is_deterministic_per_seed() -> None:
    assert generate(40, seed=3) == generate(40, seed=3)
    assert [r.text for r in generate(40, seed=3)] != [r.text for r in generate(40, seed=4)]


def test_synthetic_documents_carry_their_labels_and_personal_data() -> None:
    records = generate(400, seed=11)
    assert {r.claim_type for r in records} == set(CLAIM_TYPES)
    assert {r.currency for r in records} == {"USD", "EUR", "GBP"}
    for record in records:
        text = record.text.lower()
        # The personal data the PII-masking tests will look for is in the text, verbatim.
        assert record.claimant_email.lower() in text
        assert record.claimant_phone.lower() in text
        assert record.claimant_name.split()[0].lower() in text
        digits = record.policy_number.removeprefix("PL-")
        assert digits in text.replace("-", "").replace(" ", "")
        assert record.amount == record.amount.quantize(Decimal("0.01"))
        assert record.amount > 0


def test_synthetic_documents_are_noisy() -> None:
    records = generate(300, seed=5)
    layouts = {
        "form": sum("claimant:" in r.text.lower() for r in records),
        "email": sum(r.text.lower().startswith("subject:") for r in records),
    }
    assert all(count > 30 for count in layouts.values()), layouts
    assert any(r.text == r.text.lower() for r in records)  # some documents are all lower case
    assert any("  " in r.text for r in records)  # irregular spacing
    # Typos: the noisy set has words that the same generator never writes when the typo rate is zero.
    clean_words = {w for r in generate(300, seed=5, typo_rate=0.0) for w in r.text.lower().split()}
    noisy_words = {w for r in records for w in r.text.lower().split()}
    assert len(noisy_words - clean_words) > 100


def test_typos_leave_placeholders_alone() -> None:
    noisy = add_typos("Please reimburse {money} before {date} because the invoice", random.Random(1), rate=1.0)
    assert re.findall(r"\{[a-z_]+\}", noisy) == ["{money}", "{date}"]
    assert not {"reimburse", "because", "invoice"} & set(noisy.split())


# --- field extraction --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1,234.50", "1234.50"),
        ("1.234,50", "1234.50"),
        ("1234", "1234.00"),
        ("1,234", "1234.00"),
        ("1.234", "1234.00"),
        ("12,5", "12.50"),
        ("0.99", "0.99"),
        ("1,234,567.89", "1234567.89"),
    ],
)
def test_parse_number_reads_both_decimal_conventions(raw: str, expected: str) -> None:
    assert parse_number(raw) == Decimal(expected)


@pytest.mark.parametrize(
    ("document", "amount", "currency", "incident", "policy"),
    [
        (
            "Subject: claim\nMy car was rear-ended on March 5, 2024. My deductible is $500. "
            "I am claiming $1,250.00 for the bumper. Policy no. PL 1234 5678. Call me at (555) 123-4567.",
            "1250.00",
            "USD",
            dt.date(2024, 3, 5),
            "PL-12345678",
        ),
        (
            "Itemised: hotel €120,50, taxi €35,00. Total claimed: 155,50 EUR. Date submitted: 2024-07-02. "
            "It happened on 28th of June 2024. Policy pl-8765-4321",
            "155.50",
            "EUR",
            dt.date(2024, 6, 28),
            "PL-87654321",
        ),
        (
            "I was born on 04/12/1985. Date of loss: 2023-11-30. I pay a monthly premium of £45.00. "
            "The total bill was 2.450 pounds. Pl12345670",
            "2450.00",
            "GBP",
            dt.date(2023, 11, 30),
            "PL-12345670",
        ),
        (
            "MY POLICY IS PL-00000042. EUR 1.234,50 IS THE AMOUNT I AM CLAIMING. THE EVENT WAS ON 7 SEP 2025.",
            "1234.50",
            "EUR",
            dt.date(2025, 9, 7),
            "PL-00000042",
        ),
        (
            "Details - parts US$800.00, labour US$450.25. A previous claim of $3,000 was settled. "
            "Totl: $1,250.25 (typo and all). The accident was on 12/31/2022.",
            "1250.25",
            "USD",
            dt.date(2022, 12, 31),
            None,
        ),
    ],
)
def test_extract_fields_from_known_documents(
    document: str, amount: str, currency: str, incident: dt.date, policy: str | None
) -> None:
    fields = extract_fields(document)
    assert fields.amount == Decimal(amount)
    assert fields.currency == currency
    assert fields.incident_date == incident
    assert fields.policy_number == policy
    expected_found = ["amount", "currency", "incident_date"] + (["policy_number"] if policy else [])
    assert fields.fields_found == expected_found


def test_extract_fields_finds_nothing_in_a_document_without_fields() -> None:
    fields = extract_fields("Hello, I would like to make a claim. My phone is 555 0100 and I was born in 1980.")
    assert (fields.amount, fields.currency, fields.incident_date, fields.policy_number) == (None, None, None, None)
    assert fields.fields_found == []


# --- training and the classifier ---------------------------------------------------------------------------------


def test_held_out_metrics_are_above_floors(trained: tuple[Path, NaiveBayes, dict[str, Any]]) -> None:
    _, _, meta = trained
    metrics = meta["metrics"]
    assert metrics["n_test"] == 1000
    assert metrics["claim_type_accuracy"] >= 0.9
    assert metrics["amount_exact_match"] >= 0.95
    assert metrics["currency_exact_match"] >= 0.95
    assert metrics["incident_date_exact_match"] >= 0.95
    assert metrics["policy_number_exact_match"] >= 0.95
    # The data is noisy enough that the classifier is not perfect, and its confidence is calibrated.
    assert metrics["claim_type_accuracy"] < 1.0
    assert abs(metrics["mean_confidence"] - metrics["claim_type_accuracy"]) < 0.05
    assert sum(sum(row.values()) for row in metrics["confusion"].values()) == 1000


def test_training_is_deterministic() -> None:
    first, first_metrics = train(n_train=300, n_test=100, seed=3)
    second, second_metrics = train(n_train=300, n_test=100, seed=3)
    assert np.array_equal(first.log_likelihood, second.log_likelihood)
    assert first.temperature == second.temperature
    assert first_metrics == second_metrics


@pytest.mark.parametrize(
    ("document", "claim_type", "telling_words"),
    [
        ("Another driver hit my car at the roundabout and smashed the bumper.", "auto", {"bumper", "driver", "car"}),
        ("A pipe burst in the kitchen and water ruined the floors.", "property", {"pipe", "burst", "kitchen"}),
        ("I broke my wrist and needed an x-ray and physiotherapy.", "health", {"wrist", "physiotherapy", "broke"}),
        ("My flight to Lisbon was cancelled and the airline lost my suitcase.", "travel", {"flight", "airline"}),
    ],
)
def test_classifier_reads_known_documents_and_explains_itself(
    trained: tuple[Path, NaiveBayes, dict[str, Any]], document: str, claim_type: str, telling_words: set[str]
) -> None:
    _, model, _ = trained
    prediction = model.predict(document)
    assert prediction.claim_type == claim_type
    assert prediction.confidence >= 0.8
    assert prediction.runner_up != claim_type
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0)
    top = {word for word, _ in prediction.contributions[:3]}
    assert top & telling_words, prediction.contributions[:5]


def test_load_or_train_trains_once_then_loads(tmp_path: Path) -> None:
    directory = tmp_path / "weights"
    small = {"n_train": 300, "n_test": 100, "seed": 3}
    model, meta, was_trained = load_or_train(directory, **small)
    assert was_trained
    assert (directory / META_FILE).exists()
    assert meta["version"] == MODEL_VERSION
    again, again_meta, was_trained_again = load_or_train(directory, **small)
    assert not was_trained_again
    assert again_meta == meta
    document = generate(1, seed=99)[0].text
    assert again.predict(document) == model.predict(document)

    # Weights of another version are not used: they are trained again.
    stale = json.loads((directory / META_FILE).read_text())
    stale["version"] = "0.0.1"
    (directory / META_FILE).write_text(json.dumps(stale))
    _, _, retrained = load_or_train(directory, **small)
    assert retrained
    # So are unreadable ones.
    (directory / "weights.npz").write_bytes(b"not a zip")
    _, _, retrained = load_or_train(directory, **small)
    assert retrained


def test_default_model_dir_is_versioned_and_configurable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(MODEL_DIR_ENV, raising=False)
    assert default_model_dir() == Path.home() / ".cache" / "aiplane" / "claims-model" / MODEL_VERSION
    monkeypatch.setenv(MODEL_DIR_ENV, str(tmp_path))
    assert default_model_dir() == tmp_path


# --- fault injection ---------------------------------------------------------------------------------------------


def test_fault_injector_fails_an_exact_evenly_spread_share() -> None:
    injector = FaultInjector(error_rate=0.25)
    outcomes = [injector.should_fail() for _ in range(100)]
    assert sum(outcomes) == 25
    assert outcomes[:8] == [False, False, False, True] * 2
    tenth = FaultInjector(error_rate=0.1)
    assert sum(tenth.should_fail() for _ in range(1000)) == 100
    assert not any(FaultInjector().should_fail() for _ in range(100))
    assert all(FaultInjector(error_rate=1.0).should_fail() for _ in range(100))


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({ERROR_RATE_ENV: "1.5"}, "between 0 and 1"),
        ({ERROR_RATE_ENV: "lots"}, "must be a number"),
        ({DELAY_ENV: "-3"}, ">= 0"),
        ({DELAY_ENV: "nan"}, ">= 0"),
        ({DRIFT_RATE_ENV: "-0.1"}, "between 0 and 1"),
        ({DRIFT_RATE_ENV: "0.5", DRIFT_CLASS_ENV: "boat"}, "one of auto, property, health, travel"),
    ],
)
def test_fault_injector_rejects_bad_settings(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FaultInjector.from_env(env)


def test_fault_injector_reads_the_environment() -> None:
    injector = FaultInjector.from_env({DELAY_ENV: "250", ERROR_RATE_ENV: " 0.5 "})
    assert (injector.delay_ms, injector.delay_seconds, injector.error_rate) == (250.0, 0.25, 0.5)
    assert FaultInjector.from_env({}) == FaultInjector()
    drifting = FaultInjector.from_env({DRIFT_RATE_ENV: "0.25", DRIFT_CLASS_ENV: "health"})
    assert (drifting.drift_rate, drifting.drift_class) == (0.25, "health")


def test_drift_answers_the_drift_class_for_an_exact_evenly_spread_share() -> None:
    drifting = FaultInjector(drift_rate=0.25, drift_class="health")
    answers = [drifting.claim_type("auto") for _ in range(100)]
    assert answers[:8] == ["auto", "auto", "auto", "health"] * 2
    assert answers.count("health") == 25
    # Off by default: the model's own prediction, every time.
    assert {FaultInjector().claim_type("auto") for _ in range(100)} == {"auto"}


# --- the real service under `bentoml serve` ----------------------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    """Live (non-zombie) descendants of ``pid``, from /proc: BentoML's workers run in their own process groups."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _log_tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def serve_claims_model(model_dir: Path, workdir: Path, extra_env: Mapping[str, str] | None = None) -> Iterator[str]:
    """Run ``bentoml serve`` on the claims service; yield its base URL once ``/readyz`` answers 200, then stop it
    with SIGTERM and check that it and its workers exit."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key not in (DELAY_ENV, ERROR_RATE_ENV)}
    env |= {
        MODEL_DIR_ENV: str(model_dir),
        "BENTOML_HOME": str(workdir / "bentoml-home"),
        "BENTOML_DO_NOT_TRACK": "True",
        **(extra_env or {}),
    }
    log = workdir / f"bentoml-serve-{port}.log"
    command = [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        "--working-dir",
        str(CLAIMS_MODEL_DIR),
        "service:ClaimsExtractor",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    base = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        started = time.monotonic()
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
    try:

        def ready() -> None:
            assert proc.poll() is None, f"bentoml serve exited with {proc.returncode}:\n{_log_tail(log)}"
            try:
                response = httpx.get(f"{base}/readyz", timeout=2.0)
            except httpx.TransportError as exc:
                raise AssertionError(f"not listening yet: {exc!r}") from exc
            assert response.status_code == 200, response.text

        assert_eventually(ready, timeout=SERVE_READY_TIMEOUT, interval=0.2, message="bentoml serve /readyz")
        print(f"bentoml serve ready after {time.monotonic() - started:.2f} s", file=sys.stderr)
        yield base
    finally:
        workers = _descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=SERVE_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            for pid in [*workers, proc.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait(timeout=SERVE_STOP_TIMEOUT)
            pytest.fail(f"bentoml serve ignored SIGTERM for {SERVE_STOP_TIMEOUT}s:\n{_log_tail(log)}")
        assert_eventually(
            lambda: not any(_alive(pid) for pid in workers), timeout=SERVE_STOP_TIMEOUT, message="workers exit"
        )


@pytest.fixture(scope="module")
def claims_service(
    trained: tuple[Path, NaiveBayes, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    with serve_claims_model(trained[0], tmp_path_factory.mktemp("serve")) as base:
        yield base


@pytest.mark.integration
def test_service_extracts_claims(claims_service: str) -> None:
    document = (
        "Subject: Car accident claim\n\nHello,\nI was rear-ended at a red light on March 5, 2024 and the bumper "
        "of my car is crushed. My deductible is $500. I am claiming $1,250.00 in total. Policy no. PL 1234 5678.\n"
        "Call me on (555) 123-4567 or write to anna.costa@example.com.\nAnna Costa"
    )
    with httpx.Client(base_url=claims_service, timeout=30.0) as client:
        response = client.post("/extract", json={"document": document})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["claim_type"] == "auto"
        assert 0.8 <= body["confidence"] <= 1.0
        assert body["amount"] == 1250.0
        assert body["currency"] == "USD"
        assert body["incident_date"] == "2024-03-05"
        assert body["policy_number"] == "PL-12345678"
        assert body["fields_found"] == ["amount", "currency", "incident_date", "policy_number"]
        assert body["model_version"] == MODEL_VERSION
        assert set(body["scores"]) == set(CLAIM_TYPES)
        assert 1 <= len(body["explanation"]) <= 5
        assert all(item["weight"] > 0 for item in body["explanation"])

        # Unseen synthetic documents through HTTP give what the model gives in-process.
        records = generate(24, seed=4242)
        right = 0
        for record in records:
            result = client.post("/extract", json={"document": record.text}).json()
            right += result["claim_type"] == record.claim_type
            assert Decimal(str(result["amount"])).quantize(Decimal("0.01")) == record.amount
            assert result["incident_date"] == record.incident_date.isoformat()
            assert result["policy_number"] == record.policy_number
        assert right >= 20

        explained = client.post("/explain", json={"document": document, "top_k": 3})
        assert explained.status_code == 200, explained.text
        explanation = explained.json()
        assert (explanation["claim_type"], explanation["runner_up"] == "auto") == ("auto", False)
        assert len(explanation["supporting"]) == 3
        assert [w["weight"] for w in explanation["supporting"]] == sorted(
            (w["weight"] for w in explanation["supporting"]), reverse=True
        )

        info = client.post("/info", json={}).json()
        assert (info["model_version"], info["trained_at_startup"]) == (MODEL_VERSION, False)
        assert info["metrics"]["claim_type_accuracy"] >= 0.9
        assert (info["delay_ms"], info["error_rate"]) == (0.0, 0.0)

        openapi = client.get("/docs.json").json()
        assert {"/extract", "/explain", "/info"} <= set(openapi["paths"])
        assert client.get("/livez").status_code == 200


@pytest.mark.integration
@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        ({"document": ""}, "string_too_short"),
        ({"document": "   \n\t "}, "value_error"),
        ({"document": "x" * 100_001}, "string_too_long"),
        ({"document": 42}, "string_type"),
        ({}, "missing"),
        ({"document": "My car was hit.", "top_k": 0}, "greater_than_equal"),
    ],
)
def test_service_rejects_bad_input_with_4xx(claims_service: str, payload: dict[str, Any], problem: str) -> None:
    path = "/explain" if "top_k" in payload else "/extract"
    response = httpx.post(f"{claims_service}{path}", json=payload, timeout=30.0)
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert [d["type"] for d in detail] == [problem]
    assert detail[0]["loc"][-1] in ("document", "top_k")


@pytest.mark.integration
def test_service_rejects_malformed_json_with_4xx(claims_service: str) -> None:
    response = httpx.post(
        f"{claims_service}/extract",
        content=b"{not json",
        headers={"content-type": "application/json"},
        timeout=30.0,
    )
    assert response.status_code == 400, response.text


@pytest.mark.integration
def test_service_trains_when_no_weights_and_injects_faults(tmp_path: Path) -> None:
    empty = tmp_path / "no-weights-yet"
    with (
        serve_claims_model(
            empty, tmp_path, {ERROR_RATE_ENV: "0.5", DELAY_ENV: "5", DRIFT_RATE_ENV: "0.5", DRIFT_CLASS_ENV: "health"}
        ) as base,
        httpx.Client(base_url=base, timeout=30.0) as client,
    ):
        info = client.post("/info", json={}).json()
        assert info["trained_at_startup"] is True
        faults = (info["delay_ms"], info["error_rate"], info["drift_rate"], info["drift_class"])
        assert faults == (5.0, 0.5, 0.5, "health")
        assert (empty / META_FILE).exists()
        statuses = [client.post("/extract", json={"document": "My flight was cancelled."}) for _ in range(10)]
        assert [r.status_code for r in statuses] == [200, 500] * 5
        assert "injected failure" in statuses[1].json()["error"]
        # Every other answer that did not fail has drifted to health.
        claim_types = [r.json()["claim_type"] for r in statuses if r.status_code == 200]
        assert claim_types == ["travel", "health", "travel", "health", "travel"]
