"""Predictions the Policies allow, on the audit log, coalesced (``policies.coalesce``) like 429s (``api.floods``).

A call of ``POST /v1/models/{name}/predict`` that Policies selecting the Model admit is a Policy decision, so it is
recorded: kind ``policy``, decision ``allow``, subject ``model/<name>/predict``, actor ``gateway``, the tenant, and
in ``details`` the ``model``, ``policies`` (every version selecting the Model), ``count`` and ``window``. But
predictions are the gateway's high-rate path (no task, no transaction to share), and one hash-chained record per
call would serialise every call on the chain head: so, per gateway process, the first allowed call of a tenant,
Model and set of Policy versions in a window writes a record counting itself and the calls coalesced since the
previous one, and the others are counted in memory. Versions are part of the key, so a count never mixes the calls
of two Policy versions. Counts of a key that went quiet are written with the next record of any key once a window
has passed (``Coalescer.overdue``), and the rest when the gateway shuts down (``flush``).

A call no Policy selects the Model for is not recorded (nothing decided it). The record is written before the
model is called; a store that cannot take it is logged and the call goes on, as a 429's record does (the counts
are lost for that window; ``aiplane_policy_decisions_total`` is not a substitute here, it counts refusals).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any, cast

import anyio.to_thread

from policies.audit import Entry

if TYPE_CHECKING:
    from api.state import Gateway
    from policies.model_calls import ModelCall

log = logging.getLogger("aiplane.gateway")

_Key = tuple[str, str, tuple[str, ...]]  # tenant, model, Policy versions


async def allowed(gw: Gateway, call: ModelCall) -> None:
    """Count one admitted call (``call``: what the Model's Policies decided for it); append the coalesced record
    when one is due. Nothing for a call no Policy governs."""
    if not call.policies:
        return
    count = gw.admitted.note((call.tenant, call.model, call.policies))
    if count is None:
        return
    key: _Key = (call.tenant, call.model, call.policies)
    await anyio.to_thread.run_sync(lambda: _append(gw, [(key, count), *_pending(gw.admitted.overdue())]))


def flush(gw: Gateway) -> None:
    """Record the calls counted since each key's last record (a gateway shutting down). Blocking."""
    _append(gw, _pending(gw.admitted.drain()))


def _pending(items: Sequence[tuple[Hashable, int, Any]]) -> list[tuple[_Key, int]]:
    return [(cast("_Key", key), count) for key, count, _ in items]


def _append(gw: Gateway, counted: list[tuple[_Key, int]]) -> None:
    if not counted:
        return
    window = gw.admitted.window
    entries = [
        Entry(
            "policy",
            f"model/{model}/predict",
            "allow",
            {"model": model, "count": count, "window": window, "policies": list(policies)},
            tenant=tenant,
            actor="gateway",
        )
        for (tenant, model, policies), count in counted
    ]
    try:
        gw.engine.audit.append_many(entries)
    except Exception:
        log.warning("could not append the audit records of %d allowed prediction(s)", len(entries), exc_info=True)
