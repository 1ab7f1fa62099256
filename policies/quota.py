"""Quotas per tenant and per priority class: at most ``quota.maxTasksInFlight`` unfinished tasks (queued, running or
waiting for an approval) at once, of every priority, or of the one ``quota.priority`` names.

Rate limits bound how fast a tenant submits; a quota bounds how much of the engine it holds, whatever the rate:
a tenant whose tasks wait hours on approvals or on a slow model cannot pile up work without end, and a quota on
``low`` keeps a backlog of batch work from taking the places that ``high`` submissions need. Like rate limits, a
Policy's quota applies to the tenants its ``access.tenants`` names, or to every tenant when it names none, and the
smallest of the quotas that apply wins, per class. A submission must fit both its tenant's quota of all classes
and that of its own class. The engine's intake counts a tenant's unfinished tasks (of the class) in the
submission's own transaction (``engine.runtime.intake``), so the quota holds across gateway replicas.
"""

from __future__ import annotations

from collections.abc import Iterable

from crds.policy import Policy
from policies.sources import PolicySet

#: The quotas of one priority class (None: of all): (the quota of every tenant, quotas of named tenants).
Limits = tuple[int | None, dict[str, int]]


def quotas_from_policies(policies: Iterable[Policy], priority: str | None = None) -> Limits:
    """(the quota of every tenant, quotas of named tenants) of ``policies`` for ``priority`` (None: the quotas that
    name no class); the smallest wins, and a named tenant's is also bound by the quota of every tenant."""
    everyone: int | None = None
    named: dict[str, int] = {}
    for policy in policies:
        quota = policy.spec.quota
        if quota is None or quota.priority != priority:
            continue
        limit = quota.max_tasks_in_flight
        tenants = policy.spec.access.tenants if policy.spec.access is not None else []
        if not tenants:
            everyone = limit if everyone is None else min(everyone, limit)
        for tenant in tenants:
            named[tenant] = min(named.get(tenant, limit), limit)
    if everyone is not None:
        named = {tenant: min(limit, everyone) for tenant, limit in named.items()}
    return everyone, named


class Quotas:
    """``max_in_flight(tenant, priority)``: the tenant's quota of tasks in flight of all classes (``priority``
    None) or of one class (None: no quota), following ``policies`` as they change."""

    def __init__(self, policies: PolicySet | Iterable[Policy]) -> None:
        self._limits: dict[str | None, Limits] = {}
        if isinstance(policies, PolicySet):
            policies.on_change(self._rebuild)
        else:
            self._rebuild(tuple(policies))

    def _rebuild(self, policies: tuple[Policy, ...]) -> None:
        classes = {p.spec.quota.priority for p in policies if p.spec.quota is not None}
        # One swap: a reader sees the old limits or the new.
        self._limits = {priority: quotas_from_policies(policies, priority) for priority in classes}

    def max_in_flight(self, tenant: str, priority: str | None = None) -> int | None:
        everyone, named = self._limits.get(priority, (None, {}))
        return named.get(tenant, everyone)
