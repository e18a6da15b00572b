"""Where the object store's bytes live: a small interface and its local-directory form.

The object store (`objects.py`) and multipart uploads (`multipart.py`) keep their rows
in the database and their bytes under names derived from those rows
(`data/<bucket>/<hh>/<sha256(key)>/<version>.<sha256>`, `uploads/<upload>/<part>.<sha256>`).
A `BlobStore` holds the bytes under such names. Its contract is what the store's
crash-safety rests on:

- `install` returns only once the bytes are durable under the name (local: fsync'ed
  file renamed into place and directory fsync'ed; S3: the PutObject or
  CompleteMultipartUpload succeeded); the caller commits its row only after that.
- nothing of a failed `install` is visible under the name;
- every failure of the backend itself (full disk, S3 unreachable or refusing) is an
  `UnavailableError` (503 at the API), raised by the backend, so callers translate
  nothing; a missing name is `None`/`False`, not an error, and the caller decides
  (a row whose bytes are missing is a `CorruptObject`).

Names are `/`-separated relative paths. `shared` says whether other server processes
see the same bytes (S3): sweeps of unreferenced bytes then leave recent ones alone,
since another process may be between installing them and committing its row.

The temporary files a write is assembled in stay on local disk in every case
(`ObjectStore.write_temp`): they are per-process and never shared.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from overair.core.errors import UnavailableError

logger = logging.getLogger("overair.objects")

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
READ_BLOCK = 1 << 20


@dataclass(frozen=True, slots=True)
class BlobEntry:
    name: str
    modified: float  # epoch seconds


class BlobReader(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


class BlobStore(Protocol):
    """Bytes under names (see the module docstring for the contract)."""

    shared: bool
    description: str  # for logs and errors: "local directory /x", "S3 bucket b at https://..."

    def check(self) -> None:
        """Raise UnavailableError if the store cannot be used (said once at start)."""
        ...

    def install(self, tmp: Path, name: str) -> None:
        """Make the bytes of `tmp` durable under `name` (replacing what was there). `tmp`
        may be consumed; the caller removes it if it still exists."""
        ...

    def exists(self, name: str) -> bool: ...

    def size(self, name: str) -> int | None:
        """The stored size, None when nothing is stored under the name."""
        ...

    def open(self, name: str, start: int = 0, end: int | None = None) -> BlobReader | None:
        """A reader of bytes [start, end) (end None: to the end), None when missing."""
        ...

    def delete(self, name: str) -> None:
        """Remove the name; a missing name is fine, a failure is logged (the bytes are
        unreferenced by then: at worst they stay until swept)."""
        ...

    def delete_prefix(self, prefix: str) -> None: ...

    def list(self, prefix: str) -> Iterator[BlobEntry]:
        """Every name under `prefix` (which ends with `/`)."""
        ...


@contextlib.contextmanager
def disk_writes(what: str) -> Iterator[None]:
    """A full disk inside the block is an UnavailableError that says so (503 at the API)."""
    try:
        yield
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            logger.error("no space left on device while %s", what)
            raise UnavailableError(f"no space left on device while {what}",
                                   code="NoSpaceLeftOnDevice") from exc
        raise


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _FileRange:
    """A file read from `start` for at most `length` bytes (None: to its end)."""

    def __init__(self, path: Path, start: int, length: int | None) -> None:
        self._fh = path.open("rb")
        self._fh.seek(start)
        self._left = length

    def read(self, size: int = -1, /) -> bytes:
        if self._left is not None:
            size = self._left if size < 0 else min(size, self._left)
        data = self._fh.read(size)
        if self._left is not None:
            self._left -= len(data)
        return data

    def close(self) -> None:
        self._fh.close()


class LocalBlobs:
    """Bytes in files under one directory of this machine (the default; one process)."""

    shared = False

    def __init__(self, root: Path) -> None:
        self._root = Path(root)
        self._root.mkdir(parents=True, exist_ok=True)
        self.description = f"local directory {self._root}"

    def path(self, name: str) -> Path:
        return self._root / name

    def check(self) -> None:
        self._root.mkdir(parents=True, exist_ok=True)

    def install(self, tmp: Path, name: str) -> None:
        final = self.path(name)
        with disk_writes("writing the object"):
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
            fsync_dir(final.parent)

    def exists(self, name: str) -> bool:
        return self.path(name).exists()

    def size(self, name: str) -> int | None:
        try:
            return self.path(name).stat().st_size
        except OSError:
            return None

    def open(self, name: str, start: int = 0, end: int | None = None) -> BlobReader | None:
        try:
            return _FileRange(self.path(name), start, None if end is None else max(0, end - start))
        except FileNotFoundError:
            return None

    def delete(self, name: str) -> None:
        try:
            self.path(name).unlink()
        except FileNotFoundError:
            pass
        except OSError:
            logger.warning("could not remove %s", self.path(name), exc_info=True)

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self.path(prefix), ignore_errors=True)

    def list(self, prefix: str) -> Iterator[BlobEntry]:
        base = self.path(prefix)
        if not base.is_dir():
            return
        for dirpath, _dirs, files in os.walk(base):
            for file in files:
                full = Path(dirpath) / file
                with contextlib.suppress(OSError):
                    yield BlobEntry(full.relative_to(self._root).as_posix(), full.stat().st_mtime)
