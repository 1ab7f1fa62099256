"""Masks personal data in JSON payloads as a Policy's ``pii`` part says: pure functions of (payload, policy, tenant).

``mask(payload, pii, tenant, keys)`` walks the payload and returns it with the same structure, every finding
replaced in place, plus a ``MaskSummary`` for the audit log: entity types and JSON paths, never the values.

What is masked:

- in string leaves (and integers of 7+ digits, which can be card, phone or id numbers), what
  ``policies.pii.detection`` finds: the span alone, the text around it stays;
- names by field label: with ``PERSON`` among the entities, a string under a key such as ``name``, ``firstName``,
  ``claimant`` or ``policyholder`` (``NAME_LABELS``; matched without case, ``_`` or ``-``) is a PERSON, whole;
- the Policy's ``fields``, whatever they hold (a whole object too): an entry is a dotted path matched against the
  end of a value's path (list indexes left out, ``*`` matches any one key), so ``email`` matches that key anywhere,
  ``claimant.name`` any ``name`` under a ``claimant``, and ``input.claimant.name`` only in task inputs.

How (``action``):

- ``redact``: ``<EMAIL_ADDRESS>``;
- ``hash``: ``<EMAIL_ADDRESS:h:9f2c...>``, an HMAC with the tenant's key of the normalized value (stable within a
  tenant, so the same customer can still be counted or joined, and unrelated across tenants);
- ``tokenize``: ``<EMAIL_ADDRESS:t:...>``, AES-SIV under the tenant's key; ``detokenize`` restores the value (its
  JSON type too) for callers holding one of ``unmask_roles``.

Masked values are left alone when a payload is masked again (a step output that echoes its input), so masking is
idempotent.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, get_args

from crds.policy import PIIEntity
from policies import metrics
from policies.audit import Entry
from policies.pii.detection import DEFAULT_PHONE_REGIONS, Detector, Finding, detector
from policies.tokens import MaskingKeyError, MaskingKeys, UnmaskDeniedError, may_unmask

#: Keys whose string value is a person's name (compared lower case, without ``_``, ``-``, spaces and dots).
NAME_LABELS = frozenset(
    {
        "name",
        "fullname",
        "firstname",
        "givenname",
        "forename",
        "middlename",
        "lastname",
        "surname",
        "familyname",
        "maidenname",
        "displayname",
        "claimant",
        "claimantname",
        "insured",
        "insuredname",
        "policyholder",
        "policyholdername",
        "holder",
        "holdername",
        "accountholder",
        "cardholder",
        "cardholdername",
        "beneficiary",
        "beneficiaryname",
        "customername",
        "contactname",
        "patient",
        "patientname",
        "applicant",
        "applicantname",
        "driver",
        "drivername",
        "witness",
        "witnessname",
        "employee",
        "employeename",
        "spouse",
        "spousename",
    }
)
log = logging.getLogger(__name__)

#: Entity type of a value masked because a Policy's ``fields`` names it.
FIELD = "FIELD"
PERSON = "PERSON"
MASK = re.compile(r"<([A-Z][A-Z_]*)(?::([ht]):([A-Za-z0-9_-]+))?>")
_MIN_NUMBER_DIGITS = 7
_SPLIT_WORDS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")


class PIIPolicy(Protocol):
    """The ``pii`` part of a Policy (``crds.policy.PII``) or of an effective policy (``EffectivePII``)."""

    @property
    def entities(self) -> Collection[str]: ...
    @property
    def fields(self) -> Collection[str]: ...
    @property
    def action(self) -> str: ...
    @property
    def unmask_roles(self) -> Collection[str]: ...


@dataclass(frozen=True, slots=True)
class MaskedItem:
    #: JSONPath of the value (``$.claimant.emails[0]``), under the caller's root.
    path: str
    entity: str


@dataclass(frozen=True)
class MaskSummary:
    """What was masked, for the audit log: never the values."""

    action: str
    items: tuple[MaskedItem, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.items)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for item in self.items:
            out[item.entity] = out.get(item.entity, 0) + 1
        return dict(sorted(out.items()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "entities": self.counts(),
            "paths": sorted({item.path for item in self.items}),
        }


@dataclass(frozen=True)
class Masked:
    value: Any
    summary: MaskSummary


def _normal_label(key: str) -> str:
    return key.lower().replace("_", "").replace("-", "").replace(" ", "").replace(".", "")


def _context_words(key: str) -> list[str]:
    return [key.lower(), *(w.lower() for w in _SPLIT_WORDS.findall(key))]


class _Compiled:
    """A policy's parts, prepared once: the detector, the field patterns, the name rule."""

    def __init__(self, entities: frozenset[str], fields: tuple[str, ...], regions: tuple[str, ...]) -> None:
        self.detector: Detector = detector(entities, regions)
        self.names = PERSON in entities
        self.fields = [[s for s in f.split(".") if s] for f in fields]

    def field_rule(self, keys: Sequence[str]) -> bool:
        for pattern in self.fields:
            if len(pattern) <= len(keys) and all(
                p in ("*", k) for p, k in zip(pattern, keys[len(keys) - len(pattern) :], strict=True)
            ):
                return True
        return False


@functools.lru_cache(maxsize=256)
def _compiled(entities: frozenset[str], fields: tuple[str, ...], regions: tuple[str, ...]) -> _Compiled:
    return _Compiled(entities, fields, regions)


def compile_policy(pii: PIIPolicy, regions: Sequence[str] = DEFAULT_PHONE_REGIONS) -> _Compiled:
    return _compiled(frozenset(pii.entities), tuple(sorted(pii.fields)), tuple(regions))


class _Masker:
    def __init__(self, pii: PIIPolicy, tenant: str, keys: MaskingKeys | None, compiled: _Compiled) -> None:
        if pii.action in ("hash", "tokenize") and keys is None:
            raise MaskingKeyError(
                f"the PII action {pii.action!r} needs a master key: set AIPLANE_PII_KEY (base64 of 32+ random bytes) "
                "or AIPLANE_PII_KEY_FILE"
            )
        self.action = pii.action
        self.tenant = tenant
        self.keys = keys
        self.plan = compiled
        self.items: list[MaskedItem] = []

    def replacement(self, entity: str, value: Any) -> str:
        if self.action == "redact" or self.keys is None:
            return f"<{entity}>"
        if self.action == "hash":
            text = value if isinstance(value, str) else repr(value)
            return f"<{entity}:h:{self.keys.hash(self.tenant, entity, text)}>"
        return f"<{entity}:t:{self.keys.tokenize(self.tenant, entity, value)}>"

    def walk(self, value: Any, path: str, keys: list[str]) -> Any:
        if keys and self.plan.fields and self.plan.field_rule(keys):
            if value is None or (isinstance(value, str) and MASK.fullmatch(value)):
                return value
            self.items.append(MaskedItem(path, FIELD))
            return self.replacement(FIELD, value)
        if isinstance(value, dict):
            return {k: self.walk(v, f"{path}.{k}", [*keys, str(k)]) for k, v in value.items()}
        if isinstance(value, list):
            return [self.walk(v, f"{path}[{i}]", keys) for i, v in enumerate(value)]
        if isinstance(value, str):
            if self.plan.names and keys and _normal_label(keys[-1]) in NAME_LABELS and value.strip():
                if MASK.fullmatch(value):
                    return value
                self.items.append(MaskedItem(path, PERSON))
                return self.replacement(PERSON, value)
            return self.text(value, path, keys)
        if isinstance(value, int) and not isinstance(value, bool) and len(str(abs(value))) >= _MIN_NUMBER_DIGITS:
            text = str(value)
            found = self.plan.detector.find(text, _context(keys))
            if found and found[0].start == 0 and found[0].end == len(text):
                self.items.append(MaskedItem(path, found[0].entity))
                return self.replacement(found[0].entity, value)
        return value

    def text(self, value: str, path: str, keys: list[str]) -> str:
        found = self.plan.detector.find(value, _context(keys))
        if not found:
            return value
        masks = [(m.start(), m.end()) for m in MASK.finditer(value)] if "<" in value else []
        out: list[str] = []
        position = 0
        for finding in found:
            if any(finding.start < end and start < finding.end for start, end in masks):
                continue
            out.append(value[position : finding.start])
            out.append(self.replacement(finding.entity, value[finding.start : finding.end]))
            position = finding.end
            self.items.append(MaskedItem(path, finding.entity))
        out.append(value[position:])
        return "".join(out)


def _context(keys: list[str]) -> list[str]:
    words: list[str] = []
    for key in keys[-2:]:
        words.extend(_context_words(key))
    return words


def mask(
    payload: Any,
    pii: PIIPolicy | None,
    tenant: str,
    keys: MaskingKeys | None = None,
    *,
    root: str = "$",
    regions: Sequence[str] = DEFAULT_PHONE_REGIONS,
) -> Masked:
    """``payload`` with personal data masked per ``pii`` for ``tenant``, and what was masked.

    ``root``: the payload's name in field paths and the summary (``input``, ``steps.score``): a Policy field
    ``input.claimant.name`` matches only under the root ``input``. ``keys`` are needed for hash and tokenize.
    """
    if pii is None:
        return Masked(payload, MaskSummary("none"))
    masker = _Masker(pii, tenant, keys, compile_policy(pii, regions))
    root_keys = [k for k in root.split(".") if k and k != "$"]
    value = masker.walk(payload, root, root_keys)
    return Masked(value, MaskSummary(pii.action, tuple(masker.items)))


def mask_text(text: str, pii: PIIPolicy | None, tenant: str, keys: MaskingKeys | None = None) -> str:
    """A free text (an error message, a log line) with the personal data found in it masked."""
    if pii is None:
        return text
    masked = mask(text, pii, tenant, keys, root="$")
    return str(masked.value)


def detokenize(
    payload: Any,
    pii: PIIPolicy,
    tenant: str,
    keys: MaskingKeys,
    roles: Iterable[str],
) -> Any:
    """``payload`` with this tenant's tokens replaced by the original values, for a caller holding ``roles``.

    Raises ``UnmaskDeniedError`` unless one of ``roles`` is among the policy's ``unmask_roles``, and
    ``InvalidTokenError`` for a token of another tenant or an altered one. Redacted and hashed values stay as they
    are: they cannot be reversed.
    """
    if not may_unmask(roles, pii.unmask_roles):
        allowed = ", ".join(sorted(pii.unmask_roles)) or "no role (the policy lets nobody unmask)"
        raise UnmaskDeniedError(f"unmasking needs one of the roles: {allowed}")
    return open_tokens(payload, tenant, keys).value


@dataclass(frozen=True)
class Opened:
    """A payload with its tokens opened, and which ones (entity and JSON path)."""

    value: Any
    items: tuple[MaskedItem, ...]

    def summary(self) -> dict[str, Any]:
        entities: dict[str, int] = {}
        for item in self.items:
            entities[item.entity] = entities.get(item.entity, 0) + 1
        return {
            "tokens": len(self.items),
            "entities": dict(sorted(entities.items())),
            "paths": sorted({item.path for item in self.items}),
        }


def open_tokens(payload: Any, tenant: str, keys: MaskingKeys, *, root: str = "$") -> Opened:
    """``payload`` with every token of ``tenant`` replaced by its value (a whole-string token by the value with its
    JSON type). Raises ``policies.tokens.InvalidTokenError`` for a token of another tenant, or an altered one.
    Redacted and hashed values stay: they cannot be reversed."""
    items: list[MaskedItem] = []

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, dict):
            return {k: walk(v, f"{path}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if not isinstance(value, str) or "<" not in value:
            return value
        whole = MASK.fullmatch(value)
        if whole is not None:
            if whole.group(2) != "t":
                return value
            items.append(MaskedItem(path, whole.group(1)))
            return keys.detokenize(tenant, whole.group(1), whole.group(3))

        def clear(match: re.Match[str]) -> str:
            if match.group(2) != "t":
                return match.group(0)
            items.append(MaskedItem(path, match.group(1)))
            original = keys.detokenize(tenant, match.group(1), match.group(3))
            return original if isinstance(original, str) else str(original)

        return MASK.sub(clear, value)

    return Opened(walk(payload, root), tuple(items))


@dataclass(frozen=True)
class _Redact:
    entities: frozenset[str]
    fields: tuple[str, ...]
    action: str = "redact"
    unmask_roles: frozenset[str] = frozenset()


#: Redaction of every entity aiplane detects: for text whose workflow, hence Policy, is unknown.
REDACT_ALL = _Redact(frozenset(get_args(PIIEntity)), ())


class WorkflowMasking:
    """What the engine calls where data is kept or sent: each workflow's PII policy and the keys, bound once.

    ``policy_for(workflow)`` gives the effective ``pii`` part for a workflow (None: not governed), e.g.
    ``lambda name: policy_set.effective(Target("Workflow", name)).pii``; the engine holds no WorkflowMasking at
    all when no Policy has a ``pii`` part, so that path costs nothing. ``on_masked(tenant, workflow, summary)``
    receives what was masked where (for the audit log), never the values.
    """

    def __init__(
        self,
        policy_for: Callable[[str], PIIPolicy | None],
        keys: MaskingKeys | None = None,
        *,
        on_masked: Callable[[str, str, MaskSummary], None] | None = None,
    ) -> None:
        self.policy_for = policy_for
        self.keys = keys
        self.on_masked = on_masked
        self._warned: set[str] = set()

    def _policy(self, workflow: str) -> PIIPolicy | None:
        pii = self.policy_for(workflow)
        if pii is not None and pii.action != "redact" and self.keys is None:
            # Fail closed: without a key a hash or token cannot be made, and the data must not pass in clear nor
            # stop the service; redaction needs no key. Said once per workflow.
            if workflow not in self._warned:
                self._warned.add(workflow)
                log.warning(
                    "PII policy of workflow %s asks to %s but no key is configured (AIPLANE_PII_KEY); redacting",
                    workflow,
                    pii.action,
                )
            return _Redact(frozenset(pii.entities), tuple(pii.fields))
        return pii

    def _masked(self, tenant: str, workflow: str, value: Any, root: str) -> Masked:
        pii = self._policy(workflow)
        if pii is None:
            return Masked(value, MaskSummary("none"))
        masked = mask(value, pii, tenant, self.keys, root=root)
        if masked.summary:
            metrics.masked(masked.summary.action, (item.entity for item in masked.summary.items))
        if masked.summary and self.on_masked is not None:
            self.on_masked(tenant, workflow, masked.summary)
        return masked

    def _mask(self, tenant: str, workflow: str, value: Any, root: str) -> Any:
        return self._masked(tenant, workflow, value, root).value

    def input(self, tenant: str, workflow: str, value: Any) -> Any:
        """A task input, before it is stored (and before any step, model or connector sees it)."""
        return self._mask(tenant, workflow, value, "input")

    def mask_input(self, tenant: str, workflow: str, value: Any) -> Masked:
        """``input``, with what was masked (for the task's audit record)."""
        return self._masked(tenant, workflow, value, "input")

    def mask_at(self, tenant: str, workflow: str, value: Any, root: str) -> Masked:
        """A value kept under ``root`` (its paths start there: an agent step's proposal or observation), with what
        was masked (for its audit record)."""
        return self._masked(tenant, workflow, value, root)

    def mask_step(
        self, tenant: str, workflow: str, step: str, output: Any, variables: Any
    ) -> tuple[Any, Any, MaskSummary]:
        """A step's output and the vars it sets, masked, with what was masked in both (one audit record a step)."""
        out = self._masked(tenant, workflow, output, f"steps.{step}")
        if not variables:
            return out.value, variables, out.summary
        var = self._masked(tenant, workflow, variables, "vars")
        action = out.summary.action if out.summary else var.summary.action
        return out.value, var.value, MaskSummary(action, out.summary.items + var.summary.items)

    def audit_entry(self, tenant: str, workflow: str, subject: str, summary: MaskSummary, *, actor: str) -> Entry:
        """The audit record of a masking (``masking_entry``), naming the Policies of the workflow's ``pii``."""
        sources = getattr(self.policy_for(workflow), "sources", ())
        return masking_entry(summary, tenant=tenant, workflow=workflow, subject=subject, policies=sources, actor=actor)

    def output(self, tenant: str, workflow: str, step: str, value: Any) -> Any:
        """A step's output (and the vars it sets), before it is stored."""
        return self._mask(tenant, workflow, value, f"steps.{step}")

    def variables(self, tenant: str, workflow: str, value: Any) -> Any:
        """Task variables a rules step sets, before they are stored."""
        return self._mask(tenant, workflow, value, "vars")

    def text(self, tenant: str, workflow: str, text: str) -> str:
        """An error message or other free text bound for the store, a log line or a span."""
        pii = self._policy(workflow)
        return text if pii is None else mask_text(text, pii, tenant, self.keys)

    def error_text(self, tenant: str | None, workflow: str | None, text: str, *, data: Any = None) -> str:
        """A log line or traceback of a request whose workflow may not be known (an error before the body was
        read, a task read). When the tenant and workflow are known, the workflow's Policy masks it as it masks the
        workflow's data; ``data`` (the task input the error may quote) is masked as a whole first, and every value
        that masking changed is replaced in the text too, so what only a field's label or path identifies (a name,
        a policy reference) is caught as well. Otherwise every entity is redacted, since any governed workflow's
        data may be in it (fail closed)."""
        if tenant is None or workflow is None:
            return mask_text(text, REDACT_ALL, tenant or "", None)
        pii = self._policy(workflow)
        if pii is None:
            return text
        if data is not None:
            masked = mask(data, pii, tenant, self.keys, root="input").value
            for clear, hidden in sorted(set(_changed(data, masked)), key=lambda pair: -len(pair[0])):
                text = text.replace(clear, hidden)
        return mask_text(text, pii, tenant, self.keys)


def _changed(clear: Any, masked: Any) -> Iterator[tuple[str, str]]:
    """(value, its masked form) for every string that masking changed, walking both structures together."""
    if isinstance(clear, dict) and isinstance(masked, dict):
        for key, value in clear.items():
            if key in masked:
                yield from _changed(value, masked[key])
    elif isinstance(clear, list) and isinstance(masked, list) and len(clear) == len(masked):
        for value, hidden in zip(clear, masked, strict=True):
            yield from _changed(value, hidden)
    elif isinstance(clear, str | int) and not isinstance(clear, bool) and clear != masked:
        text = str(clear)
        if len(text) >= 3:  # shorter values would rewrite unrelated characters of the text
            yield text, str(masked)


def masking_entry(
    summary: MaskSummary, *, tenant: str, workflow: str, subject: str, policies: Iterable[object], actor: str
) -> Entry:
    """The audit record of one masking (kind ``policy``, decision ``mask``): which entities at which JSON paths,
    which action, the workflow and the Policies (``namespace/name@generation``) that asked for it; never the values,
    so the log itself holds no personal data."""
    details = {**summary.to_dict(), "workflow": workflow, "policies": sorted(str(p) for p in policies)}
    return Entry("policy", subject, "mask", details, tenant=tenant, actor=actor)


def masks_in(value: Any) -> Iterator[str]:
    """Every mask in a payload (for tests and audits: what a stored value holds instead of personal data)."""
    if isinstance(value, dict):
        for v in value.values():
            yield from masks_in(v)
    elif isinstance(value, list):
        for v in value:
            yield from masks_in(v)
    elif isinstance(value, str):
        yield from (m.group(0) for m in MASK.finditer(value))


__all__ = [
    "FIELD",
    "NAME_LABELS",
    "PERSON",
    "Finding",
    "MaskSummary",
    "Masked",
    "MaskedItem",
    "PIIPolicy",
    "WorkflowMasking",
    "detokenize",
    "mask",
    "mask_text",
    "masks_in",
]
