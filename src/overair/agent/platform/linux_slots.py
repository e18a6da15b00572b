"""A/B application slots on a Linux file system.

Layout under the agent's data directory:

```
slots/a/image.bin      a complete overair image (core.image format)
slots/a/meta.json      version, size and SHA-256 of image.bin (informational)
slots/b/...            the other slot; a download is staged in image.bin.part there
boot.json              {"confirmed": "a", "pending": "b" | null, "boot_count": n}
current -> slots/a     what a launcher runs; switched by one atomic symlink rename
```

`boot.json` is the truth for boot selection and is replaced atomically (temp, fsync,
rename); `current` follows it and is repaired at every boot, so a power cut between the
two writes is harmless (R2). A pending image gets `max_boot_attempts` boots to be
committed; after that the confirmed image boots again (R1: a flawed image that hangs
before its self-test cannot keep the device down). The confirmed slot is never written
while it is the fallback: downloads go to the other slot, and none is allowed while a
trial image runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from overair.agent.fsutil import atomic_symlink, atomic_write, fsync_dir
from overair.agent.platform.base import BootInfo, PlatformError, SlotInfo
from overair.core.errors import DecodeError
from overair.core.image import parse_header
from overair.core.versions import Version

SLOT_NAMES = ("a", "b")
IMAGE = "image.bin"
PART = "image.bin.part"
META = "meta.json"
BOOT_STATE = "boot.json"
CURRENT = "current"


@dataclass(frozen=True, slots=True)
class _BootState:
    confirmed: str
    pending: str | None
    boot_count: int

    def to_json(self) -> bytes:
        return json.dumps({"format": 1, "confirmed": self.confirmed, "pending": self.pending,
                           "boot_count": self.boot_count}, sort_keys=True).encode()


class LinuxSlots:
    """The `Platform` of a Linux device: two slot directories and a boot-state file."""

    def __init__(self, root: Path, *, max_boot_attempts: int = 3) -> None:
        if max_boot_attempts < 1:
            raise ValueError("max_boot_attempts must be at least 1")
        self.root = Path(root)
        self.max_boot_attempts = max_boot_attempts
        self._running: str | None = None
        self._staging_slot: str | None = None
        self._staging_fd: int | None = None
        self._staging_size = 0

    # --- paths and state -------------------------------------------------------------

    def _slot_dir(self, slot: str) -> Path:
        return self.root / "slots" / slot

    def _load_state(self) -> _BootState:
        path = self.root / BOOT_STATE
        try:
            obj = json.loads(path.read_bytes())
            state = _BootState(str(obj["confirmed"]), obj.get("pending"), int(obj.get("boot_count", 0)))
        except FileNotFoundError as exc:
            raise PlatformError(f"{path}: no boot state (no image installed)") from exc
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise PlatformError(f"{path}: unreadable boot state: {exc}") from exc
        if state.confirmed not in SLOT_NAMES or state.pending not in (*SLOT_NAMES, None) \
                or state.pending == state.confirmed:
            raise PlatformError(f"{path}: inconsistent boot state {state}")
        return state

    def _save_state(self, state: _BootState) -> None:
        atomic_write(self.root / BOOT_STATE, state.to_json())

    def _point_current(self, slot: str) -> None:
        link = self.root / CURRENT
        target = f"slots/{slot}"
        with contextlib.suppress(OSError):
            if os.readlink(link) == target:
                return
        atomic_symlink(link, target)

    def _image_version(self, slot: str) -> Version:
        path = self._slot_dir(slot) / IMAGE
        try:
            return parse_header(path.read_bytes()).version
        except OSError as exc:
            raise PlatformError(f"slot {slot}: cannot read {path}: {exc}") from exc
        except DecodeError as exc:
            raise PlatformError(f"slot {slot}: not a valid image: {exc.message}") from exc

    def _write_meta(self, slot: str, image: bytes, version: Version) -> None:
        meta = {"version": str(version), "size": len(image), "sha256": hashlib.sha256(image).hexdigest(),
                "installed_at": time.time()}
        atomic_write(self._slot_dir(slot) / META, json.dumps(meta, sort_keys=True).encode())

    def _read_meta(self, slot: str) -> dict[str, Any] | None:
        try:
            meta = json.loads((self._slot_dir(slot) / META).read_bytes())
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) else None

    # --- Platform protocol -----------------------------------------------------------

    def is_empty(self) -> bool:
        return not (self.root / BOOT_STATE).exists()

    def install_factory(self, image: bytes) -> None:
        if not self.is_empty():
            raise PlatformError("the slot store already holds an image")
        try:
            version = parse_header(image).version
        except DecodeError as exc:
            raise PlatformError(f"factory image is not a valid image: {exc.message}") from exc
        slot = SLOT_NAMES[0]
        for name in SLOT_NAMES:
            self._slot_dir(name).mkdir(parents=True, exist_ok=True)
        atomic_write(self._slot_dir(slot) / IMAGE, image)
        self._write_meta(slot, image, version)
        self._point_current(slot)
        self._save_state(_BootState(confirmed=slot, pending=None, boot_count=0))

    def boot(self) -> BootInfo:
        self._close_staging_fd()
        state = self._load_state()
        fell_back = False
        target, trial = state.confirmed, False
        pending = state.pending
        if pending is not None:
            if state.boot_count >= self.max_boot_attempts or not self._image_valid(pending):
                state = replace(state, pending=None, boot_count=0)
                fell_back = True
            else:
                state = replace(state, boot_count=state.boot_count + 1)
                target, trial = pending, True
            self._save_state(state)
        version = self._image_version(target)
        self._point_current(target)
        self._running = target
        return BootInfo(slot=target, version=version, trial=trial, fell_back=fell_back,
                        boot_count=state.boot_count)

    def _image_valid(self, slot: str) -> bool:
        try:
            self._image_version(slot)
        except PlatformError:
            return False
        return True

    def _running_slot(self) -> str:
        if self._running is None:
            raise PlatformError("boot() has not run")
        return self._running

    def running_version(self) -> Version:
        return self._image_version(self._running_slot())

    def create_staging(self, size: int) -> None:
        state = self._load_state()
        running = self._running_slot()
        if state.pending is not None and running == state.pending:
            raise PlatformError("a trial image is running: commit or roll it back before staging another")
        slot = next(s for s in SLOT_NAMES if s != state.confirmed)
        self.abort_staging()
        directory = self._slot_dir(slot)
        directory.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(directory / PART, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            os.ftruncate(fd, size)
        except OSError as exc:
            raise PlatformError(f"cannot create the staging file: {exc}") from exc
        self._staging_slot, self._staging_fd, self._staging_size = slot, fd, size

    def write_block(self, offset: int, data: bytes) -> None:
        fd = self._staging_fd
        if fd is None:
            raise PlatformError("no staging file is open")
        if offset < 0 or offset + len(data) > self._staging_size:
            raise PlatformError(f"write of {len(data)} bytes at {offset} is outside the staging file")
        view = memoryview(data)
        try:
            while view:
                written = os.pwrite(fd, view, offset)
                view, offset = view[written:], offset + written
        except OSError as exc:
            raise PlatformError(f"staging write failed: {exc}") from exc

    def read_staging(self) -> bytes:
        slot = self._staging_slot
        if slot is None:
            raise PlatformError("nothing is staged")
        try:
            self._close_staging_fd(sync=True)
            return (self._slot_dir(slot) / PART).read_bytes()
        except OSError as exc:
            raise PlatformError(f"cannot read the staging file: {exc}") from exc

    def _close_staging_fd(self, sync: bool = False) -> None:
        fd, self._staging_fd = self._staging_fd, None
        if fd is not None:
            try:
                if sync:
                    os.fsync(fd)
            finally:
                os.close(fd)

    def abort_staging(self) -> None:
        self._close_staging_fd()
        slot, self._staging_slot = self._staging_slot, None
        if slot is not None:
            with contextlib.suppress(FileNotFoundError):
                (self._slot_dir(slot) / PART).unlink()

    def activate(self) -> None:
        slot = self._staging_slot
        if slot is None:
            raise PlatformError("nothing is staged")
        self._close_staging_fd(sync=True)
        directory = self._slot_dir(slot)
        try:
            image = (directory / PART).read_bytes()
            version = parse_header(image).version
            os.replace(directory / PART, directory / IMAGE)
            fsync_dir(directory)
        except OSError as exc:
            raise PlatformError(f"cannot activate slot {slot}: {exc}") from exc
        except DecodeError as exc:
            raise PlatformError(f"staged file is not a valid image: {exc.message}") from exc
        self._staging_slot = None
        self._write_meta(slot, image, version)
        state = self._load_state()
        self._save_state(replace(state, pending=slot, boot_count=0))
        self._point_current(slot)

    def commit(self) -> None:
        state = self._load_state()
        running = self._running_slot()
        if state.pending != running:
            raise PlatformError(f"slot {running} is not a pending image")
        self._save_state(_BootState(confirmed=running, pending=None, boot_count=0))

    def rollback(self) -> None:
        state = self._load_state()
        self._save_state(replace(state, pending=None, boot_count=0))
        self._point_current(state.confirmed)

    def slots(self) -> list[SlotInfo]:
        try:
            state: _BootState | None = self._load_state()
        except PlatformError:
            state = None
        try:
            current = os.readlink(self.root / CURRENT).rsplit("/", 1)[-1]
        except OSError:
            current = ""
        infos = []
        for name in SLOT_NAMES:
            meta = self._read_meta(name) if (self._slot_dir(name) / IMAGE).exists() else None
            version = None
            if meta is not None:
                with contextlib.suppress(DecodeError, TypeError):
                    version = Version.parse(str(meta.get("version")))
            if state is not None and name == state.confirmed:
                kind = "confirmed"
            elif state is not None and name == state.pending:
                kind = "pending"
            else:
                kind = "inactive" if version is not None else "empty"
            size = meta.get("size", 0) if meta is not None else 0
            infos.append(SlotInfo(name=name, version=version, size=size if isinstance(size, int) else 0,
                                  state=kind, current=name == current))
        return infos
