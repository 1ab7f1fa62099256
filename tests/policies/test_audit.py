"""The audit chain on its own (no store): sealing, canonical encoding, and what verification reports."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from datetime import UTC, datetime, timedelta

import pytest

from policies.audit import (
    GENESIS,
    AuditEntryError,
    Entry,
    Head,
    Record,
    canonical_json,
    check,
    parse_anchor,
    prune_entry,
    seal,
    verify,
)

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def chain(n: int) -> list[Record]:
    records: list[Record] = []
    for i in range(n):
        entry = Entry("policy", f"task/{i}", "allow", {"rule": "r", "n": i, "nested": {"b": 1, "a": [1.5, "é"]}})
        after = Head(records[-1].seq, records[-1].hash) if records else None
        records.append(seal(entry, after=after, record_id=f"id{i}", at=T0 + timedelta(seconds=i)))
    return records


def head_of(records: list[Record]) -> Head:
    return Head(records[-1].seq, records[-1].hash)


def test_a_sealed_chain_verifies_and_links_each_record_to_the_previous() -> None:
    records = chain(4)
    assert [r.seq for r in records] == [1, 2, 3, 4]
    assert records[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(records))
    result = verify(records, head_of(records))
    assert result.ok, result.problems
    assert result.records == 4
    assert result.last == head_of(records)


def test_the_hash_is_sha256_of_the_documented_canonical_json() -> None:
    record = chain(1)[0]
    body = {
        "seq": 1,
        "id": "id0",
        "at": "2026-11-25T12:00:00.000000+00:00",
        "kind": "policy",
        "subject": "task/0",
        "decision": "allow",
        "tenant": None,
        "actor": None,
        "details": {"nested": {"a": [1.5, "é"], "b": 1}, "n": 0, "rule": "r"},
        "prevHash": GENESIS,
    }
    assert record.body() == body
    assert record.hash == hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()
    assert canonical_json(body).startswith('{"actor":null,"at":"2026-11-25T12:00:00.000000+00:00"')
    # An export line carries everything needed to re-verify it.
    assert Record.from_json(record.to_json()) == record


def test_an_edited_field_is_detected_at_its_record() -> None:
    records = chain(3)
    records[1] = dataclasses.replace(records[1], decision="deny")
    assert [str(p) for p in check(records, head_of(records))] == ["record 2: edited: its fields do not match its hash"]


def test_an_edit_that_recomputes_the_hash_breaks_the_next_link() -> None:
    records = chain(3)
    forged = dataclasses.replace(records[1], details=canonical_json({"rule": "forged"}))
    records[1] = dataclasses.replace(forged, hash=forged.computed_hash())
    problems = list(check(records, head_of(records)))
    assert [p.seq for p in problems] == [3]
    assert "does not follow record 2" in problems[0].what


def test_a_deleted_record_is_named_by_the_gap() -> None:
    records = chain(5)
    kept = records[:1] + records[3:]
    problems = [str(p) for p in check(kept, head_of(records))]
    assert problems[0] == "record 4: records 2-3 are missing (deleted)"
    assert "does not follow record 1" in problems[1]


def test_deleting_the_newest_records_is_caught_by_the_head() -> None:
    records = chain(4)
    problems = [str(p) for p in check(records[:2], head_of(records))]
    assert problems == ["record 4: the log ends at record 2 but its head is at 4: deleted"]
    assert [p.what for p in check([], Head(4, "x"))] == [
        "the log is empty but its head is at record 4: records were deleted"
    ]
    assert [p.what for p in check(records, None)] == ["the chain head is missing (it was deleted)"]


def test_an_inserted_record_is_detected() -> None:
    records = chain(3)
    intruder = seal(Entry("approval", "x", "approve"), after=head_of(records[:1]), record_id="evil", at=T0)
    renumbered = [records[0], intruder] + [dataclasses.replace(r, seq=r.seq + 1) for r in records[1:]]
    problems = list(check(renumbered, head_of(records)))
    assert {p.seq for p in problems} >= {3}
    appended = seal(Entry("approval", "x", "approve"), after=head_of(records), record_id="late", at=T0)
    assert [p.what for p in check([*records, appended], head_of(records))] == [
        "the head is at record 3: records after it were inserted"
    ]


def test_reordered_records_are_detected() -> None:
    records = chain(3)
    swapped = [records[0], dataclasses.replace(records[2], seq=2), dataclasses.replace(records[1], seq=3)]
    problems = list(check(swapped, head_of(records)))
    assert {p.seq for p in problems} == {2, 3}
    assert any("edited" in p.what for p in problems)


def test_entries_are_checked_before_they_are_recorded() -> None:
    with pytest.raises(AuditEntryError, match="kind"):
        Entry("", "s", "allow")
    with pytest.raises(AuditEntryError, match="subject"):
        Entry("policy", "s" * 513, "allow")
    with pytest.raises(AuditEntryError, match="JSON"):
        Entry("policy", "s", "allow", {"when": T0})
    with pytest.raises(AuditEntryError, match="JSON"):
        Entry("policy", "s", "allow", {"score": float("nan")})
    with pytest.raises(AuditEntryError, match="timezone"):
        seal(Entry("policy", "s", "allow"), after=None, record_id="i", at=datetime(2026, 1, 1))


def test_anchors_catch_a_chain_rewritten_from_scratch() -> None:
    records = chain(4)
    anchor = head_of(records[:3])
    rewritten: list[Record] = []
    for r in records:
        entry = Entry(r.kind, r.subject, "deny" if r.seq == 2 else r.decision, json.loads(r.details))
        after = head_of(rewritten) if rewritten else None
        rewritten.append(seal(entry, after=after, record_id=r.id, at=r.at))
    assert verify(rewritten, head_of(rewritten)).ok  # consistent: only an outside anchor can tell
    result = verify(rewritten, head_of(rewritten), anchors=[anchor])
    assert [str(p) for p in result.problems] == ["record 3: differs from the anchored hash: the log was rewritten"]
    assert verify(records, head_of(records), anchors=[anchor]).ok
    assert parse_anchor(f"3:{anchor.hash}") == anchor
    with pytest.raises(ValueError, match="SEQ:HASH"):
        parse_anchor("3")


def test_a_pruned_chain_starts_at_its_base() -> None:
    records = chain(5)
    base = head_of(records[:2])
    kept = records[2:]
    # Without a prune record naming the base, the missing start is a cover-up.
    assert [str(p) for p in check(kept, head_of(records), base=base)] == [
        "record 2: records up to here were removed, but no prune record in the log says so"
    ]
    pruned = seal(prune_entry(base, reason="retention"), after=head_of(records), record_id="p", at=T0)
    assert verify([*kept, pruned], head_of([pruned]), base=base, anchors=[base, head_of(records)]).ok
    assert verify([*kept, pruned], head_of([pruned]), base=base, anchors=[Head(1, "0" * 64)]).ok  # pruned away
    wrong = verify([*kept, pruned], head_of([pruned]), base=base, anchors=[Head(2, "f" * 64)])
    assert [str(p) for p in wrong.problems] == ["record 2: differs from the anchored hash: the log was rewritten"]
