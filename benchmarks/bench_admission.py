"""Cost of the embedded admission checks (the CRDs' CEL rules, evaluated in Python) on top of schema validation.

Subject: parse + CEL rules + list uniqueness, as `aiplane validate` and `aiplane dev` do for every manifest.
Baseline: pydantic schema validation alone, measured in the same run.
"""

from __future__ import annotations

from aiplane import admission, manifests
from benchmarks.harness import Comparison, compare
from crds import Workflow
from tests.crds.cases import example


def run() -> list[Comparison]:
    document = example("Workflow")
    admission.violations(Workflow.model_validate(document))  # compile and cache the CEL programs once
    return [
        compare(
            "workflow manifest: admission (schema + CEL) vs schema only",
            subject=lambda: manifests.parse(document, "bench"),
            baseline=lambda: Workflow.model_validate(document),
        )
    ]
