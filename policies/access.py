"""Access decisions that do not depend on how the caller authenticated: role grants and separation of duties.

Roles are per tenant: an API key carries its own, an OIDC token its ``roles`` claim, and Policies' ``access.roles``
grant more (``RoleBinding``), as Kubernetes RoleBindings do: grants only add up, across Policies and to what the
credential carries, and nothing a Policy says takes a role away. A binding names principals: an API key's
principal name, an OIDC token's subject or one of its groups. It grants in the tenants its Policy's
``access.tenants`` lists (every tenant when it lists none), and only ever in the tenant the caller's credential
names: no binding moves a caller to another tenant. It does not depend on the Policy's selector (a role is held
tenant-wide). ``RoleGrants`` answers "which roles do the Policies grant this principal" per request, so a change
to the Policies applies to the next request, including for tokens and keys already verified. ``admin`` holds
every role.

Separation of duties: whoever submitted a task may not decide its approval when an approval rule of a Policy that
governs the workflow says so (``separationOfDuties``, true by default) or the gateway enforces it for every
approval (its default; see docs/security.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import get_args

from crds.base import Role
from crds.policy import Policy, RoleBinding

ROLES: frozenset[str] = frozenset(get_args(Role))
EVERY_TENANT = "*"


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


class RoleGrants:
    """The roles Policies' ``access.roles`` grant, indexed by tenant and principal: built once per Policy change,
    asked per request (a few dictionary look-ups)."""

    def __init__(self, bindings: Mapping[str, Iterable[RoleBinding]] | None = None) -> None:
        index: dict[str, dict[str, set[str]]] = {}
        for tenant, granted in (bindings or {}).items():
            by_subject = index.setdefault(tenant, {})
            for binding in granted:
                for subject in binding.subjects:
                    by_subject.setdefault(subject, set()).add(binding.role)
        self._index = {t: {s: frozenset(r) for s, r in subjects.items()} for t, subjects in index.items()}

    @classmethod
    def from_policies(cls, policies: Iterable[Policy]) -> RoleGrants:
        return cls(bindings_from_policies(policies))

    def __bool__(self) -> bool:
        return bool(self._index)

    def roles_for(self, tenant: str, principal: str, groups: Iterable[str] = ()) -> frozenset[str]:
        """Roles granted in ``tenant`` to ``principal`` or to one of its ``groups`` (empty when none)."""
        names = (principal, *groups)
        found: set[str] = set()
        for scope in (EVERY_TENANT, tenant):
            by_subject = self._index.get(scope)
            if by_subject:
                for name in names:
                    found.update(by_subject.get(name, ()))
        return frozenset(found)


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
