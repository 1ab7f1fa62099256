"""Go-style duration strings ("30s", "1h30m", "250ms", "30d") as the CRDs write them, turned into timedeltas."""

from __future__ import annotations

import re
from datetime import timedelta

# Same grammar as crds.base.DURATION_PATTERN, one (number, unit) pair at a time.
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> timedelta:
    """Parse ``text`` (e.g. ``1h30m``); a string the CRD pattern would refuse raises ``ValueError``."""
    position = 0
    seconds = 0.0
    for match in _PART.finditer(text):
        if match.start() != position:
            break
        seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position == 0 or position != len(text):
        raise ValueError(f"invalid duration {text!r}: expected e.g. 250ms, 30s, 5m, 1h30m or 30d")
    return timedelta(seconds=seconds)


def as_duration(value: str | float | timedelta) -> timedelta:
    """Accept a duration string, a number of seconds or a timedelta: the forms callers and configs use."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float):
        return timedelta(seconds=float(value))
    return parse_duration(value)
