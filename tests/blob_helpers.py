"""Raw access to an object store's stored bytes, whichever backend holds them: what the
crash-safety and integrity tests inspect or tamper with (bit rot, a stray file)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from overair.server.storage.blobs import BlobStore


def stored_names(blobs: BlobStore, prefix: str) -> list[str]:
    return sorted(entry.name for entry in blobs.list(prefix))


def read_stored(blobs: BlobStore, name: str) -> bytes:
    reader = blobs.open(name)
    assert reader is not None, f"{name} is not stored"
    try:
        return reader.read()
    finally:
        reader.close()


def write_stored(blobs: BlobStore, name: str, data: bytes) -> None:
    """Put bytes under a name behind the store's back (tampering, crash leftovers)."""
    with tempfile.NamedTemporaryFile(delete=False) as fh:
        fh.write(data)
    tmp = Path(fh.name)
    try:
        blobs.install(tmp, name)
    finally:
        tmp.unlink(missing_ok=True)
