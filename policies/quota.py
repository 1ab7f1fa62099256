"""Quotas per tenant: at most ``quota.maxTasksInFlight`` unfinished tasks (queued, running or waiting for an
approval) at once.

Rate limits bound how fast a tenant submits; a quota bounds how much of the engine it holds, whatever the rate:
a tenant whose tasks wait hours on approvals or on a slow model cannot pile up work without end. Like rate limits,
a Policy's quota applies to the tenants its ``access.tenants`` names, or to every tenant when it names none, and
the smallest of the quotas that apply wins. The engine's intake counts a tenant's unfinished tasks in the
submission's own transaction (``engine.runtime.intake``), so the quota holds across gateway replicas.
"""

from __future__ import annotations

from collections.abc import Iterable

from crds.policy import Policy
from policies.sources import PolicySet


def quotas_from_policies(policies: Iterable[Policy]) -> tuple[int | None, dict[str, int]]:
    """(the quota of every tenant, quotas of named tenants) of ``policies``; the smallest wins, and a named
    tenant's is also bound by the quota of every tenant."""
    everyone: int | None = None
    named: dict[str, int] = {}
    for policy in policies:
        quota = policy.spec.quota
        if quota is None:
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
    """``max_in_flight(tenant)``: the tenant's quota of tasks in flight (None: no quota), following ``policies``
    as they change."""

    def __init__(self, policies: PolicySet | Iterable[Policy]) -> None:
        self._limits: tuple[int | None, dict[str, int]] = (None, {})
        if isinstance(policies, PolicySet):
            policies.on_change(self._rebuild)
        else:
            self._rebuild(tuple(policies))

    def _rebuild(self, policies: tuple[Policy, ...]) -> None:
        self._limits = quotas_from_policies(policies)  # one swap: a reader sees the old limits or the new

    def max_in_flight(self, tenant: str) -> int | None:
        everyone, named = self._limits
        return named.get(tenant, everyone)
