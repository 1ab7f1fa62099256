"""429s on the audit log, coalesced (``policies.coalesce``): a rate-limited or quota-exceeded request is a Policy
decision, recorded as kind ``policy``, decision ``deny``, subject ``tenant/<tenant>/<reason>/<bucket>``, at most
once per tenant and bucket per second per gateway process, each record counting the refusals it stands for.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, cast

import anyio.to_thread

from policies.effective import ref

if TYPE_CHECKING:
    from api.state import Gateway

log = logging.getLogger("aiplane.gateway")


async def refused(gw: Gateway, tenant: str, reason: str, bucket: str, detail: str, **facts: Any) -> None:
    """Count one 429 of ``tenant`` for ``reason`` (``rate-limited``, ``quota-exceeded``) and ``bucket`` (a
    priority class, ``*``, ``tasks-in-flight`` or ``tasks-in-flight/<priority class>``); append its coalesced
    record when one is due."""
    count = gw.refusals.note((tenant, reason, bucket), (detail, facts))
    if count is None:
        return
    await anyio.to_thread.run_sync(lambda: _append(gw, (tenant, reason, bucket), count, (detail, facts)))


def flush(gw: Gateway) -> None:
    """Record the refusals counted since each bucket's last record (a gateway shutting down), so the records'
    counts add up to every 429 it gave. Blocking."""
    for key, count, info in gw.refusals.drain():
        _append(gw, cast("tuple[str, str, str]", key), count, info)


def _append(gw: Gateway, key: tuple[str, str, str], count: int, info: tuple[str, dict[str, Any]] | None) -> None:
    tenant, reason, bucket = key
    detail, facts = info if info is not None else ("", {})
    policies = sorted(str(ref(p)) for p in gw.limiting(tenant, reason, bucket))
    details = {
        "reason": reason,
        "detail": detail,
        "bucket": bucket,
        "count": count,
        "window": gw.refusals.window,
        "policies": policies,
        **facts,
    }
    try:
        gw.engine.audit.append(
            "policy", f"tenant/{tenant}/{reason}/{bucket}", "deny", details, tenant=tenant, actor="gateway"
        )
    except Exception:
        # The 429 stands either way; a store that cannot take the record must not turn it into a 5xx. Said, and
        # counted by aiplane_policy_decisions_total as every refusal is.
        log.warning(
            "could not append the audit record of %d %s refusal(s) of tenant %s", count, reason, tenant, exc_info=True
        )
