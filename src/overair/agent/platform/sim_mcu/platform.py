"""`SimMcu`: the `Platform` of a simulated microcontroller with secure boot (P1, P2, P3, R1, R2).

Storage is the encrypted file system of `efs.py` on the simulated flash of `flash.py`:

```
boot      failsafe  the boot state: confirmed slot, pending slot, boot attempts, the
                    security counter (N1), and each image's metadata (generation,
                    size, version, security counter, SHA-256, signature and signer
                    chain, whether it ran well)
secrets   failsafe  device secrets (write_secret/read_secret)
progress  failsafe  a resumable download: its binding, generation, size, block size
                    and the bitmap of the blocks still needed (agent/progress.py)
journal   failsafe  the agent's journal (agent/journal.py), so that its writes are
                    flash writes the power-cut suite cuts like any other
slot-a    bulk      image slot a
slot-b    bulk      image slot b
factory   bulk      the factory image, written once by install_factory
```

Every change of boot selection (activate, commit, rollback, a boot attempt, a
fallback, a factory reset) is one write of the `boot` file, which is one power-safe
record switch. The security counter is raised by the same write that commits an
image, so no power cut can leave it lower than an image that was committed.

A download is resumable (R2): `save_progress` keeps the bitmap in `progress`; the
chunks it claims were programmed before (a chunk is durable once programmed). At boot
`staged_progress` re-reads every chunk of the partial file and marks the blocks of any
chunk that does not authenticate (a rewrite cut short) as needed again.

Factory reset on request writes the factory image into the slot that is not
confirmed (forgotten first), then switches to it with one boot-state write: a cut at
any point leaves the old confirmed image or the factory image, never neither. The
recovery at boot (no valid slot) rewrites the broken confirmed slot from the factory
image, which is never written after provisioning: a cut there just repeats it.
Semantics follow `LinuxSlots`: a download is staged in the slot that is not
confirmed (so the confirmed image is never written while it is the fallback); a
pending image gets `max_boot_attempts` boots to be committed.

Secure boot: `boot()` reads the image it is about to select back from flash (every
chunk must authenticate) and hands it, with its metadata, to the verifier given at
construction. A pending image that fails is abandoned; a confirmed image that fails
is replaced by the other slot if that holds an image that ran well (committed or
factory), else the factory image is copied back into the slot (recovery). Only when
the factory image fails too does `boot()` raise.

Signatures: the runtime (after verifying an image) calls
`set_staging_signature(signature, signer_chain)` after `read_staging()` and before
`activate()` (give `factory_signature=` to `install_factory_signed`) to have them
stored with the image; a verifier made with `signature_verifier(trust,
require_signature=True)` then checks the signature chain at every boot. Without it,
images carry no signature and `signature_verifier(..., require_signature=False)`
checks what the platform has: the header and the SHA-256 recorded at activation (and
the file system authenticates every chunk).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from overair.agent.journal import JournalStore, RecordJournalStore
from overair.agent.platform.base import BootInfo, PlatformError, SlotInfo
from overair.agent.platform.sim_mcu.efs import Efs, EfsFile
from overair.agent.platform.sim_mcu.flash import Flash
from overair.agent.progress import StagedProgress, mark_needed, well_formed
from overair.agent.trust import installed_signature_holds
from overair.core.codesign import TrustPolicy
from overair.core.errors import DecodeError
from overair.core.image import parse_header
from overair.core.versions import Version

SLOT_NAMES = ("a", "b")
FACTORY = "factory"
BOOT_FILE = "boot"
SECRETS_FILE = "secrets"
PROGRESS_FILE = "progress"
BOOT_FILE_SECTORS = 2
SECRETS_FILE_SECTORS = 1
PROGRESS_FILE_SECTORS = 1
JOURNAL_FILE = "journal"
JOURNAL_FILE_SECTORS = 2  # compressed: 64 finished jobs with long reasons fit
GENERATION_BYTES = 16


@dataclass(frozen=True, slots=True)
class ImageMeta:
    """What the platform knows about an installed image; given to the verifier."""

    slot: str
    version: Version
    size: int
    sha256: bytes
    signature: bytes | None = None
    signer_chain: tuple[bytes, ...] = ()  # DER, signer first


Verifier = Callable[[bytes, ImageMeta], bool]


def integrity_verifier(data: bytes, meta: ImageMeta) -> bool:
    """Header valid and matching, size and SHA-256 as recorded at installation."""
    try:
        header = parse_header(data)
    except DecodeError:
        return False
    return (header.version == meta.version and len(data) == meta.size
            and hashlib.sha256(data).digest() == meta.sha256)


def signature_verifier(trust: TrustPolicy, *, require_signature: bool = True) -> Verifier:
    """Secure boot: integrity, then the signature over the whole image by a signer that
    chains to one of `trust`'s code-signing roots and is not revoked, under the rules of
    agent/trust.py (the signer's validity period is not compared with today's clock)."""

    def verify(data: bytes, meta: ImageMeta) -> bool:
        if not integrity_verifier(data, meta):
            return False
        if meta.signature is None:
            return not require_signature
        return installed_signature_holds(trust, meta.sha256, meta.signature, meta.signer_chain)

    return verify


@dataclass(frozen=True, slots=True)
class _Image:
    generation: bytes
    size: int
    version: Version
    sha256: bytes
    signature: bytes | None = None
    chain: tuple[bytes, ...] = ()
    good: bool = False  # ran well: factory, committed, or confirmed before
    security_counter: int = 0

    def to_json(self) -> dict[str, Any]:
        def b64(raw: bytes) -> str:
            return base64.b64encode(raw).decode()
        return {"generation": self.generation.hex(), "size": self.size, "version": str(self.version),
                "sha256": self.sha256.hex(),
                "signature": None if self.signature is None else b64(self.signature),
                "chain": [b64(c) for c in self.chain], "good": self.good,
                "security_counter": self.security_counter}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> _Image:
        sig = obj.get("signature")
        return cls(bytes.fromhex(obj["generation"]), int(obj["size"]), Version.parse(str(obj["version"])),
                   bytes.fromhex(obj["sha256"]), None if sig is None else base64.b64decode(sig),
                   tuple(base64.b64decode(c) for c in obj.get("chain", [])), bool(obj.get("good", False)),
                   int(obj.get("security_counter", 0)))

    def meta(self, slot: str) -> ImageMeta:
        return ImageMeta(slot, self.version, self.size, self.sha256, self.signature, self.chain)


@dataclass(frozen=True, slots=True)
class _BootState:
    confirmed: str
    pending: str | None
    boot_count: int
    images: dict[str, _Image | None] = field(default_factory=dict)  # slot name -> image
    security_counter: int = 0  # highest of any committed image; never goes down (N1)

    def to_bytes(self) -> bytes:
        return json.dumps({"format": 1, "confirmed": self.confirmed, "pending": self.pending,
                           "boot_count": self.boot_count, "security_counter": self.security_counter,
                           "images": {k: None if v is None else v.to_json() for k, v in self.images.items()}},
                          sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> _BootState:
        obj = json.loads(raw)
        images = {str(k): None if v is None else _Image.from_json(v) for k, v in obj["images"].items()}
        return cls(str(obj["confirmed"]), obj.get("pending"), int(obj["boot_count"]), images,
                   int(obj.get("security_counter", 0)))

    def with_image(self, slot: str, image: _Image | None) -> _BootState:
        return replace(self, images={**self.images, slot: image})


def _other(slot: str) -> str:
    return SLOT_NAMES[1] if slot == SLOT_NAMES[0] else SLOT_NAMES[0]


def _file(slot: str) -> str:
    return FACTORY if slot == FACTORY else f"slot-{slot}"


def layout(slot_sectors: int) -> list[EfsFile]:
    return [EfsFile(BOOT_FILE, "failsafe", BOOT_FILE_SECTORS),
            EfsFile(SECRETS_FILE, "failsafe", SECRETS_FILE_SECTORS),
            EfsFile(PROGRESS_FILE, "failsafe", PROGRESS_FILE_SECTORS),
            EfsFile(JOURNAL_FILE, "failsafe", JOURNAL_FILE_SECTORS),
            *(EfsFile(_file(s), "bulk", slot_sectors) for s in (*SLOT_NAMES, FACTORY))]


class SimMcu:
    """The `Platform` of a simulated MCU: encrypted flash, A/B + factory, secure boot."""

    def __init__(self, flash: Flash, *, device_secret: bytes, unique_id: bytes,
                 verifier: Verifier | None = None, max_boot_attempts: int = 3,
                 slot_sectors: int | None = None) -> None:
        if max_boot_attempts < 1:
            raise ValueError("max_boot_attempts must be at least 1")
        fixed = Efs.sectors_needed(layout(1)) - 3
        if slot_sectors is None:
            slot_sectors = (flash.sectors - fixed) // 3
        if slot_sectors < 1:
            raise PlatformError(f"a flash of {flash.sectors} sectors has no room for three image slots")
        self.flash = flash
        self.efs = Efs(flash, device_secret=device_secret, unique_id=unique_id, layout=layout(slot_sectors))
        self.verifier: Verifier = verifier or integrity_verifier
        self.max_boot_attempts = max_boot_attempts
        self.capacity = slot_sectors * self.efs.chunk_capacity
        self._running: str | None = None
        self._running_version: Version | None = None
        self._staging: tuple[str, bytes, int] | None = None  # slot, generation, size
        self._staging_signature: tuple[bytes, tuple[bytes, ...]] | None = None
        self._staging_binding: tuple[bytes, int] | None = None  # binding, block size: resumable

    @classmethod
    def open(cls, path: Path, *, device_secret: bytes, unique_id: bytes, image_capacity: int = 256 * 1024,
             sector_size: int = 4096, cut_after_writes: int | None = None, verifier: Verifier | None = None,
             max_boot_attempts: int = 3) -> SimMcu:
        """A device on the flash file `path` (created erased if missing), sized for images
        of up to `image_capacity` bytes."""
        chunk = sector_size - 36
        slot_sectors = math.ceil(image_capacity / chunk)
        flash = Flash(path, sectors=Efs.sectors_needed(layout(slot_sectors)), sector_size=sector_size,
                      cut_after_writes=cut_after_writes)
        return cls(flash, device_secret=device_secret, unique_id=unique_id, verifier=verifier,
                   max_boot_attempts=max_boot_attempts, slot_sectors=slot_sectors)

    # --- state ---------------------------------------------------------------------------------

    def _load(self) -> _BootState:
        if not self.efs.mount():
            raise PlatformError("the flash is blank (no image installed)")
        raw = self.efs.read(BOOT_FILE)
        if raw is None:
            raise PlatformError("no boot state that authenticates (no image installed)")
        try:
            state = _BootState.from_bytes(raw)
        except (ValueError, KeyError, TypeError, AttributeError, DecodeError) as exc:
            raise PlatformError(f"unreadable boot state: {exc}") from exc
        if state.confirmed not in SLOT_NAMES or state.pending not in (*SLOT_NAMES, None) \
                or state.pending == state.confirmed:
            raise PlatformError(f"inconsistent boot state {state.confirmed}/{state.pending}")
        return state

    def _save(self, state: _BootState) -> None:
        self.efs.write(BOOT_FILE, state.to_bytes())

    def _write_image(self, slot: str, image: bytes, *, good: bool, signature: bytes | None = None,
                     chain: tuple[bytes, ...] = ()) -> _Image:
        if len(image) > self.capacity:
            raise PlatformError(f"an image of {len(image)} bytes does not fit a slot of {self.capacity}")
        try:
            header = parse_header(image)
        except DecodeError as exc:
            raise PlatformError(f"not a valid image: {exc.message}") from exc
        generation = os.urandom(GENERATION_BYTES)
        cap = self.efs.chunk_capacity
        for index in range(math.ceil(len(image) / cap)):
            self.efs.write_chunk(_file(slot), generation, index, image[index * cap:(index + 1) * cap])
        return _Image(generation, len(image), header.version, hashlib.sha256(image).digest(), signature,
                      chain, good, header.security_counter)

    def _read_image(self, slot: str, image: _Image) -> bytes | None:
        cap = self.efs.chunk_capacity
        parts = []
        for index in range(math.ceil(image.size / cap)):
            chunk = self.efs.read_chunk(_file(slot), image.generation, index)
            if chunk is None or len(chunk) != min(cap, image.size - index * cap):
                return None
            parts.append(chunk)
        return b"".join(parts)

    def _verified(self, slot: str, image: _Image | None) -> bool:
        """Secure boot check of an installed image, read back from flash."""
        if image is None:
            return False
        data = self._read_image(slot, image)
        if data is None:
            return False
        try:
            return bool(self.verifier(data, image.meta(slot)))
        except Exception:  # a verifier that breaks refuses
            return False

    # --- secrets (P1) ----------------------------------------------------------------------------

    def write_secret(self, data: bytes) -> None:
        """Store device secrets (e.g. the TLS private key) encrypted at rest."""
        if not self.efs.mount():
            self.efs.format()
        self.efs.write(SECRETS_FILE, data)

    def read_secret(self) -> bytes | None:
        if not self.efs.mount():
            return None
        return self.efs.read(SECRETS_FILE)

    # --- Platform protocol -------------------------------------------------------------------------

    def is_empty(self) -> bool:
        """True on a blank flash or before the first boot state was written; raises
        EfsAuthError on a flash formatted by another device (P3)."""
        return not self.efs.mount() or self.efs.read(BOOT_FILE) is None

    def install_factory(self, image: bytes) -> None:
        self.install_factory_signed(image)

    def install_factory_signed(self, image: bytes, signature: bytes | None = None,
                               signer_chain: Sequence[bytes] = ()) -> None:
        """install_factory, with the factory image's signature kept for secure boot."""
        if not self.is_empty():
            raise PlatformError("the slot store already holds an image")
        if not self.efs.mount():
            self.efs.format()
        chain = tuple(signer_chain)
        factory = self._write_image(FACTORY, image, good=True, signature=signature, chain=chain)
        slot = SLOT_NAMES[0]
        first = self._write_image(slot, image, good=True, signature=signature, chain=chain)
        self._save(_BootState(slot, None, 0, {FACTORY: factory, slot: first, _other(slot): None}))

    def boot(self) -> BootInfo:
        self._staging = None
        self._staging_signature = None
        self._staging_binding = None
        self._running = None
        state = self._load()
        fell_back = changed = False
        pending = state.pending
        if pending is not None:
            image = state.images.get(pending)
            if state.boot_count < self.max_boot_attempts and self._verified(pending, image):
                assert image is not None
                state = replace(state, boot_count=state.boot_count + 1)
                self._save(state)
                self._running, self._running_version = pending, image.version
                return BootInfo(slot=pending, version=image.version, trial=True, boot_count=state.boot_count)
            state = replace(state, pending=None, boot_count=0)
            fell_back = changed = True
        target = state.confirmed
        if not self._verified(target, state.images.get(target)):
            fell_back = changed = True
            other = _other(target)
            candidate = state.images.get(other)
            usable = candidate is not None and candidate.good and other != pending
            if usable and self._verified(other, candidate):
                state = replace(state, confirmed=other)
                target = other
            else:
                state = self._recover_factory(state, target)
        if changed:
            self._save(state)
        image = state.images[target]
        assert image is not None
        self._running, self._running_version = target, image.version
        return BootInfo(slot=target, version=image.version, trial=False, fell_back=fell_back)

    def _recover_factory(self, state: _BootState, slot: str) -> _BootState:
        factory = state.images.get(FACTORY)
        data = self._read_image(FACTORY, factory) if factory is not None else None
        if factory is None or data is None or not self._verified(FACTORY, factory):
            raise PlatformError("no bootable image: both slots and the factory image fail secure boot")
        image = self._write_image(slot, data, good=True, signature=factory.signature, chain=factory.chain)
        return replace(state.with_image(slot, image), confirmed=slot, pending=None, boot_count=0)

    def _running_slot(self) -> str:
        if self._running is None:
            raise PlatformError("boot() has not run")
        return self._running

    def running_version(self) -> Version:
        self._running_slot()
        assert self._running_version is not None
        return self._running_version

    def running_image(self) -> bytes:
        """The image the device runs, read back from flash (the source of a delta update;
        only read, never written)."""
        slot = self._running_slot()
        image = self._load().images.get(slot)
        data = None if image is None else self._read_image(slot, image)
        if data is None:
            raise PlatformError(f"slot {slot}: the running image cannot be read")
        return data

    def create_staging(self, size: int, binding: bytes = b"", block_size: int = 0) -> None:
        state = self._load()
        running = self._running_slot()
        if state.pending is not None and running == state.pending:
            raise PlatformError("a trial image is running: commit or roll it back before staging another")
        if size < 0 or size > self.capacity:
            raise PlatformError(f"an image of {size} bytes does not fit a slot of {self.capacity}")
        slot = _other(state.confirmed)
        self.abort_staging()
        if state.images.get(slot) is not None or state.pending == slot:
            # The slot's old image is overwritten from now on: forget it first.
            self._save(replace(state.with_image(slot, None), pending=None, boot_count=0))
        self._staging = (slot, os.urandom(GENERATION_BYTES), size)
        self._staging_binding = (binding, block_size) if binding and block_size > 0 else None

    # --- resumable downloads (R2) -----------------------------------------------------------------

    def _kept(self) -> tuple[StagedProgress, str, bytes] | None:
        """The saved progress (as saved), its slot and generation, if it still fits the
        boot state: its slot is the one downloads go to, and holds no image."""
        raw = self.efs.read(PROGRESS_FILE)
        if not raw:
            return None
        try:
            obj = json.loads(raw)
            progress = StagedProgress(bytes.fromhex(obj["binding"]), int(obj["size"]), int(obj["block_size"]),
                                      bytes.fromhex(obj["needed"]))
            slot, generation = str(obj["slot"]), bytes.fromhex(obj["generation"])
        except (ValueError, KeyError, TypeError) as exc:
            raise PlatformError(f"unreadable download progress: {exc}") from exc
        state = self._load()
        if (not well_formed(progress) or slot != _other(state.confirmed) or state.pending == slot
                or state.images.get(slot) is not None or progress.size > self.capacity):
            return None
        return progress, slot, generation

    def staged_progress(self) -> StagedProgress | None:
        kept = self._kept()
        if kept is None:
            return None
        progress, slot, generation = kept
        cap = self.efs.chunk_capacity
        lost: set[int] = set()
        for index in range(math.ceil(progress.size / cap)):
            chunk = self.efs.read_chunk(_file(slot), generation, index)
            if chunk is None or len(chunk) != self._chunk_length(progress.size, index):
                first = index * cap // progress.block_size
                last = min((index + 1) * cap - 1, progress.size - 1) // progress.block_size
                lost.update(range(first, last + 1))
        return replace(progress, needed=mark_needed(progress.needed, lost))

    def resume_staging(self, progress: StagedProgress) -> None:
        kept = self._kept()
        if kept is None or kept[0].binding != progress.binding:
            raise PlatformError("the kept partial download is gone")
        saved, slot, generation = kept
        running = self._running_slot()
        state = self._load()
        if state.pending is not None and running == state.pending:
            raise PlatformError("a trial image is running: commit or roll it back before staging another")
        self._staging = (slot, generation, saved.size)
        self._staging_signature = None
        self._staging_binding = (saved.binding, saved.block_size)

    def save_progress(self, needed: bytes) -> None:
        staging, bound = self._staging, self._staging_binding
        if staging is None or bound is None:
            raise PlatformError("no resumable staging file is open")
        slot, generation, size = staging
        # Chunks are durable once programmed: nothing to flush before the bitmap.
        self.efs.write(PROGRESS_FILE, json.dumps({
            "binding": bound[0].hex(), "slot": slot, "generation": generation.hex(), "size": size,
            "block_size": bound[1], "needed": needed.hex()}, sort_keys=True).encode())

    def _forget_progress(self) -> None:
        if self.efs.mount() and self.efs.read(PROGRESS_FILE):
            self.efs.write(PROGRESS_FILE, b"")

    def close_staging(self) -> None:
        self._staging = None
        self._staging_signature = None
        self._staging_binding = None

    def _chunk_length(self, size: int, index: int) -> int:
        cap = self.efs.chunk_capacity
        return max(0, min(cap, size - index * cap))

    def write_block(self, offset: int, data: bytes) -> None:
        staging = self._staging
        if staging is None:
            raise PlatformError("no staging file is open")
        slot, generation, size = staging
        if offset < 0 or offset + len(data) > size:
            raise PlatformError(f"write of {len(data)} bytes at {offset} is outside the staging file")
        if not data:
            return
        cap = self.efs.chunk_capacity
        for index in range(offset // cap, (offset + len(data) - 1) // cap + 1):
            start, length = index * cap, self._chunk_length(size, index)
            lo, hi = max(offset, start), min(offset + len(data), start + length)
            if lo == start and hi == start + length:
                chunk = bytearray(data[lo - offset:hi - offset])
            else:
                old = self.efs.read_chunk(_file(slot), generation, index)
                chunk = bytearray(old if old is not None and len(old) == length else bytes(length))
                chunk[lo - start:hi - start] = data[lo - offset:hi - offset]
            self.efs.write_chunk(_file(slot), generation, index, bytes(chunk))

    def read_staging(self) -> bytes:
        staging = self._staging
        if staging is None:
            raise PlatformError("nothing is staged")
        slot, generation, size = staging
        parts = []
        for index in range(math.ceil(size / self.efs.chunk_capacity)):
            length = self._chunk_length(size, index)
            chunk = self.efs.read_chunk(_file(slot), generation, index)
            parts.append(chunk if chunk is not None and len(chunk) == length else bytes(length))
        return b"".join(parts)

    def set_staging_signature(self, signature: bytes, signer_chain: Sequence[bytes]) -> None:
        """Keep the staged image's signature and signer chain (DER) for secure boot;
        call after the image verified and before `activate()`."""
        if self._staging is None:
            raise PlatformError("nothing is staged")
        self._staging_signature = (bytes(signature), tuple(bytes(c) for c in signer_chain))

    def abort_staging(self) -> None:
        # The slot was forgotten at create_staging, and its chunks never authenticate
        # for another generation: only the kept progress has to go.
        self.close_staging()
        self._forget_progress()

    def activate(self) -> None:
        staging = self._staging
        if staging is None:
            raise PlatformError("nothing is staged")
        slot, generation, size = staging
        data = self.read_staging()
        try:
            version = parse_header(data).version
        except DecodeError as exc:
            raise PlatformError(f"staged file is not a valid image: {exc.message}") from exc
        signature, chain = self._staging_signature or (None, ())
        image = _Image(generation, size, version, hashlib.sha256(data).digest(), signature, chain, good=False,
                       security_counter=parse_header(data).security_counter)
        state = self._load()
        self._save(replace(state.with_image(slot, image), pending=slot, boot_count=0))
        # A cut before this write is harmless: progress for a slot that holds an image
        # is never offered again (_kept).
        self.abort_staging()

    def commit(self) -> None:
        state = self._load()
        running = self._running_slot()
        if state.pending != running:
            raise PlatformError(f"slot {running} is not a pending image")
        image = state.images.get(running)
        assert image is not None
        self._save(replace(state.with_image(running, replace(image, good=True)), confirmed=running,
                           pending=None, boot_count=0,
                           security_counter=max(state.security_counter, image.security_counter)))

    def security_counter(self) -> int:
        return self._load().security_counter

    def factory_reset(self, image: bytes | None = None) -> None:
        """Install the factory image kept on flash (`image` is not needed) in the slot that
        is not confirmed and confirm it; the counter and the secrets stay."""
        state = self._load()
        factory = state.images.get(FACTORY)
        data = self._read_image(FACTORY, factory) if factory is not None else None
        if factory is None or data is None or not self._verified(FACTORY, factory):
            raise PlatformError("the factory image fails secure boot: no factory reset possible")
        self.close_staging()
        self._forget_progress()
        slot = _other(state.confirmed)
        if state.images.get(slot) is not None or state.pending is not None:
            state = replace(state.with_image(slot, None), pending=None, boot_count=0)
            self._save(state)
        fresh = self._write_image(slot, data, good=True, signature=factory.signature, chain=factory.chain)
        self._save(replace(state.with_image(slot, fresh), confirmed=slot, pending=None, boot_count=0))
        self._running = None

    def rollback(self) -> None:
        state = self._load()
        if state.pending is None:
            return
        self._save(replace(state, pending=None, boot_count=0))

    def journal_store(self, _data_dir: Path) -> JournalStore:
        return RecordJournalStore(self._read_journal, self._write_journal, self.efs.capacity(JOURNAL_FILE))

    def _read_journal(self) -> bytes | None:
        return self.efs.read(JOURNAL_FILE) if self.efs.mount() else None

    def _write_journal(self, record: bytes) -> None:
        if not self.efs.mount():
            raise PlatformError("the flash is blank: install an image before the agent runs")
        self.efs.write(JOURNAL_FILE, record)

    def slots(self) -> list[SlotInfo]:
        try:
            state: _BootState | None = self._load()
        except PlatformError:
            state = None
        infos = []
        for name in (*SLOT_NAMES, FACTORY):
            image = state.images.get(name) if state is not None else None
            if state is not None and name == state.confirmed:
                kind = "confirmed"
            elif state is not None and name == state.pending:
                kind = "pending"
            else:
                kind = "inactive" if image is not None else "empty"
            current = state is not None and name == (state.pending or state.confirmed)
            infos.append(SlotInfo(name=name, version=None if image is None else image.version,
                                  size=0 if image is None else image.size, state=kind, current=current,
                                  valid=None if image is None else self._verified(name, image),
                                  security_counter=None if image is None else image.security_counter))
        return infos
