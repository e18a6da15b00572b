"""Object versions the nginx download front serves from its own disk
(delivery/nginx_front.py; docs/scaling.md, "HTTPS delivery").

Serving a device's 4 KiB Range GET from nginx's slice cache costs nginx a second cache
lookup per request on top of the access decision's; serving it as a static file costs
an `open_file_cache` hit. So the first time overair grants a download of an object
version, it copies that version here, in the background, checked against its SHA-256 as
it is read (storage/objects.py `iter_verified`), under a temporary name renamed into
place only once the whole checked out. From then on its grants name the file (the
decision's `FILE_HEADER`) and nginx serves it; until then, and for a version that does
not fit, nginx fills its slice cache as before. Nothing here decides access: nginx
serves a file only after overair's decision granted the URL and named that file.

Files are named by `object_token` (a digest of bucket, key and version), so a name says
nothing of the object and cannot be steered by a URL. The directory is emptied at start
(only what this process checked is served), held under `max_bytes` by dropping the
files granted least recently, and a deleted object's files are removed at once. A
version whose copy failed (its bytes did not check out, the store did not answer) is not
copied again for `RETRY_SECONDS`: every grant of it would otherwise read the whole object
from the store again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from overair.core.errors import OverairError
from overair.server.delivery.nginx_front import FILE_PREFIX, object_token
from overair.server.storage.objects import ObjectStore

log = logging.getLogger("overair.download_front")

_PARTIAL = ".partial"
RETRY_SECONDS = 60.0
_FAILED_KEPT = 1024  # failed versions remembered; each costs a token and a float


@dataclass(frozen=True, slots=True)
class _File:
    bucket: str
    key: str
    size: int


class FrontFiles:
    def __init__(self, directory: Path, objects: ObjectStore, max_bytes: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.directory = directory
        self._objects = objects
        self._max_bytes = max_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._ready: OrderedDict[str, _File] = OrderedDict()  # token -> file, least recently granted first
        self._copying: dict[str, tuple[str, str]] = {}  # token -> (bucket, key)
        self._deleted: set[str] = set()  # copies under way whose object was deleted meanwhile
        self._failed: dict[str, float] = {}  # token -> when its copy may be tried again
        self._bytes = 0
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="front-files")
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.iterdir():  # a previous run's: not checked by this one
            stale.unlink(missing_ok=True)

    def name(self, bucket: str, key: str, version: str, size: int) -> str | None:
        """The name of the file nginx may serve for this granted object version (it is
        FILE_PREFIX + the name), or None (then its copy is started, if it fits and is not
        under way)."""
        token = object_token(bucket, key, version)
        with self._lock:
            if token in self._ready:
                self._ready.move_to_end(token)
                return token
            if token in self._copying or size > self._max_bytes or self._failed_recently(token):
                return None
            self._copying[token] = (bucket, key)
        self._writer.submit(self._copy, token, bucket, key, version)
        return None

    def settled(self, bucket: str, key: str, version: str) -> bool:
        """No copy of this version is under way (it is in, failed, or was never started)."""
        with self._lock:
            return object_token(bucket, key, version) not in self._copying

    @property
    def bytes_held(self) -> int:
        return self._bytes

    def forget(self, bucket: str, key: str) -> None:
        """The object's bytes were deleted: its files go now."""
        with self._lock:
            gone = [token for token, f in self._ready.items() if (f.bucket, f.key) == (bucket, key)]
            for token in gone:
                self._drop(token)
            self._deleted.update(token for token, named in self._copying.items() if named == (bucket, key))

    def close(self) -> None:
        self._writer.shutdown(wait=False, cancel_futures=True)

    def _copy(self, token: str, bucket: str, key: str, version: str) -> None:
        partial = self.directory / (token + _PARTIAL)
        try:
            obj = self._objects.head_object(bucket, key, version)
            with partial.open("wb") as out:
                for block in self._objects.iter_verified(obj):  # raises on a mismatch, at the end
                    out.write(block)
            with self._lock:
                while self._ready and self._bytes + obj.size > self._max_bytes:
                    self._drop(next(iter(self._ready)))
                if self._bytes + obj.size > self._max_bytes or token in self._deleted:
                    partial.unlink(missing_ok=True)
                    return
                os.replace(partial, self.directory / (FILE_PREFIX + token))
                self._ready[token] = _File(bucket, key, obj.size)
                self._bytes += obj.size
        except (OverairError, OSError) as exc:  # nginx goes on filling slices for it
            log.warning("download front: %s/%s (%s) not copied for serving: %s", bucket, key, version, exc)
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
            with self._lock:
                if len(self._failed) >= _FAILED_KEPT:  # many failing versions: forget the oldest
                    del self._failed[next(iter(self._failed))]
                self._failed[token] = self._clock() + RETRY_SECONDS
        finally:
            with self._lock:
                self._copying.pop(token, None)
                self._deleted.discard(token)

    def _failed_recently(self, token: str) -> bool:
        """Under the lock."""
        retry_at = self._failed.get(token)
        if retry_at is None:
            return False
        if self._clock() < retry_at:
            return True
        del self._failed[token]
        return False

    def _drop(self, token: str) -> None:
        """Under the lock. nginx may hold it open a moment longer (open_file_cache): the
        same bytes, and only for a URL whose decision still grants them."""
        dropped = self._ready.pop(token)
        self._bytes -= dropped.size
        (self.directory / (FILE_PREFIX + token)).unlink(missing_ok=True)
