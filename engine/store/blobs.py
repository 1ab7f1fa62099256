"""Large payloads in the database (``blobs`` table): the blob store of a PostgreSQL deployment.

Gateways, workers and Kafka consumers run as separate pods; a payload one of them stores by reference must be
readable by all the others. Keeping it in the store they already share needs no shared volume and is backed up,
replicated and erased with everything else. Content addressing keeps writes idempotent: a payload written twice
(a retried submission) is one row.

Writes go through their own short transaction: a payload is written before the row that refers to it, and a
transaction that then rolls back leaves an unreferenced blob (as a file store would), which retention's purge of
unreferenced blobs does not see and does no harm.
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa

from engine.clock import utcnow
from engine.store.database import Database, dialect_insert
from engine.store.schema import blobs

PREFIX = "sha256:"


class DatabaseBlobStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def put(self, data: bytes) -> str:
        ref = PREFIX + hashlib.sha256(data).hexdigest()
        with self.db.write() as conn:
            conn.execute(
                dialect_insert(conn, blobs)
                .values(ref=ref, data=data, created_at=utcnow())
                .on_conflict_do_nothing(index_elements=["ref"])
            )
        return ref

    def get(self, ref: str) -> bytes:
        with self.db.read() as conn:
            data = conn.execute(sa.select(blobs.c.data).where(blobs.c.ref == ref)).scalar()
        if data is None:
            raise FileNotFoundError(f"no blob {ref}")
        return bytes(data)

    def delete(self, ref: str) -> bool:
        """Remove a blob (retention, erasure); False if it was not there. The caller checks no row refers to it."""
        if not ref.startswith(PREFIX):
            raise ValueError(f"not a blob reference: {ref!r}")
        with self.db.write() as conn:
            return conn.execute(sa.delete(blobs).where(blobs.c.ref == ref)).rowcount == 1
