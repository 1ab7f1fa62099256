"""API keys: each maps to a tenant, a principal and roles; stored as hashes in the engine's database.

The table (``gateway_api_keys``) is the engine's migrations' like every other, so one schema history covers the
database; the gateway reaches it through the engine's ``Engine.db`` handle.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, get_args

import sqlalchemy as sa
from ulid import ULID

from crds.base import Role
from engine.store.schema import api_keys

ROLES: frozenset[str] = frozenset(get_args(Role))
KEY_PREFIX = "aip_"


class SqlHandle(Protocol):
    """What the gateway needs of the engine's ``Database`` (``Engine.db``)."""

    def read(self) -> AbstractContextManager[sa.Connection]: ...

    def write(self) -> AbstractContextManager[sa.Connection]: ...


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: a tenant, a name within it, and its roles (the credential's and those Policies grant)."""

    tenant: str
    name: str
    roles: frozenset[str]
    key_id: str
    #: An OIDC token's groups, which Policies' role bindings may name; none for an API key.
    groups: frozenset[str] = frozenset()

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

    def ping(self) -> None:
        """Raise if the database is unreachable or the keys' table is missing."""
        with self.db.read() as conn:
            conn.execute(sa.select(api_keys.c.id).limit(0))

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
