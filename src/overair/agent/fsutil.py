"""Atomic persistence for the agent (architecture principle 12; threat R2).

Every file whose content matters across a power cut is replaced, never edited in place:
write a temporary file in the same directory, fsync it, rename it over the old one, then
fsync the directory so that the rename itself is durable. A reader therefore sees either
the old content or the new content, never a torn mix.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from overair.core.errors import MisuseError


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically and durably."""
    tmp = _temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def atomic_symlink(link: Path, target: str) -> None:
    """Point `link` at `target` with one rename: there is no moment without a link."""
    tmp = _temp_name(link)
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(link.parent)


LOCK_FILE = "agent.lock"


class DataDirLock:
    """One agent at a time on a device's storage: `overair-agent run` and
    `overair-agent install BUNDLE` (or two runs) would otherwise both write the journal,
    the slots and the staged image. An advisory lock (flock) on a file in the data
    directory, held while the agent runs; the kernel drops it if the process dies, so a
    power cut or a crash never leaves it held."""

    def __init__(self, data_dir: Path) -> None:
        self._path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise MisuseError(f"another overair agent is using {self._path.parent} (stop it first: "
                              "`overair-agent install` and `run` share the device's storage)",
                              code="AgentAlreadyRunning") from None
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing drops the lock
