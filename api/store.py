"""The gateway's own tables, in the engine's database: API keys and the policy annotations of tasks.

They live next to the engine's tables (same database, same transaction discipline) through the engine's
``Engine.db`` handle, but in a MetaData of their own, created with ``create_all`` when the app starts: the engine's
alembic migrations do not know them. Names start with ``gateway_`` so they cannot collide with the engine's.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, get_args

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from ulid import ULID

from crds.base import Role

ROLES: frozenset[str] = frozenset(get_args(Role))
KEY_PREFIX = "aip_"


class SqlHandle(Protocol):
    """What the gateway needs of the engine's ``Database`` (``Engine.db``)."""

    @property
    def engine(self) -> sa.Engine: ...

    def read(self) -> AbstractContextManager[sa.Connection]: ...

    def write(self) -> AbstractContextManager[sa.Connection]: ...


class _UTCDateTime(sa.TypeDecorator[datetime]):
    """Aware UTC datetimes on both databases (SQLite stores naive UTC text)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = sa.MetaData()

api_keys = sa.Table(
    "gateway_api_keys",
    metadata,
    sa.Column("id", sa.String(26), primary_key=True),
    # sha256 of the whole key; the plaintext is shown once, when the key is made, and never stored.
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    # The first characters of the key, to tell keys apart in listings.
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("tenant", sa.String(253), nullable=False),
    sa.Column("principal", sa.String(253), nullable=False),
    sa.Column("roles", sa.String(128), nullable=False),  # comma-separated crds.base.Role values
    sa.Column("created_at", _UTCDateTime, nullable=False),
    sa.Column("revoked_at", _UTCDateTime),
)

task_annotations = sa.Table(
    "gateway_task_annotations",
    metadata,
    sa.Column("task_id", sa.String(26), primary_key=True),
    sa.Column("tenant", sa.String(253), nullable=False),
    # {privacy, retention, approval} as submitted; enforced by policies in a later issue.
    sa.Column("policy", sa.Text),
    sa.Column("callback_url", sa.String(2048)),
    sa.Column("submitted_by", sa.String(253)),
    sa.Column("created_at", _UTCDateTime, nullable=False),
)


def ensure_schema(db: SqlHandle) -> None:
    """Create the gateway's tables if they are missing (safe to call from every process at start)."""
    metadata.create_all(db.engine, checkfirst=True)


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: a tenant, a name within it, and the roles the API key grants."""

    tenant: str
    name: str
    roles: frozenset[str]
    key_id: str

    def has_any(self, roles: Iterable[str]) -> bool:
        return "admin" in self.roles or not self.roles.isdisjoint(roles)


class ApiKeyStore:
    """API keys, stored as sha256 hashes, each mapping to a tenant, a principal and roles.

    ``verify`` caches answers for ``cache_ttl`` seconds (positive and negative) so the hot paths do not query the
    database on every request; ``revoke`` clears this process's cache at once.
    """

    def __init__(self, db: SqlHandle, *, cache_ttl: float = 30.0, max_cached: int = 10_000) -> None:
        self.db = db
        self.cache_ttl = cache_ttl
        self.max_cached = max_cached
        self._cache: dict[str, tuple[Principal | None, float]] = {}
        self._lock = threading.Lock()

    def ensure_schema(self) -> None:
        ensure_schema(self.db)

    def create(self, tenant: str, principal: str, roles: Iterable[str]) -> str:
        """Make a key for ``principal`` of ``tenant`` with ``roles``; returns the plaintext (shown only now)."""
        wanted = sorted(set(roles))
        unknown = [r for r in wanted if r not in ROLES]
        if unknown:
            raise ValueError(f"unknown roles {unknown}; roles are {sorted(ROLES)}")
        if not wanted:
            raise ValueError("give at least one role")
        if not tenant or len(tenant) > 253 or not principal or len(principal) > 253:
            raise ValueError("tenant and principal must be 1-253 characters")
        plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
        with self.db.write() as conn:
            conn.execute(
                api_keys.insert().values(
                    id=str(ULID()),
                    key_hash=hash_key(plaintext),
                    prefix=plaintext[:12],
                    tenant=tenant,
                    principal=principal,
                    roles=",".join(wanted),
                    created_at=datetime.now(UTC),
                    revoked_at=None,
                )
            )
        return plaintext

    def revoke(self, key_id: str) -> bool:
        with self.db.write() as conn:
            done = conn.execute(
                sa.update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC))
            )
        with self._lock:
            self._cache = {h: v for h, v in self._cache.items() if v[0] is None or v[0].key_id != key_id}
        return done.rowcount == 1

    def cached(self, plaintext: str) -> tuple[bool, Principal | None]:
        """(found in cache, principal) without touching the database: for the event loop."""
        digest = hash_key(plaintext)
        with self._lock:
            hit = self._cache.get(digest)
        if hit is not None and hit[1] > time.monotonic():
            return True, hit[0]
        return False, None

    def verify(self, plaintext: str) -> Principal | None:
        """The principal of a valid, unrevoked key, or None. Blocking on a cache miss."""
        found, principal = self.cached(plaintext)
        if found:
            return principal
        digest = hash_key(plaintext)
        with self.db.read() as conn:
            row = conn.execute(
                sa.select(api_keys).where(api_keys.c.key_hash == digest, api_keys.c.revoked_at.is_(None))
            ).first()
        principal = None
        if row is not None:
            principal = Principal(
                tenant=row.tenant,
                name=row.principal,
                roles=frozenset(r for r in row.roles.split(",") if r),
                key_id=row.id,
            )
        if self.cache_ttl > 0:
            with self._lock:
                if len(self._cache) >= self.max_cached:
                    self._cache.clear()
                self._cache[digest] = (principal, time.monotonic() + self.cache_ttl)
        return principal


class AnnotationStore:
    """Policy annotations and callback URLs of tasks, as the submitter gave them."""

    def __init__(self, db: SqlHandle) -> None:
        self.db = db

    def put(
        self,
        tenant: str,
        task_id: str,
        *,
        policy: dict[str, Any] | None,
        callback_url: str | None,
        submitted_by: str,
    ) -> None:
        values = {
            "tenant": tenant,
            "policy": json.dumps(policy, sort_keys=True) if policy is not None else None,
            "callback_url": callback_url,
            "submitted_by": submitted_by,
        }
        with self.db.write() as conn:
            # A retried submission (the first one's response was lost) finds its row already there.
            updated = conn.execute(
                sa.update(task_annotations)
                .where(task_annotations.c.task_id == task_id, task_annotations.c.tenant == tenant)
                .values(values)
            )
            if updated.rowcount == 0:
                conn.execute(task_annotations.insert().values(task_id=task_id, created_at=datetime.now(UTC), **values))

    def get(self, tenant: str, task_id: str) -> tuple[dict[str, Any] | None, str | None]:
        """(policy annotations, callback URL) of a task; (None, None) when it had none."""
        with self.db.read() as conn:
            row = conn.execute(
                sa.select(task_annotations.c.policy, task_annotations.c.callback_url).where(
                    task_annotations.c.task_id == task_id, task_annotations.c.tenant == tenant
                )
            ).first()
        if row is None:
            return None, None
        return (json.loads(row.policy) if row.policy else None), row.callback_url

    def ping(self) -> None:
        """Raise if the database is unreachable or the gateway's tables are missing."""
        with self.db.read() as conn:
            conn.execute(sa.select(api_keys.c.id).limit(0))
            conn.execute(sa.select(task_annotations.c.task_id).limit(0))
