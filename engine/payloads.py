"""Large payloads by reference: inputs, results and step outputs above a size limit go to a content-addressed
blob store, and the row keeps ``sha256:<hex>`` instead of the bytes.

Content addressing makes writes idempotent (a retried write of the same payload is the same file) and lets
identical payloads share storage; rows stay small, so the queue's hot tables stay fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from engine.store.types import dumps

DEFAULT_INLINE_LIMIT = 64 * 1024
_PREFIX = "sha256:"


class BlobStore(Protocol):
    """Where large payloads live. ``put`` returns a reference that ``get`` accepts."""

    def put(self, data: bytes) -> str: ...

    def get(self, ref: str) -> bytes: ...


class FileBlobStore:
    """Blobs as files named by their sha256 under a directory (two-level fan-out keeps directories small)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, digest: str) -> Path:
        return self.root / digest[:2] / digest

    def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        path = self._path(digest)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write to a temp file and rename: readers never see a half-written blob, and two writers of the
            # same content both end with the same complete file.
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return _PREFIX + digest

    def delete(self, ref: str) -> bool:
        """Remove a blob (retention, erasure); False if it was not there. The caller checks no row refers to it."""
        if not ref.startswith(_PREFIX):
            raise ValueError(f"not a blob reference: {ref!r}")
        try:
            self._path(ref.removeprefix(_PREFIX)).unlink()
        except FileNotFoundError:
            return False
        return True

    def get(self, ref: str) -> bytes:
        if not ref.startswith(_PREFIX):
            raise ValueError(f"not a blob reference: {ref!r}")
        digest = ref.removeprefix(_PREFIX)
        data = self._path(digest).read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise ValueError(f"blob {ref} is corrupt: its content does not match its name")
        return data


@dataclass(frozen=True)
class Encoded:
    """A payload ready for a (text column, ref column) pair: exactly one of them is set, or both are None."""

    inline: str | None
    ref: str | None


class PayloadCodec:
    """Turns JSON values into inline text or blob references and back, by size."""

    def __init__(self, blobs: BlobStore, inline_limit: int = DEFAULT_INLINE_LIMIT) -> None:
        self.blobs = blobs
        self.inline_limit = inline_limit

    def encode(self, value: Any) -> Encoded:
        if value is None:
            return Encoded(None, None)
        text = dumps(value)
        data = text.encode()
        if len(data) <= self.inline_limit:
            return Encoded(text, None)
        return Encoded(None, self.blobs.put(data))

    def decode(self, inline: str | None, ref: str | None) -> Any:
        if ref is not None:
            return json.loads(self.blobs.get(ref))
        if inline is not None:
            return json.loads(inline)
        return None
