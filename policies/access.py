"""Access decisions that do not depend on how the caller authenticated: role grants and separation of duties.

Roles are per tenant: an API key carries its own, an OIDC token its ``roles`` claim, and Policies' ``access.roles``
grant more to subjects or groups (``RoleBinding``). ``admin`` holds every role.

Separation of duties: whoever submitted a task may not decide its approval when an approval rule of a Policy that
governs the workflow says so (``separationOfDuties``, true by default) or the gateway enforces it for every
approval (its default; see docs/security.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import get_args

from crds.base import Role
from crds.policy import Policy, RoleBinding

ROLES: frozenset[str] = frozenset(get_args(Role))
EVERY_TENANT = "*"


def granted_roles(bindings: Iterable[RoleBinding], subject: str, groups: Iterable[str] = ()) -> frozenset[str]:
    """Roles that ``bindings`` grant to ``subject`` or to any of its ``groups``."""
    names = {subject, *groups}
    return frozenset(b.role for b in bindings if not names.isdisjoint(b.subjects))


def bindings_from_policies(policies: Iterable[Policy]) -> dict[str, list[RoleBinding]]:
    """Role bindings by tenant (``*`` for every tenant) from Policies' ``access``: a Policy naming tenants grants
    its roles in those tenants only; one naming none grants them in every tenant."""
    out: dict[str, list[RoleBinding]] = {}
    for policy in policies:
        access = policy.spec.access
        if access is None or not access.roles:
            continue
        for tenant in access.tenants or [EVERY_TENANT]:
            out.setdefault(tenant, []).extend(access.roles)
    return out


def tenant_allowed(policies: Sequence[Policy], tenant: str) -> bool:
    """Whether ``tenant`` may use resources these Policies govern: every Policy with an ``access.tenants`` list
    must name it (deny wins); Policies without one allow every tenant."""
    return all(p.spec.access is None or not p.spec.access.tenants or tenant in p.spec.access.tenants for p in policies)


def separation_required(policies: Iterable[Policy], *, default: bool = True) -> bool:
    """Whether a submitter is barred from approving their own task: any approval rule that asks for it wins;
    without rules, ``default``."""
    rules = [rule for p in policies for rule in p.spec.approvals]
    if not rules:
        return default
    return any(rule.separation_of_duties for rule in rules)


def separation_violation(submitted_by: str | None, approver: str, *, required: bool) -> str | None:
    """Why ``approver`` may not decide a task ``submitted_by`` them, or None when they may."""
    if required and submitted_by is not None and submitted_by == approver:
        return (
            f"{approver!r} submitted this task and may not decide its approval (separation of duties); "
            "another approver of the tenant must decide"
        )
    return None
