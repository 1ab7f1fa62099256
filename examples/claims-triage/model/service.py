"""The claims document-extraction model as a BentoML service.

Serve it (from the repository root; ``claims-triage`` has a dash, so it is a working directory, not a package)::

    bentoml serve --working-dir examples/claims-triage/model service:ClaimsExtractor --host 127.0.0.1 --port 3000

APIs (POST, JSON): ``/extract`` ``{"document": "..."}`` -> claim type, confidence, amount, currency, incident date,
policy number, the fields found, every claim type's probability (``scores``) and the words that drove the class
(``explanation``; the two keys aiplane copies into the step's decision record, its explainability hook);
``/explain`` ``{"document": "...", "top_k": 10}`` -> the words for and against the predicted class; ``/info``
``{}`` -> model version, held-out metrics, fault settings. Probes from BentoML: ``/livez``, ``/readyz`` (ready
once the weights are loaded), ``/healthz``, ``/metrics``; the OpenAPI document is at ``/docs.json``.

Bad input (missing, empty or blank document, more than 100,000 characters) is answered 400 with the offending
field and what to fix, never 500. Weights: loaded from ``$AIPLANE_CLAIMS_MODEL_DIR`` (default
``~/.cache/aiplane/claims-model/<version>/``), trained there first when missing. Latency, failures and drift for
tests, all off by default: ``AIPLANE_CLAIMS_DELAY_MS``, ``AIPLANE_CLAIMS_ERROR_RATE``, ``AIPLANE_CLAIMS_DRIFT_RATE``
and ``AIPLANE_CLAIMS_DRIFT_CLASS`` (see ``claims_model/faults.py``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from typing import Annotated, Any, Literal, cast

import bentoml
from claims_model import MODEL_VERSION
from claims_model.classifier import Prediction
from claims_model.extraction import extract_fields
from claims_model.faults import ERROR_RATE_ENV, FaultInjector
from claims_model.train import default_model_dir, load_or_train
from pydantic import AfterValidator, BaseModel, Field
from starlette.responses import JSONResponse

logger = logging.getLogger("bentoml.aiplane.claims")

MAX_DOCUMENT_CHARS = 100_000
EXPLANATION_TOKENS = 5

ClaimType = Literal["auto", "property", "health", "travel"]
Currency = Literal["USD", "EUR", "GBP"]


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("document is blank: send the text of the claim document")
    return value


Document = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_DOCUMENT_CHARS,
        description=f"Full text of one claim document (e-mail, form or letter), 1 to {MAX_DOCUMENT_CHARS} characters.",
        examples=["Policy number: PL-12345678. My car was rear-ended on 2024-03-05. I am claiming $1,250.00."],
    ),
    AfterValidator(_not_blank),
]


class TokenWeight(BaseModel):
    """One word of the document and how far it moved the score (log-odds) towards the predicted type."""

    token: str
    weight: float = Field(description="Log-odds towards the predicted type over the runner-up; negative is against.")


class ClaimExtraction(BaseModel):
    """What the model read from one claim document."""

    claim_type: ClaimType = Field(description="Predicted kind of claim.")
    confidence: float = Field(ge=0.0, le=1.0, description="Calibrated probability of claim_type.")
    scores: dict[str, float] = Field(
        description="Calibrated probability of every claim type (recorded in the step's decision record, with "
        "explanation: aiplane's explainability hook)."
    )
    amount: float | None = Field(description="Claimed amount (two decimals), null when none was found.")
    currency: Currency | None = Field(description="ISO 4217 code of the amount, null when no amount was found.")
    incident_date: dt.date | None = Field(description="Date of the incident (ISO 8601), null when none was found.")
    policy_number: str | None = Field(description="Policy number in canonical form PL-12345678, null when none.")
    fields_found: list[str] = Field(description="Which of amount, currency, incident_date, policy_number were found.")
    explanation: list[TokenWeight] = Field(
        description=f"The {EXPLANATION_TOKENS} words that pushed hardest towards claim_type (see /explain)."
    )
    model_version: str


class ClaimExplanation(BaseModel):
    """Why the classifier chose a claim type: per-word shares of the log-odds against the runner-up type."""

    claim_type: ClaimType
    confidence: float = Field(ge=0.0, le=1.0)
    runner_up: ClaimType = Field(description="The second most probable type, the one the weights compare against.")
    supporting: list[TokenWeight] = Field(description="Words for claim_type, strongest first.")
    opposing: list[TokenWeight] = Field(description="Words for the runner-up, strongest first.")
    method: str = Field(description="How the weights are computed.")
    model_version: str


class ModelInfo(BaseModel):
    """The loaded model and the service's fault settings."""

    model_version: str
    claim_types: list[str]
    model_dir: str
    trained_at_startup: bool = Field(description="True when no weights were found and the service trained them.")
    startup_seconds: float = Field(description="Time to load (or train) the weights.")
    metrics: dict[str, Any] = Field(description="Held-out metrics recorded when the weights were trained.")
    delay_ms: float
    error_rate: float
    drift_rate: float = Field(description="Share of extract answers whose claim_type is drift_class instead.")
    drift_class: str


def _weights(pairs: list[tuple[str, float]]) -> list[TokenWeight]:
    return [TokenWeight(token=token, weight=round(weight, 4)) for token, weight in pairs]


@bentoml.service(name="claims-extractor", traffic={"timeout": 60})
class ClaimsExtractor:
    """Insurance-claim document extraction: claim type, amount, incident date, policy number."""

    def __init__(self) -> None:
        self.faults = FaultInjector.from_env()
        self.model_dir = default_model_dir()
        started = time.perf_counter()
        self.model, self.meta, self.trained = load_or_train(self.model_dir)
        self.startup_seconds = time.perf_counter() - started
        logger.info(
            "claims model %s %s %s in %.2f s (delay %s ms, error rate %s, drift rate %s to %s)",
            MODEL_VERSION,
            "trained into" if self.trained else "loaded from",
            self.model_dir,
            self.startup_seconds,
            self.faults.delay_ms,
            self.faults.error_rate,
            self.faults.drift_rate,
            self.faults.drift_class,
        )

    def __is_ready__(self) -> bool:
        return self.model is not None

    async def _faults(self) -> JSONResponse | None:
        if self.faults.delay_ms:
            await asyncio.sleep(self.faults.delay_seconds)
        if self.faults.should_fail():
            return JSONResponse(
                {"error": f"injected failure ({ERROR_RATE_ENV}={self.faults.error_rate})"}, status_code=500
            )
        return None

    @bentoml.api(output_spec=ClaimExtraction)  # type: ignore[untyped-decorator]  # bentoml is untyped (Any)
    async def extract(self, document: Document) -> ClaimExtraction | JSONResponse:
        """Read one claim document: its type, claimed amount, incident date and policy number."""
        if failure := await self._faults():
            return failure
        prediction = self.model.predict(document)
        fields = extract_fields(document)
        return ClaimExtraction(
            claim_type=cast(ClaimType, self.faults.claim_type(prediction.claim_type)),
            confidence=round(prediction.confidence, 6),
            scores={name: round(p, 6) for name, p in prediction.probabilities.items()},
            amount=float(fields.amount) if fields.amount is not None else None,
            currency=cast(Currency | None, fields.currency),
            incident_date=fields.incident_date,
            policy_number=fields.policy_number,
            fields_found=fields.fields_found,
            explanation=_weights(_supporting(prediction)[:EXPLANATION_TOKENS]),
            model_version=MODEL_VERSION,
        )

    @bentoml.api(output_spec=ClaimExplanation)  # type: ignore[untyped-decorator]  # bentoml is untyped (Any)
    async def explain(
        self,
        document: Document,
        top_k: Annotated[int, Field(ge=1, le=100, description="How many words to list on each side.")] = 10,
    ) -> ClaimExplanation | JSONResponse:
        """The words that drove the predicted claim type, and those that pulled towards the runner-up."""
        if failure := await self._faults():
            return failure
        prediction = self.model.predict(document)
        opposing = sorted((pair for pair in prediction.contributions if pair[1] < 0), key=lambda pair: pair[1])
        return ClaimExplanation(
            claim_type=cast(ClaimType, prediction.claim_type),
            confidence=round(prediction.confidence, 6),
            runner_up=cast(ClaimType, prediction.runner_up),
            supporting=_weights(_supporting(prediction)[:top_k]),
            opposing=_weights(opposing[:top_k]),
            method=(
                "naive Bayes over words and character trigrams: a word's weight is the sum over its features of "
                "log P(feature | claim_type) - log P(feature | runner_up), divided by the calibration temperature"
            ),
            model_version=MODEL_VERSION,
        )

    @bentoml.api  # type: ignore[untyped-decorator]  # bentoml is untyped (Any)
    async def info(self) -> ModelInfo:
        """Model version, where the weights are, their held-out metrics, and the fault settings."""
        return ModelInfo(
            model_version=MODEL_VERSION,
            claim_types=list(self.model.classes),
            model_dir=str(self.model_dir),
            trained_at_startup=self.trained,
            startup_seconds=round(self.startup_seconds, 3),
            metrics=dict(self.meta.get("metrics", {})),
            delay_ms=self.faults.delay_ms,
            error_rate=self.faults.error_rate,
            drift_rate=self.faults.drift_rate,
            drift_class=self.faults.drift_class,
        )


def _supporting(prediction: Prediction) -> list[tuple[str, float]]:
    return [pair for pair in prediction.contributions if pair[1] > 0]
