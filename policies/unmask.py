"""Opening tokenized values again (detokenization), for the holders of a Policy's ``pii.unmaskRoles``.

``tokenize`` masks with AES-SIV under the tenant's key (``policies.tokens``): the token carries the value, so
opening one needs the key, the tenant it was made for and the entity type it was made as, and nothing else.
Who may open is the Policy's: a caller holding one of the workflow's effective ``unmask_roles`` (every tokenizing
Policy must grant the role; a Policy that redacts or hashes leaves nothing to open). Every attempt, opened or
refused, is an audit record naming what was opened (entity types and paths, never the values) and why.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from policies.audit import Entry
from policies.masking import Opened, PIIPolicy, open_tokens

__all__ = ["DENIED", "INVALID", "OPENED", "Opened", "open_tokens", "refusal", "unmask_entry"]

#: Audit decisions of a detokenization request.
OPENED = "unmask"
DENIED = "unmask-denied"
INVALID = "unmask-invalid"


def refusal(pii: PIIPolicy | None, holds_any: Callable[[Iterable[str]], bool], workflow: str) -> str | None:
    """Why a caller may not open the tokens of ``workflow`` (``holds_any``: whether they hold one of some roles),
    or None when they may."""
    if pii is None:
        return f"no Policy masks the data of workflow {workflow!r}, so none of it can be unmasked"
    roles = sorted(pii.unmask_roles)
    if pii.action != "tokenize" or not roles:
        return (
            f"the Policies of workflow {workflow!r} {pii.action} its personal data and let nobody unmask it "
            "(only a tokenize action with unmaskRoles, in every Policy that masks, can be reversed)"
        )
    if not holds_any(roles):
        return f"unmasking the data of workflow {workflow!r} needs one of the roles {roles}"
    return None


def unmask_entry(
    decision: str,
    *,
    tenant: str,
    actor: str,
    subject: str,
    workflow: str,
    roles: Iterable[str],
    reason: str | None,
    policies: Iterable[object] = (),
    opened: Opened | None = None,
    why: str | None = None,
) -> Entry:
    """The audit record of a detokenization request: who, which workflow's data, under which Policies, the
    caller's stated reason, and what was opened (entities and paths) or why not; never a value."""
    details: dict[str, Any] = {
        "workflow": workflow,
        "roles": sorted(roles),
        "policies": sorted(str(p) for p in policies),
        "reason": reason,
    }
    if opened is not None:
        details.update(opened.summary())
    if why is not None:
        details["why"] = why
    return Entry("policy", subject, decision, details, tenant=tenant, actor=actor)
