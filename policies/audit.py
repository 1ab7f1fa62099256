"""The audit log's records and hash chain: what a decision record is, how it is hashed, how a chain is checked.

Storage lives with the engine (``engine.store.audit``); this module is pure so that the gateway, the engine, the
CLI and an auditor's own script agree on one definition of a record's hash.

Each record's hash is the SHA-256 of the canonical JSON of all its fields, ``prev_hash`` included, so changing
any field of any record, deleting one, inserting one or reordering them changes a hash that a later record (or
the chain head) commits to. Canonical JSON: keys sorted, no whitespace, UTF-8 (non-ASCII kept as is), times as
ISO 8601 UTC with microseconds; the same bytes Python's ``json.dumps(..., sort_keys=True,
separators=(",", ":"), ensure_ascii=False)`` writes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

#: ``prev_hash`` of the first record.
GENESIS = "0" * 64

#: Kinds of decision; free-form kinds are allowed too, these are the ones aiplane itself writes.
KINDS = ("policy", "approval", "model", "erasure", "access")

MAX_KIND = 32
MAX_SUBJECT = 512
MAX_DECISION = 32


class AuditEntryError(ValueError):
    """An entry that cannot be recorded (empty or too long a field, details that are not JSON)."""


def canonical_json(value: Any) -> str:
    """The one serialisation records are hashed and stored in."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _timestamp(at: datetime) -> str:
    if at.tzinfo is None:
        raise AuditEntryError("audit times must be timezone-aware")
    return at.astimezone(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class Entry:
    """One decision to record: what kind, about what, which outcome, and why."""

    kind: str
    subject: str
    decision: str
    details: Mapping[str, Any] = field(default_factory=dict)
    tenant: str | None = None
    actor: str | None = None

    def __post_init__(self) -> None:
        for name, value, limit in (
            ("kind", self.kind, MAX_KIND),
            ("subject", self.subject, MAX_SUBJECT),
            ("decision", self.decision, MAX_DECISION),
        ):
            if not value or len(value) > limit:
                raise AuditEntryError(f"audit {name} must be 1-{limit} characters, got {value!r}")
        try:
            text = canonical_json(dict(self.details))
        except (TypeError, ValueError) as error:
            raise AuditEntryError(f"audit details must be JSON (strings, numbers, lists, objects): {error}") from None
        # Kept for ``seal``, which stores this text: an intake batch seals a record per task, and serialising the
        # details once instead of twice is a good part of what a record costs.
        object.__setattr__(self, "_details_text", text)

    def details_text(self) -> str:
        """``details`` as canonical JSON, as checked when the entry was made (what its record stores)."""
        return str(self.__dict__["_details_text"])


@dataclass(frozen=True)
class Record:
    """A stored audit record; ``details`` is the canonical JSON text exactly as hashed."""

    seq: int
    id: str
    at: datetime
    kind: str
    subject: str
    decision: str
    tenant: str | None
    actor: str | None
    details: str
    prev_hash: str
    hash: str

    def body(self) -> dict[str, Any]:
        """The hashed fields (everything but ``hash``)."""
        return {
            "seq": self.seq,
            "id": self.id,
            "at": _timestamp(self.at),
            "kind": self.kind,
            "subject": self.subject,
            "decision": self.decision,
            "tenant": self.tenant,
            "actor": self.actor,
            "details": json.loads(self.details),
            "prevHash": self.prev_hash,
        }

    def computed_hash(self) -> str:
        return hashlib.sha256(canonical_json(self.body()).encode()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        """The record as exported (one JSON line each): the hashed fields plus the hash, so the export verifies."""
        return {**self.body(), "hash": self.hash}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Record:
        return cls(
            seq=int(data["seq"]),
            id=str(data["id"]),
            at=datetime.fromisoformat(str(data["at"])),
            kind=str(data["kind"]),
            subject=str(data["subject"]),
            decision=str(data["decision"]),
            tenant=data.get("tenant"),
            actor=data.get("actor"),
            details=canonical_json(data.get("details", {})),
            prev_hash=str(data["prevHash"]),
            hash=str(data["hash"]),
        )


@dataclass(frozen=True)
class Head:
    """The chain's last position, kept apart from the records so that removing the newest ones shows."""

    seq: int
    hash: str


def seal(entry: Entry, *, after: Head | None, record_id: str, at: datetime) -> Record:
    """The record that follows ``after`` (None: the first record)."""
    _timestamp(at)  # refuses naive times before astimezone() would read them as local time
    unsealed = Record(
        seq=1 if after is None else after.seq + 1,
        id=record_id,
        at=at.astimezone(UTC),
        kind=entry.kind,
        subject=entry.subject,
        decision=entry.decision,
        tenant=entry.tenant,
        actor=entry.actor,
        details=entry.details_text(),
        prev_hash=GENESIS if after is None else after.hash,
        hash="",
    )
    return Record(**{**unsealed.__dict__, "hash": unsealed.computed_hash()})


@dataclass(frozen=True)
class Problem:
    """One way the log differs from an untouched chain, at a position."""

    seq: int
    what: str

    def __str__(self) -> str:
        return f"record {self.seq}: {self.what}"


@dataclass(frozen=True)
class Verification:
    """The result of checking a chain: how many records were read, the last one, and every problem found."""

    records: int
    last: Head | None
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


#: Kind and decision of the record that says records were pruned (retention); its details name the new base.
PRUNE_KIND, PRUNE_DECISION = "audit", "prune"


def prune_entry(base: Head, *, reason: str) -> Entry:
    """The record a retention purge appends: records up to ``base.seq`` were deleted on purpose."""
    return Entry(PRUNE_KIND, "audit-log", PRUNE_DECISION, {"throughSeq": base.seq, "throughHash": base.hash,
                                                            "reason": reason})  # fmt: skip


def _is_prune_of(record: Record, base: Head) -> bool:
    if (record.kind, record.decision) != (PRUNE_KIND, PRUNE_DECISION):
        return False
    try:
        details = json.loads(record.details)
    except ValueError:
        return False
    return isinstance(details, dict) and (details.get("throughSeq"), details.get("throughHash")) == (
        base.seq,
        base.hash,
    )


def check(records: Iterable[Record], head: Head | None, *, base: Head | None = None) -> Iterator[Problem]:
    """Every problem in ``records`` (read in ``seq`` order) against the stored ``head``.

    A record whose own hash does not match its fields was edited. A record whose ``prev_hash`` is not its
    predecessor's hash follows something other than what it was written after: a record before it was deleted,
    inserted, replaced or moved. A gap in ``seq`` names deleted records. A head that is ahead of the last record
    means the newest records were deleted.

    ``base``: the last record a retention purge deleted on purpose; the log then starts right after it, and a
    prune record naming that base must be in the chain (a base row nobody recorded is a cover-up).
    """
    previous: Record | None = None
    first_seq = 1 if base is None else base.seq + 1
    first_prev = GENESIS if base is None else base.hash
    pruned_recorded = base is None
    for record in records:
        expected_seq = first_seq if previous is None else previous.seq + 1
        if record.seq > expected_seq:
            missing = f"{expected_seq}" if record.seq == expected_seq + 1 else f"{expected_seq}-{record.seq - 1}"
            yield Problem(record.seq, f"records {missing} are missing (deleted)")
        elif record.seq < expected_seq:
            yield Problem(record.seq, f"out of order: read after record {expected_seq - 1}")
        try:
            intact = record.computed_hash() == record.hash
        except ValueError:  # details no longer JSON
            intact = False
        if not intact:
            yield Problem(record.seq, "edited: its fields do not match its hash")
        expected_prev = first_prev if previous is None else previous.hash
        if record.prev_hash != expected_prev:
            before = "the start of the log" if previous is None else f"record {previous.seq}"
            yield Problem(record.seq, f"does not follow {before}: a record before it was deleted, inserted or replaced")
        if not pruned_recorded and base is not None and _is_prune_of(record, base):
            pruned_recorded = True
        previous = record
    if not pruned_recorded and base is not None:
        yield Problem(base.seq, "records up to here were removed, but no prune record in the log says so")
    if head is None:
        if previous is not None:
            yield Problem(previous.seq, "the chain head is missing (it was deleted)")
        return
    if previous is None:
        if head.seq > (0 if base is None else base.seq):
            yield Problem(head.seq, f"the log is empty but its head is at record {head.seq}: records were deleted")
    elif head.seq > previous.seq:
        yield Problem(head.seq, f"the log ends at record {previous.seq} but its head is at {head.seq}: deleted")
    elif head.seq < previous.seq:
        yield Problem(previous.seq, f"the head is at record {head.seq}: records after it were inserted")
    elif head.hash != previous.hash:
        yield Problem(previous.seq, "the last record is not the one the head commits to (replaced)")


def verify(
    records: Iterable[Record], head: Head | None, *, base: Head | None = None, anchors: Iterable[Head] = ()
) -> Verification:
    """``check`` collected, with a count of records and the last one.

    ``anchors``: (seq, hash) pairs noted earlier outside the database (what ``verify`` printed as the head then).
    A chain rewritten consistently from scratch passes every other check but not these: the record at an anchor's
    position must still carry the anchored hash.
    """
    count = 0
    last: Head | None = None
    pending = {anchor.seq: anchor.hash for anchor in anchors}
    mismatched: list[Problem] = []
    if base is not None:
        # Anchors from before a purge: the base must be the anchored record, earlier ones cannot be checked any more.
        if pending.get(base.seq, base.hash) != base.hash:
            mismatched.append(Problem(base.seq, "differs from the anchored hash: the log was rewritten"))
        pending = {seq: digest for seq, digest in pending.items() if seq > base.seq}

    def counted() -> Iterator[Record]:
        nonlocal count, last
        for record in records:
            count += 1
            last = Head(record.seq, record.hash)
            expected = pending.pop(record.seq, None)
            if expected is not None and expected != record.hash:
                mismatched.append(Problem(record.seq, "differs from the anchored hash: the log was rewritten"))
            yield record

    problems = list(check(counted(), head, base=base))
    problems += mismatched
    problems += [Problem(seq, "the anchored record is missing") for seq in sorted(pending)]
    return Verification(records=count, last=last, problems=tuple(sorted(problems, key=lambda p: p.seq)))


def parse_anchor(text: str) -> Head:
    """``SEQ:HASH`` (as ``aiplane audit verify`` prints the head) as a Head; ValueError otherwise."""
    seq, _, digest = text.partition(":")
    if not seq.isdigit() or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"an anchor is SEQ:HASH (a record number and its 64 hex digit hash), got {text!r}")
    return Head(int(seq), digest)
