"""Values across the boundary: step input to bind parameters, database rows to JSON-safe dicts."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from psycopg.types.json import Jsonb


def bind_value(value: Any) -> Any:
    """A step input value as psycopg adapts it: objects (and lists holding objects or lists) become jsonb, lists
    of scalars become arrays (``= ANY(:ids)``), scalars stay as they are."""
    if isinstance(value, Mapping):
        return Jsonb(dict(value))
    if isinstance(value, list) and any(isinstance(item, Mapping | list) for item in value):
        return Jsonb(value)
    return value


def json_safe(value: Any) -> Any:
    """A value read from PostgreSQL as JSON can carry it: numerics as numbers, times as ISO 8601 text, intervals as
    seconds, bytea as base64, uuid/inet/ranges and anything else unknown as text."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Decimal):
        if not value.is_finite():
            return str(value)  # NaN and ±Infinity have no JSON number
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    if isinstance(value, uuid.UUID | ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(value)
    return str(value)
