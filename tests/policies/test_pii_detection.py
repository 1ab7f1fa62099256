"""Recall and precision of PII detection per entity on the generated labelled set (tests/policies/pii_dataset.py).

The set is masked through ``policies.masking.mask`` with ``tokenize``, the real path, and every token is opened
again to read what was found where: a finding is right when its path, entity and exact text match a label.

Floors: recall >= 0.95 on every entity (structured PII, as the issue asks). Precision >= 0.95 too: the set is
adversarial on purpose (about as many look-alikes as real values: failed-Luhn card numbers, IBANs with wrong
check digits, incident dates, nine-digit order and tracking numbers, timestamps), so a precision floor below
recall would let a recognizer that flags any long digit run pass; masking a look-alike costs readability, not
privacy, which is why the floor is not 1.

The table is in the terminal summary of every run that includes these tests (``tests.fixtures.reports``), is
written to ``pii-report.txt`` under pytest's temporary directory, and the assertion message carries it too.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from crds.policy import PII
from policies.masking import MASK, mask
from policies.tokens import MaskingKeys
from tests.fixtures.reports import add_report
from tests.policies.pii_dataset import ENTITIES, Sample, generate, hard

RECALL_FLOOR = 0.95
PRECISION_FLOOR = 0.95
KEYS = MaskingKeys(bytes(range(32)))
POLICY = PII.model_validate({"entities": list(ENTITIES), "action": "tokenize", "unmaskRoles": ["auditor"]})


def found(value: Any, path: str = "$") -> list[tuple[str, str, str]]:
    """(path, entity, text) of every token in a masked payload, opened again."""
    out: list[tuple[str, str, str]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            out += found(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += found(item, f"{path}[{i}]")
    elif isinstance(value, str):
        for match in MASK.finditer(value):
            clear = KEYS.detokenize("eval", match.group(1), match.group(3))
            out.append((path, match.group(1), clear if isinstance(clear, str) else json.dumps(clear)))
    return out


def score(samples: list[Sample]) -> tuple[dict[str, dict[str, float]], float, int]:
    gold: Counter[str] = Counter()
    predicted: Counter[str] = Counter()
    correct: Counter[str] = Counter()
    started = time.process_time()  # CPU time: the machine running the suite is shared
    size = 0
    for sample in samples:
        size += len(json.dumps(sample.record))
        masked = mask(sample.record, POLICY, "eval", KEYS)
        labels = Counter(sample.labels)
        hits = Counter(found(masked.value))
        for (_, entity, _), n in labels.items():
            gold[entity] += n
        for key, n in hits.items():
            predicted[key[1]] += n
            correct[key[1]] += min(n, labels.get(key, 0))
    elapsed = time.process_time() - started
    table = {
        entity: {
            "gold": gold[entity],
            "found": predicted[entity],
            "correct": correct[entity],
            "recall": correct[entity] / gold[entity] if gold[entity] else 1.0,
            "precision": correct[entity] / predicted[entity] if predicted[entity] else 1.0,
        }
        for entity in sorted(set(gold) | set(predicted))
    }
    return table, elapsed, size


def render(table: dict[str, dict[str, float]], records: int, elapsed: float, size: int) -> str:
    lines = [f"{'entity':<16}{'gold':>6}{'found':>7}{'correct':>9}{'recall':>8}{'precision':>11}"]
    for entity, row in table.items():
        lines.append(
            f"{entity:<16}{row['gold']:>6.0f}{row['found']:>7.0f}{row['correct']:>9.0f}"
            f"{row['recall']:>8.3f}{row['precision']:>11.3f}"
        )
    lines.append(
        f"{records} records, {size / 1024:.0f} KiB of JSON: {records / elapsed:.0f} records/s, "
        f"{elapsed * 1e6 / (size / 1024):.0f} us per KiB (masking with tokenize; CPU time of this process)"
    )
    return "\n".join(lines)


def test_recall_and_precision_per_entity_on_the_labelled_set(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> None:
    samples = generate(300)
    mask(samples[0].record, POLICY, "eval", KEYS)  # builds the recognizers: not part of the throughput
    table, elapsed, size = score(samples)
    report = render(table, len(samples), elapsed, size)
    print("\nPII detection on the generated set\n" + report)
    add_report(pytestconfig, "PII detection on the generated set", report)
    out: Path = tmp_path_factory.mktemp("pii") / "pii-report.txt"
    out.write_text(report + "\n")
    assert set(table) == set(ENTITIES), report
    low = {
        entity: row
        for entity, row in table.items()
        if row["recall"] < RECALL_FLOOR or row["precision"] < PRECISION_FLOOR
    }
    assert not low, f"below recall {RECALL_FLOOR} or precision {PRECISION_FLOOR}:\n{report}"


def test_known_misses_are_reported(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> None:
    """Not a floor: where the detector is known to miss (names in prose, bare-digit phones, unlabelled birth
    dates), measured so the report says how much."""
    samples = hard(100)
    table, elapsed, size = score(samples)
    report = render(table, len(samples), elapsed, size)
    print("\nPII detection, known misses (no floor)\n" + report)
    add_report(pytestconfig, "PII detection, known misses (no floor)", report)
    (tmp_path_factory.mktemp("pii") / "pii-known-misses.txt").write_text(report + "\n")
    assert all(row["precision"] == 1.0 for row in table.values() if row["found"]), report


def test_the_set_is_deterministic_and_has_look_alikes() -> None:
    a, b = generate(20, seed=7), generate(20, seed=7)
    assert [s.record for s in a] == [s.record for s in b]
    assert [s.record for s in generate(20, seed=8)] != [s.record for s in a]
    # Every record carries negatives that resemble the positives.
    assert all({"reference", "oldIban", "incidentDate", "orderNumber", "notes"} <= set(s.record) for s in a)
