"""Files too large to hold whole (above `Limits.http_whole_file_bytes`), served by range
from the object store.

The store checks an object's SHA-256 only over the whole (storage/objects.py): a file is
read through once, in blocks, before any of it is served, and its version is then
remembered as verified (versions never change), so every later Range is a `read_range`
of just those bytes (local disk or S3), never the whole file in memory.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator

from overair.server.storage.objects import ObjectStore, StoredObject

CHUNK_BYTES = 1024 * 1024  # what one read of a large range holds in memory
MAX_VERIFIED = 4096  # versions remembered as checked (a few hundred bytes each)


class RangedFiles:
    def __init__(self, objects: ObjectStore) -> None:
        self._objects = objects
        self._verified: OrderedDict[tuple[str, str, str], StoredObject] = OrderedDict()
        self._lock = threading.Lock()

    def verified(self, obj: StoredObject) -> StoredObject:
        """`obj`, its whole checked against its SHA-256 once (raises CorruptObject)."""
        item = (obj.bucket, obj.key, obj.version_id)
        with self._lock:
            if item in self._verified:
                self._verified.move_to_end(item)
                return obj
        for _ in self._objects.iter_verified(obj):  # streamed: one block in memory at a time
            pass
        with self._lock:
            self._verified[item] = obj
            while len(self._verified) > MAX_VERIFIED:
                self._verified.popitem(last=False)
        return obj

    def read(self, obj: StoredObject, first: int, last: int) -> Iterator[bytes]:
        """Bytes first..last (inclusive) of a verified object, in chunks."""
        for start in range(first, last + 1, CHUNK_BYTES):
            yield self._objects.read_range(obj, start, min(last + 1, start + CHUNK_BYTES))

    def forget(self, bucket: str, key: str) -> None:
        with self._lock:
            for item in [i for i in self._verified if i[:2] == (bucket, key)]:
                del self._verified[item]
