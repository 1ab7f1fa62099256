"""Promotion approvals: a canary whose ``spec.canary.promotion.approval`` asks for people holds its last traffic
step until they decide.

The approval itself is one of the engine's (roles, quorum, expiry, separation of duties, audit records, the
``/v1/approvals`` API and ``aiplane approve``). The operators import only ``crds``, so the engine reaches the
operator through the ``Approvals`` interface, which ``aiplane operator`` implements when it has a database. This
module holds what is pure: the request a rollout makes, and what an approval's state means for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from crds.model import Model, RolloutApproval

# What the rollout learns about its approval: the approval, or why none can be asked for (no store, an error).
Seen = RolloutApproval | str


DEFAULT_EXPIRY = "24h"
#: Who asked for the change a promotion approval decides (the user who set the Model's canary). The chart's
#: ValidatingAdmissionPolicy (aiplane-requested-by) admits only the requesting user's own name, so the annotation
#: is the apiserver's word, not the requester's claim.
REQUESTED_BY = "aiplane.io/requested-by"


@dataclass(frozen=True)
class Demand:
    """What the Policies selecting a Model demand of its promotions (their approval rules that triggered)."""

    rules: tuple[str, ...]
    roles: tuple[str, ...]
    quorum: int
    reasons: tuple[str, ...] = ()
    #: Whether a triggered rule asks that the requester of the change may not approve it.
    separation_of_duties: bool = False


# The Policies' demand for a Model's promotion to ``version`` from ``stable``; None: they demand nothing.
Demands = Callable[[Model, str, str], Demand | None]


@dataclass(frozen=True)
class Request:
    """One promotion to approve: a canary version of one Model (by uid: a re-created Model asks again)."""

    namespace: str
    name: str
    uid: str
    version: str
    stable: str
    tenant: str
    roles: tuple[str, ...]
    users: tuple[str, ...]
    quorum: int
    expiry: str
    # Approval rules of Policies that demand this approval (empty: the Model's own spec asks for it).
    rules: tuple[str, ...] = ()
    # Who asked for the change (the Model's aiplane.io/requested-by annotation); empty: not known.
    requested_by: str = ""
    # The requester may not approve: a Policy's rule says so (separationOfDuties).
    separation_of_duties: bool = False

    @property
    def key(self) -> str:
        """Idempotency key of the request: the same rollout never opens a second approval."""
        return f"model-promotion/{self.uid}/{self.version}"

    @property
    def prompt(self) -> str:
        return (
            f"Promote Model {self.namespace}/{self.name} to version {self.version} (replacing {self.stable})? "
            "The canary passed its analysis at every traffic step and now serves at its last step. Approve to "
            "make it the stable version; reject to roll it back."
            + (f" Asked by the Policies' approval rules {', '.join(self.rules)}." if self.rules else "")
        )

    def input(self) -> dict[str, object]:
        """The engine task's input: the same for every call about this rollout (the idempotency key demands it)."""
        return {
            "model": {"namespace": self.namespace, "name": self.name, "uid": self.uid},
            "version": self.version,
            "stable": self.stable,
        }


class Approvals(Protocol):
    """The engine's approvals as the operator uses them (``aiplane.promotions`` implements it)."""

    def open(self, request: Request) -> RolloutApproval:
        """The approval of ``request``: created the first time, the same one on every later call."""

    def look(self, tenant: str, approval_id: str) -> RolloutApproval:
        """The approval as it stands now."""

    def withdraw(self, approval: RolloutApproval, reason: str) -> RolloutApproval:
        """Cancel a pending approval nobody needs any more (the canary was rolled back or aborted); the approval
        as it ended (cancelled, or decided or expired if that came first)."""


def request(model: Model, stable: str, demand: Demand | None = None) -> Request | None:
    """What ``model``'s rollout asks approvers, or None when its promotion needs no approval.

    The Model's ``spec.canary.promotion.approval`` and its Policies' approval rules (``demand``) add up as Policy
    rules do among themselves: the larger quorum, the roles both accept; with a Policy's demand, the spec's named
    users cannot approve on their own (a Policy speaks in roles), and nobody can when the roles do not overlap.
    """
    canary = model.spec.canary
    if canary is None:
        return None
    spec = canary.promotion.approval if canary.promotion is not None else None
    if spec is None and demand is None:
        return None
    roles: tuple[str, ...] = tuple(spec.roles) if spec is not None else ()
    users: tuple[str, ...] = tuple(spec.users) if spec is not None else ()
    quorum = spec.quorum if spec is not None else 1
    if demand is not None:
        roles = tuple(r for r in demand.roles if r in roles) if spec is not None else demand.roles
        users = ()
        quorum = max(quorum, demand.quorum)
    meta = model.metadata
    namespace = str(meta.get("namespace") or "")
    return Request(
        namespace=namespace,
        name=str(meta.get("name") or ""),
        uid=str(meta.get("uid") or ""),
        version=canary.version,
        stable=stable,
        tenant=(spec.tenant if spec is not None else None) or namespace,
        roles=roles,
        users=users,
        quorum=quorum,
        expiry=spec.expiry if spec is not None else DEFAULT_EXPIRY,
        rules=demand.rules if demand is not None else (),
        requested_by=str((meta.get("annotations") or {}).get(REQUESTED_BY) or ""),
        separation_of_duties=demand.separation_of_duties if demand is not None else False,
    )


def effective(approval: RolloutApproval, now: datetime) -> RolloutApproval:
    """``approval`` with a pending one past its expiry counted as expired: the operator does not wait for a
    worker's maintenance pass to notice (and an approver can no longer decide it then anyway)."""
    if approval.state == "pending" and approval.expires_at is not None and approval.expires_at <= now:
        return approval.model_copy(update={"state": "expired"})
    return approval


def who(approval: RolloutApproval) -> str:
    """Who may decide, in words."""
    holders = [f"role {', '.join(approval.roles)}"] if approval.roles else []
    if approval.users:
        holders.append(f"user {', '.join(approval.users)}")
    count = f"{approval.quorum} approvals" if approval.quorum > 1 else "1 approval"
    return f"{count} from {' or '.join(holders) or 'nobody'} in tenant {approval.tenant}"


def waiting_message(version: str, approval: RolloutApproval) -> str:
    done = len(approval.decided_by)
    so_far = f" ({done} so far: {', '.join(approval.decided_by)})" if done else ""
    expires = f", expires {approval.expires_at.isoformat()}" if approval.expires_at is not None else ""
    return (
        f"promotion of {version} awaits {who(approval)}{so_far}: aiplane approve {approval.id} "
        f"(or reject with --reason), POST /v1/approvals/{approval.id}/approve{expires}"
    )


def refused_message(version: str, approval: RolloutApproval) -> str:
    if approval.state == "expired":
        return f"promotion of {version} not approved in time: approval {approval.id} expired"
    by = f" by {approval.decided_by[-1]}" if approval.decided_by else ""
    why = f": {approval.reason}" if approval.reason else ""
    return f"promotion of {version} {approval.state}{by}{why} (approval {approval.id})"
