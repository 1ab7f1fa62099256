"""Which Policies govern a Workflow, Model or Connector, and what they say together: the effective policy.

Pure functions of (policies, target): the gateway and the engine call ``effective(policies, target)`` per call
(cached by ``policies.sources``) and enforce the result; nothing here reads the cluster or the clock.

Selection: a Policy governs a resource in its own namespace whose kind is in ``selector.kinds`` and whose labels
contain every ``selector.matchLabels`` pair (no pairs: every resource of those kinds in the namespace).

Combination, when several Policies govern one resource. The result does not depend on the order the policies come
in (they are sorted by namespace and name first) and always errs on the side of less access and less data:

- access: a tenant must be allowed by every Policy that lists tenants (deny wins). Role bindings
  (``access.roles``) are not part of a target's effective policy: they are grants per tenant, not per resource, and
  add up across Policies (``policies.access.RoleGrants``);
- residency: the allowed regions are the intersection; an empty intersection allows no region at all;
- PII: the union of entities and always-personal fields; the strictest action (redact > hash > tokenize); the
  unmask roles are those every tokenizing Policy grants;
- retention: per data class the shortest period, except audit records, which are kept the longest period any
  Policy asks for (a retention period for audit is a minimum the regulator sets, not a maximum);
- approvals: every rule of every Policy applies; rules of the same name merge into the highest requirement (the
  largest quorum, only roles every one of them names, separation of duties if any asks for it);
- rate limits: per priority class (or for all) the lowest rate and, separately, the smallest burst;
- payload logging: the lowest sample rate;
- agent actions: every rule of every Policy applies (``policies.agents``: a matching deny refuses; once any rule
  allows, only what some allow rule matches runs).

What cannot be combined into something enforceable (approval rules of one name with no role in common) is listed
in ``conflicts``; enforcement points refuse the call rather than guess.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

from crds.policy import PII, AgentActionRule, ApprovalRule, Policy, RateLimit

Kind = Literal["Workflow", "Model", "Connector"]
PIIAction = Literal["redact", "hash", "tokenize"]
DataClass = Literal["inputs", "results", "payload_logs", "events", "audit"]

DEFAULT_NAMESPACE = "default"
#: Stricter first: what a combination of actions becomes.
PII_ACTION_STRICTNESS: tuple[PIIAction, ...] = ("redact", "hash", "tokenize")
DATA_CLASSES: tuple[DataClass, ...] = ("inputs", "results", "payload_logs", "events", "audit")
ALL_PRIORITIES = "*"

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> timedelta:
    """A Policy duration ("90d", "1h30m", "500ms") as a timedelta; ValueError on anything else."""
    position, seconds = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            break
        seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position != len(text) or not text:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 5m, 1h30m or 90d)")
    return timedelta(seconds=seconds)


@dataclass(frozen=True)
class Target:
    """A resource a call goes through, as selection sees it."""

    kind: Kind
    name: str
    namespace: str = DEFAULT_NAMESPACE
    labels: Mapping[str, str] = field(default_factory=dict)

    def key(self) -> tuple[str, str, str, tuple[tuple[str, str], ...]]:
        return (self.kind, self.namespace, self.name, tuple(sorted(self.labels.items())))


@dataclass(frozen=True, order=True)
class PolicyRef:
    """A Policy as lineage and audit records name it: where it is and which version of it applied."""

    namespace: str
    name: str
    generation: int | None = None
    resource_version: str | None = None
    #: A Policy without a generation (read from a file by ``aiplane dev`` or a CLI command, never applied to a
    #: cluster) is versioned by its content: ``content_digest``.
    digest: str | None = None

    @property
    def version(self) -> str:
        """``metadata.generation`` when the Policy has one, else its content digest."""
        return str(self.generation) if self.generation is not None else self.digest or ""

    def __str__(self) -> str:
        version = self.version
        return f"{self.namespace}/{self.name}" + (f"@{version}" if version else "")


def namespace_of(policy: Policy) -> str:
    return str(policy.metadata.get("namespace") or DEFAULT_NAMESPACE)


def ref(policy: Policy) -> PolicyRef:
    metadata = policy.metadata
    generation = metadata.get("generation")
    return PolicyRef(
        namespace=namespace_of(policy),
        name=str(metadata.get("name", "")),
        generation=int(generation) if generation is not None else None,
        resource_version=metadata.get("resourceVersion"),
        digest=content_digest(policy) if generation is None else None,
    )


#: id(policy) -> (policy, digest); the entry holds the Policy, so its id is not reused while the entry stands.
_DIGESTS: dict[int, tuple[Policy, str]] = {}
_DIGESTS_MAX = 4096


def content_digest(policy: Policy) -> str:
    """The version of a Policy that has no ``metadata.generation`` (a manifest file's): the first 12 hex digits of
    the sha256 of its spec as canonical JSON, so an edit gives another version and the same content the same one,
    on every machine. Computed once per Policy object (audit records ask for it per decision)."""
    found = _DIGESTS.get(id(policy))
    if found is not None and found[0] is policy:
        return found[1]
    spec = policy.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    if len(_DIGESTS) >= _DIGESTS_MAX:  # Policies replaced by many reloads: forget them all, recompute the live ones
        _DIGESTS.clear()
    _DIGESTS[id(policy)] = (policy, digest)
    return digest


def selects(policy: Policy, target: Target) -> bool:
    """Whether ``policy`` governs ``target``."""
    return namespace_of(policy) == target.namespace and policy.spec.selector.matches(target.kind, target.labels)


def applicable(policies: Iterable[Policy], target: Target) -> list[Policy]:
    """The Policies that govern ``target``, in a fixed order (namespace, name)."""
    return sorted((p for p in policies if selects(p, target)), key=lambda p: (namespace_of(p), ref(p).name))


# ---------------------------------------------------------------- the combined parts


@dataclass(frozen=True)
class EffectivePII:
    entities: frozenset[str]
    fields: tuple[str, ...]
    action: PIIAction
    unmask_roles: frozenset[str]
    #: The Policies whose ``pii`` parts this combines: what a masking's audit record names.
    sources: tuple[PolicyRef, ...] = ()


@dataclass(frozen=True)
class EffectiveApproval:
    """One approval requirement: a CEL condition and who, how many, must approve when it holds."""

    name: str
    when: tuple[str, ...]  # the conditions of same-named rules; the requirement applies when any holds
    roles: frozenset[str]
    quorum: int
    separation_of_duties: bool
    sources: tuple[PolicyRef, ...]


@dataclass(frozen=True)
class Limit:
    requests_per_second: float
    burst: int


@dataclass(frozen=True)
class Decision:
    """An enforcement outcome with its reason and the Policies behind it, ready for the audit log."""

    allowed: bool
    reason: str
    policies: tuple[PolicyRef, ...] = ()


@dataclass(frozen=True)
class EffectiveAgentRule:
    """An agent action rule and the Policy it comes from."""

    rule: AgentActionRule
    source: PolicyRef


@dataclass(frozen=True)
class EffectivePolicy:
    """What every Policy that governs one target says, combined; ``sources`` lists them (empty: ungoverned)."""

    sources: tuple[PolicyRef, ...] = ()
    pii: EffectivePII | None = None
    retention: Mapping[DataClass, timedelta] = field(default_factory=dict)
    approvals: tuple[EffectiveApproval, ...] = ()
    #: None: every tenant; otherwise the tenants every tenant-listing Policy allows.
    tenants: frozenset[str] | None = None
    #: None: any region; otherwise the regions every residency Policy allows (possibly none).
    regions: frozenset[str] | None = None
    #: priority class (or ``*``) → the strictest limit.
    rate_limits: Mapping[str, Limit] = field(default_factory=dict)
    payload_sample_rate: float | None = None
    #: Every agentActions rule of the governing Policies, in Policy order.
    agent_actions: tuple[EffectiveAgentRule, ...] = ()
    conflicts: tuple[str, ...] = ()

    @property
    def fingerprint(self) -> str:
        """A short hash of which Policy versions apply, for lineage and caches."""
        text = json.dumps([[r.namespace, r.name, r.generation, r.resource_version, r.digest] for r in self.sources])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def allows_tenant(self, tenant: str) -> Decision:
        if self.tenants is None or tenant in self.tenants:
            return Decision(True, f"tenant {tenant!r} is allowed", self.sources)
        return Decision(False, f"tenant {tenant!r} is not among the tenants the policies allow", self.sources)

    def allows_region(self, region: str | None) -> Decision:
        if self.regions is None:
            return Decision(True, "no residency policy applies", self.sources)
        allowed = ", ".join(sorted(self.regions)) or "none (the policies' regions do not overlap)"
        if region is None:
            return Decision(False, f"the target declares no region; data may only go to: {allowed}", self.sources)
        if region in self.regions:
            return Decision(True, f"region {region!r} is allowed", self.sources)
        return Decision(False, f"region {region!r} is outside the allowed regions: {allowed}", self.sources)


def _combine_pii(parts: list[PII], sources: tuple[PolicyRef, ...] = ()) -> EffectivePII | None:
    if not parts:
        return None
    action = min((p.action for p in parts), key=PII_ACTION_STRICTNESS.index)
    tokenizing = [frozenset(p.unmask_roles) for p in parts if p.action == "tokenize"]
    unmask = frozenset.intersection(*tokenizing) if action == "tokenize" and tokenizing else frozenset()
    fields = sorted({f for p in parts for f in p.fields})
    return EffectivePII(frozenset(e for p in parts for e in p.entities), tuple(fields), action, unmask, sources)


def _combine_retention(policies: list[Policy]) -> dict[DataClass, timedelta]:
    combined: dict[DataClass, timedelta] = {}
    for policy in policies:
        retention = policy.spec.retention
        if retention is None:
            continue
        for data_class in DATA_CLASSES:
            text = getattr(retention, data_class)
            if text is None:
                continue
            period = parse_duration(text)
            current = combined.get(data_class)
            if current is None:
                combined[data_class] = period
            else:
                combined[data_class] = max(current, period) if data_class == "audit" else min(current, period)
    return combined


def _combine_approvals(policies: list[Policy]) -> tuple[tuple[EffectiveApproval, ...], list[str]]:
    by_name: dict[str, list[tuple[PolicyRef, ApprovalRule]]] = {}
    for policy in policies:
        for rule in policy.spec.approvals:
            by_name.setdefault(rule.name, []).append((ref(policy), rule))
    merged: list[EffectiveApproval] = []
    conflicts: list[str] = []
    for name in sorted(by_name):
        rules = by_name[name]
        roles = frozenset.intersection(*(frozenset(rule.roles) for _, rule in rules))
        sources = tuple(source for source, _ in rules)
        if not roles:
            named = ", ".join(f"{source} ({', '.join(rule.roles)})" for source, rule in rules)
            conflicts.append(f"approval rule {name!r} has no role every policy accepts: {named}")
        merged.append(
            EffectiveApproval(
                name=name,
                when=tuple(dict.fromkeys(rule.when for _, rule in rules)),
                roles=roles,
                quorum=max(rule.quorum for _, rule in rules),
                separation_of_duties=any(rule.separation_of_duties for _, rule in rules),
                sources=sources,
            )
        )
    return tuple(merged), conflicts


def _combine_limits(limits: Iterable[RateLimit]) -> dict[str, Limit]:
    combined: dict[str, Limit] = {}
    for limit in limits:
        key = limit.priority or ALL_PRIORITIES
        current = combined.get(key)
        combined[key] = (
            Limit(limit.requests_per_second, limit.burst)
            if current is None
            else Limit(min(current.requests_per_second, limit.requests_per_second), min(current.burst, limit.burst))
        )
    return dict(sorted(combined.items()))


def combine(policies: Iterable[Policy]) -> EffectivePolicy:
    """The combination of ``policies`` (all of which govern one target), as the module docstring describes."""
    ordered = sorted(policies, key=lambda p: (namespace_of(p), ref(p).name))
    if not ordered:
        return EffectivePolicy()
    tenant_lists = [frozenset(p.spec.access.tenants) for p in ordered if p.spec.access and p.spec.access.tenants]
    region_lists = [frozenset(p.spec.residency.regions) for p in ordered if p.spec.residency]
    approvals, conflicts = _combine_approvals(ordered)
    rates = [p.spec.payload_logging.sample_rate for p in ordered if p.spec.payload_logging]
    return EffectivePolicy(
        sources=tuple(ref(p) for p in ordered),
        pii=_combine_pii(
            [p.spec.pii for p in ordered if p.spec.pii is not None], tuple(ref(p) for p in ordered if p.spec.pii)
        ),
        retention=_combine_retention(ordered),
        approvals=approvals,
        tenants=frozenset.intersection(*tenant_lists) if tenant_lists else None,
        regions=frozenset.intersection(*region_lists) if region_lists else None,
        rate_limits=_combine_limits(limit for p in ordered for limit in p.spec.rate_limits),
        payload_sample_rate=min(rates) if rates else None,
        agent_actions=tuple(EffectiveAgentRule(rule, ref(p)) for p in ordered for rule in p.spec.agent_actions),
        conflicts=tuple(conflicts),
    )


def effective(policies: Iterable[Policy], target: Target) -> EffectivePolicy:
    """What the Policies that govern ``target`` say together."""
    return combine(applicable(policies, target))
