"""A/B application slots on a Linux file system.

Layout under the agent's data directory:

```
slots/a/image.bin      a complete overair image (core.image format)
slots/a/meta.json      version, size, security counter and SHA-256 of image.bin (informational)
slots/b/...            the other slot; a download is staged in image.bin.part there,
                       with progress.json (binding and bitmap) when it is resumable
factory/image.bin      a copy of the factory image, for factory_reset()
boot.json              {"confirmed": "a", "pending": "b" | null, "boot_count": n,
                        "security_counter": c}
current -> slots/a     what a launcher runs; switched by one atomic symlink rename
```

`boot.json` is the truth for boot selection and is replaced atomically (temp, fsync,
rename); `current` follows it and is repaired at every boot, so a power cut between the
two writes is harmless (R2). A pending image gets `max_boot_attempts` boots to be
committed; after that the confirmed image boots again (R1: a flawed image that hangs
before its self-test cannot keep the device down). The confirmed slot is never written
while it is the fallback: downloads go to the other slot, and none is allowed while a
trial image runs. The security counter (N1) is raised by the write of `boot.json`
that commits an image, so it cannot fall behind a committed image.

With a key (`[storage] device_secret_file`), every image file (staged, in a slot, the
factory copy) is sealed with AES-GCM (platform/at_rest.py): the directory holds no
plaintext image (P1) and does not decrypt on another machine (P3). The application is
started by `[app] command`, never by executing the image, so the active slot stays
encrypted too; a deployment whose application must exec the image file runs without
a device secret.

A resumable download saves its bitmap in `progress.json` only after fsyncing the
partial file, so it never claims a block that is not on disk; sealed records that do
not authenticate at boot are asked for again.
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
from overair.agent.journal import FileJournalStore, JournalStore
from overair.agent.platform.at_rest import DEFAULT_RECORD_SIZE, RecordFile, read_whole, write_whole
from overair.agent.platform.base import BootInfo, PlatformError, SlotInfo
from overair.agent.progress import StagedProgress, mark_needed, well_formed
from overair.core.errors import DecodeError
from overair.core.image import HEADER_SIZE, ImageHeader, parse_header
from overair.core.versions import Version

SLOT_NAMES = ("a", "b")
IMAGE = "image.bin"
PART = "image.bin.part"
PROGRESS = "progress.json"
META = "meta.json"
BOOT_STATE = "boot.json"
CURRENT = "current"
FACTORY_DIR = "factory"


@dataclass(frozen=True, slots=True)
class _BootState:
    confirmed: str
    pending: str | None
    boot_count: int
    security_counter: int = 0

    def to_json(self) -> bytes:
        return json.dumps({"format": 1, "confirmed": self.confirmed, "pending": self.pending,
                           "boot_count": self.boot_count, "security_counter": self.security_counter},
                          sort_keys=True).encode()


def _other(slot: str) -> str:
    return SLOT_NAMES[1] if slot == SLOT_NAMES[0] else SLOT_NAMES[0]


class LinuxSlots:
    """The `Platform` of a Linux device: two slot directories and a boot-state file."""

    def __init__(self, root: Path, *, max_boot_attempts: int = 3, key: bytes | None = None) -> None:
        if max_boot_attempts < 1:
            raise ValueError("max_boot_attempts must be at least 1")
        self.root = Path(root)
        self.max_boot_attempts = max_boot_attempts
        self.key = key  # at-rest key (platform/at_rest.py); None: plain files
        self._running: str | None = None
        self._staging_slot: str | None = None
        self._staging_file: RecordFile | None = None
        self._staging_binding: tuple[bytes, int] | None = None

    # --- paths and state -------------------------------------------------------------

    def _slot_dir(self, slot: str) -> Path:
        return self.root / "slots" / slot

    def _load_state(self) -> _BootState:
        path = self.root / BOOT_STATE
        try:
            obj = json.loads(path.read_bytes())
            state = _BootState(str(obj["confirmed"]), obj.get("pending"), int(obj.get("boot_count", 0)),
                               int(obj.get("security_counter", 0)))
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

    def _header(self, slot: str) -> ImageHeader:
        path = self._slot_dir(slot) / IMAGE
        data = read_whole(path, self.key)
        try:
            return parse_header(data)
        except DecodeError as exc:
            raise PlatformError(f"slot {slot}: not a valid image: {exc.message}") from exc

    def _image_version(self, slot: str) -> Version:
        return self._header(slot).version

    def _write_meta(self, slot: str, image: bytes, header: ImageHeader) -> None:
        meta = {"version": str(header.version), "size": len(image),
                "security_counter": header.security_counter, "sha256": hashlib.sha256(image).hexdigest(),
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
        header = _parse(image, "factory image")
        slot = SLOT_NAMES[0]
        for name in SLOT_NAMES:
            self._slot_dir(name).mkdir(parents=True, exist_ok=True)
        (self.root / FACTORY_DIR).mkdir(parents=True, exist_ok=True)
        write_whole(self.root / FACTORY_DIR / IMAGE, self.key, image)
        write_whole(self._slot_dir(slot) / IMAGE, self.key, image)
        self._write_meta(slot, image, header)
        self._point_current(slot)
        self._save_state(_BootState(confirmed=slot, pending=None, boot_count=0))

    def boot(self) -> BootInfo:
        self.close_staging()
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

    def running_image(self) -> bytes:
        """The image the device runs (read only): the source of a delta update."""
        path = self._slot_dir(self._running_slot()) / IMAGE
        try:
            return read_whole(path, self.key)
        except OSError as exc:
            raise PlatformError(f"cannot read the running image: {exc}") from exc

    def _staging_target(self) -> str:
        state = self._load_state()
        running = self._running_slot()
        if state.pending is not None and running == state.pending:
            raise PlatformError("a trial image is running: commit or roll it back before staging another")
        return _other(state.confirmed)

    def create_staging(self, size: int, binding: bytes = b"", block_size: int = 0) -> None:
        slot = self._staging_target()
        self.abort_staging()
        self._discard_staged(slot)
        directory = self._slot_dir(slot)
        directory.mkdir(parents=True, exist_ok=True)
        record = block_size if block_size > 0 else DEFAULT_RECORD_SIZE
        self._staging_file = RecordFile.create(directory / PART, self.key, size, record)
        self._staging_slot = slot
        self._staging_binding = (binding, block_size) if binding and block_size > 0 else None

    def write_block(self, offset: int, data: bytes) -> None:
        staged = self._staging_file
        if staged is None:
            raise PlatformError("no staging file is open")
        staged.write(offset, data)

    def read_staging(self) -> bytes:
        staged = self._staging_file
        if staged is None:
            raise PlatformError("nothing is staged")
        try:
            staged.sync()
        except OSError as exc:
            raise PlatformError(f"cannot flush the staging file: {exc}") from exc
        return staged.read_all()

    # --- resumable downloads (R2) ----------------------------------------------------------

    def _kept(self) -> tuple[StagedProgress, str] | None:
        state = self._load_state()
        slot = _other(state.confirmed)
        if state.pending == slot:
            return None
        directory = self._slot_dir(slot)
        try:
            obj = json.loads((directory / PROGRESS).read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise PlatformError(f"unreadable download progress: {exc}") from exc
        try:
            progress = StagedProgress(bytes.fromhex(obj["binding"]), int(obj["size"]), int(obj["block_size"]),
                                      bytes.fromhex(obj["needed"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise PlatformError(f"unreadable download progress: {exc}") from exc
        if not well_formed(progress) or not (directory / PART).exists():
            return None
        return progress, slot

    def staged_progress(self) -> StagedProgress | None:
        kept = self._kept()
        if kept is None:
            return None
        progress, slot = kept
        staged = RecordFile.open(self._slot_dir(slot) / PART, self.key)
        try:
            if staged.size != progress.size:
                return None
            readable = staged.readable()
            record = staged.record_size
        finally:
            staged.close()
        lost: set[int] = set()
        for index, ok in enumerate(readable):
            if not ok:
                first = index * record // progress.block_size
                last = min((index + 1) * record, progress.size) - 1
                lost.update(range(first, last // progress.block_size + 1))
        return replace(progress, needed=mark_needed(progress.needed, lost))

    def resume_staging(self, progress: StagedProgress) -> None:
        slot = self._staging_target()
        kept = self._kept()
        if kept is None or kept[0].binding != progress.binding or kept[1] != slot:
            raise PlatformError("the kept partial download is gone")
        self.close_staging()
        staged = RecordFile.open(self._slot_dir(slot) / PART, self.key)
        if staged.size != progress.size:
            staged.close()
            raise PlatformError("the kept partial file does not have the size of its download")
        self._staging_file, self._staging_slot = staged, slot
        self._staging_binding = (progress.binding, progress.block_size)

    def save_progress(self, needed: bytes) -> None:
        staged, slot, bound = self._staging_file, self._staging_slot, self._staging_binding
        if staged is None or slot is None or bound is None:
            raise PlatformError("no resumable staging file is open")
        try:
            staged.sync()  # the blocks the bitmap claims are on disk before it says so
        except OSError as exc:
            raise PlatformError(f"cannot flush the staging file: {exc}") from exc
        atomic_write(self._slot_dir(slot) / PROGRESS, json.dumps({
            "binding": bound[0].hex(), "size": staged.size, "block_size": bound[1],
            "needed": needed.hex()}, sort_keys=True).encode())

    def close_staging(self) -> None:
        staged, self._staging_file = self._staging_file, None
        self._staging_slot = None
        self._staging_binding = None
        if staged is not None:
            staged.close()

    def _discard_staged(self, slot: str) -> None:
        for name in (PROGRESS, PART):  # the bitmap first: it must never outlive its file
            with contextlib.suppress(FileNotFoundError):
                (self._slot_dir(slot) / name).unlink()

    def abort_staging(self) -> None:
        slot = self._staging_slot
        self.close_staging()
        if slot is not None:
            self._discard_staged(slot)

    # --- activation --------------------------------------------------------------------------

    def activate(self) -> None:
        slot, staged = self._staging_slot, self._staging_file
        if slot is None or staged is None:
            raise PlatformError("nothing is staged")
        directory = self._slot_dir(slot)
        image = self.read_staging()
        header = _parse(image, "staged file")
        self.close_staging()
        with contextlib.suppress(FileNotFoundError):
            (directory / PROGRESS).unlink()
        try:
            os.replace(directory / PART, directory / IMAGE)
            fsync_dir(directory)
        except OSError as exc:
            raise PlatformError(f"cannot activate slot {slot}: {exc}") from exc
        self._write_meta(slot, image, header)
        state = self._load_state()
        self._save_state(replace(state, pending=slot, boot_count=0))
        self._point_current(slot)

    def commit(self) -> None:
        state = self._load_state()
        running = self._running_slot()
        if state.pending != running:
            raise PlatformError(f"slot {running} is not a pending image")
        counter = max(state.security_counter, self._header(running).security_counter)
        self._save_state(_BootState(confirmed=running, pending=None, boot_count=0, security_counter=counter))

    def rollback(self) -> None:
        state = self._load_state()
        self._save_state(replace(state, pending=None, boot_count=0))
        self._point_current(state.confirmed)

    def security_counter(self) -> int:
        return self._load_state().security_counter

    def factory_reset(self, image: bytes | None = None) -> None:
        """The factory copy (or `image` when the store keeps none) goes to the slot that is
        not confirmed, then one write of boot.json confirms it (R2: a cut leaves the old
        confirmed image or the factory image)."""
        kept = self.root / FACTORY_DIR / IMAGE
        data = read_whole(kept, self.key) if kept.exists() else image
        if data is None:
            raise PlatformError("no factory image: the store keeps none and none was given")
        header = _parse(data, "factory image")
        self.abort_staging()
        state = self._load_state()
        slot = _other(state.confirmed)
        self._discard_staged(slot)
        if state.pending is not None:
            state = replace(state, pending=None, boot_count=0)
            self._save_state(state)
        self._slot_dir(slot).mkdir(parents=True, exist_ok=True)
        write_whole(self._slot_dir(slot) / IMAGE, self.key, data)
        self._write_meta(slot, data, header)
        self._save_state(replace(state, confirmed=slot, pending=None, boot_count=0))
        self._point_current(slot)
        self._running = None

    def journal_store(self, data_dir: Path) -> JournalStore:
        return FileJournalStore(data_dir)

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
            present = (self._slot_dir(name) / IMAGE).exists()
            meta = self._read_meta(name) if present else None
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
            counter = meta.get("security_counter", 0) if meta is not None else None
            infos.append(SlotInfo(name=name, version=version, size=size if isinstance(size, int) else 0,
                                  state=kind, current=name == current,
                                  valid=self._image_valid(name) if present else None,
                                  security_counter=counter if isinstance(counter, int) else None))
        factory = self.root / FACTORY_DIR / IMAGE
        if factory.exists():
            try:
                header: ImageHeader | None = parse_header(read_whole(factory, self.key))
            except (PlatformError, DecodeError):
                header = None
            size = 0 if header is None else header.payload_length + HEADER_SIZE
            infos.append(SlotInfo(name="factory", version=None if header is None else header.version,
                                  size=size, state="factory",
                                  current=False, valid=header is not None,
                                  security_counter=None if header is None else header.security_counter))
        return infos


def _parse(image: bytes, what: str) -> ImageHeader:
    try:
        return parse_header(image)
    except DecodeError as exc:
        raise PlatformError(f"{what} is not a valid image: {exc.message}") from exc
