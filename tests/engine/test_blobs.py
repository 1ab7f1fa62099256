"""Large payloads on PostgreSQL live in the store's blobs table: a task stored by one pod (its own data dir) is read
by a worker in another, and retention and erasure drop the blobs with the rows that referred to them."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from engine import Engine, TaskState
from engine.store.blobs import DatabaseBlobStore
from engine.store.schema import blobs
from tests.engine.conftest import fast_worker, wait_done

BIG = {"document": "x" * 5000}
ECHO = {"steps": [{"name": "decide", "type": "rules", "rules": {"set": {"size": "size(input.document)"}}}]}


def test_a_payload_stored_by_one_pod_is_read_by_another(pg_url: str, tmp_path: Path) -> None:
    with (
        Engine(pg_url, data_dir=tmp_path / "gateway", inline_limit=1024) as gateway,
        Engine(pg_url, data_dir=tmp_path / "worker", inline_limit=1024) as worker,
    ):
        assert isinstance(gateway.codec.blobs, DatabaseBlobStore)
        gateway.register_workflow("echo", ECHO)
        task = gateway.submit("acme", "echo", BIG)
        with fast_worker(worker):
            done = wait_done(worker, "acme", task.id)
        assert done.state == TaskState.SUCCEEDED
        assert done.input == BIG
        assert done.vars == {"size": 5000}
        assert not any(p.is_file() for p in tmp_path.rglob("*"))  # nothing on either pod's disk
        with gateway.db.read() as conn:
            [ref] = conn.execute(sa.select(blobs.c.ref)).scalars()
        # Content-addressed: the same payload again is the same row.
        assert gateway.codec.blobs.put(gateway.codec.blobs.get(ref)) == ref

        store = gateway.codec.blobs
        assert store.delete(ref)
        assert not store.delete(ref)
