"""A SimpleLink-style encrypted file system on a simulated flash (threats P1, P3, R2).

Every byte the file system stores is encrypted and authenticated with AES-256-GCM
under one file key derived at mount time from the device secret and the device's
unique 128-bit id (HKDF-SHA256, salt = unique id). The key is never stored: a flash
image copied to another device (another unique id) does not authenticate there (P3),
and the raw flash never holds plaintext (P1).

Files are allocated statically, like SimpleLink files created with a maximum size:
the layout (names, kinds, sizes) is given at construction and the sectors are laid
out in that order, after the superblock. Two kinds of files:

- failsafe files (small: boot state, metadata, secrets): two copies, each in its own
  sectors. A write erases the copy that does not hold the newest record and programs
  a new record there with sequence number newest + 1; a read takes the newest copy
  that authenticates. A power cut during a write leaves the previous record intact,
  so each write is one atomic switch (R2).
  Record: magic `OVRF` | seq u64 | length u32 | nonce 12 | ciphertext+tag;
  associated data: domain | "F" | name | seq | length.
- bulk files (images): one record per sector ("chunk"), bound to the file name, a
  16-byte generation chosen by the writer and the chunk index, so chunks cannot be
  moved between files, positions or generations. A bulk file is not power-safe by
  itself: the writer commits it by recording its generation and digest in a
  failsafe file. Record: magic `OVRC` | length u32 | nonce 12 | ciphertext+tag;
  associated data: domain | "C" | name | generation | index | length.

Nonces are random (96 bits) per record, never derived from counters, so a record
rewritten after a power cut never reuses a nonce. The sequence number in the
associated data stops swapping records between copies or files; it cannot stop an
attacker who writes an old record back into both copies (that needs a hardware
monotonic counter, which this simulator does not have).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from overair.agent.platform.base import PlatformError
from overair.agent.platform.sim_mcu.flash import ERASED, Flash

DOMAIN = b"overair-efs/1\0"
UNIQUE_ID_BYTES = 16
_F_HEAD = struct.Struct(">4sQI12s")
_C_HEAD = struct.Struct(">4sI12s")
_F_MAGIC = b"OVRF"
_C_MAGIC = b"OVRC"
_TAG = 16
SUPERBLOCK = "efs.super"
_SUPER_CONTENT = b"overair encrypted file system, format 1"


class EfsError(PlatformError):
    code = "EfsError"


class EfsAuthError(EfsError):
    """Stored data does not authenticate with this device's key (clone, tampering)."""

    code = "EfsAuthError"


@dataclass(frozen=True, slots=True)
class EfsFile:
    name: str
    kind: str  # "failsafe" | "bulk"
    sectors: int  # failsafe: per copy; bulk: in total (one chunk per sector)

    def __post_init__(self) -> None:
        if self.kind not in ("failsafe", "bulk") or self.sectors < 1:
            raise ValueError(f"bad file spec {self}")


def derive_file_key(device_secret: bytes, unique_id: bytes) -> bytes:
    if len(unique_id) != UNIQUE_ID_BYTES:
        raise ValueError(f"the device unique id must be {UNIQUE_ID_BYTES} bytes, not {len(unique_id)}")
    if len(device_secret) < 16:
        raise ValueError("the device secret must be at least 16 bytes")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=unique_id,
                info=b"overair-efs/1 file encryption key").derive(device_secret)


def _name_ad(name: str) -> bytes:
    raw = name.encode()
    return struct.pack(">H", len(raw)) + raw


@dataclass(frozen=True, slots=True)
class _Copy:
    state: str  # "blank" | "invalid" | "valid"
    seq: int = 0
    data: bytes = b""


class Efs:
    def __init__(self, flash: Flash, *, device_secret: bytes, unique_id: bytes,
                 layout: Sequence[EfsFile]) -> None:
        self.flash = flash
        self._aead = AESGCM(derive_file_key(device_secret, unique_id))
        self._files: dict[str, tuple[EfsFile, int]] = {}  # name -> (spec, first sector)
        sector = 0
        for spec in (EfsFile(SUPERBLOCK, "failsafe", 1), *layout):
            if spec.name in self._files:
                raise ValueError(f"file {spec.name!r} is laid out twice")
            self._files[spec.name] = (spec, sector)
            sector += spec.sectors * (2 if spec.kind == "failsafe" else 1)
        if sector > flash.sectors:
            raise EfsError(f"the layout needs {sector} sectors, the flash has {flash.sectors}")
        self.sectors_used = sector
        self._cache: dict[str, tuple[int, int, bytes]] = {}  # name -> (copy, seq, data)

    @staticmethod
    def sectors_needed(layout: Sequence[EfsFile]) -> int:
        return 2 + sum(f.sectors * (2 if f.kind == "failsafe" else 1) for f in layout)

    @property
    def chunk_capacity(self) -> int:
        """Plaintext bytes per chunk of a bulk file."""
        return self.flash.sector_size - _C_HEAD.size - _TAG

    def _spec(self, name: str, kind: str) -> tuple[EfsFile, int]:
        try:
            spec, first = self._files[name]
        except KeyError:
            raise EfsError(f"no file {name!r} in the layout") from None
        if spec.kind != kind:
            raise EfsError(f"file {name!r} is a {spec.kind} file")
        return spec, first

    # --- mount ---------------------------------------------------------------------------------

    def mount(self) -> bool:
        """True if formatted with this device's key, False if blank; EfsAuthError if the
        flash holds a file system that does not authenticate here."""
        copies = [self._read_copy(SUPERBLOCK, i) for i in (0, 1)]
        if any(c.state == "valid" and c.data == _SUPER_CONTENT for c in copies):
            return True
        if all(c.state == "blank" for c in copies) or self._first_format_cut_short(copies):
            return False
        raise EfsAuthError("the file system does not authenticate with this device's key: it was "
                           "formatted on another device (clone) or its superblock was altered")

    def _first_format_cut_short(self, copies: list[_Copy]) -> bool:
        """The power failed while the very first superblock was programmed (R2): only
        its first copy was touched and every other sector is still erased. A flash
        from another device (P3) always holds more than that, so it still refuses."""
        if copies[1].state != "blank":
            return False
        start = 2 * self.flash.sector_size
        rest = self.flash.read(start, self.flash.size - start)
        return rest.count(ERASED) == len(rest)

    def format(self) -> None:
        """Start a file system: write the superblock. Files are blank until written."""
        self._cache.clear()
        self.write(SUPERBLOCK, _SUPER_CONTENT)

    # --- failsafe files ------------------------------------------------------------------------

    def _copy_size(self, spec: EfsFile) -> int:
        return spec.sectors * self.flash.sector_size

    def _read_copy(self, name: str, copy: int) -> _Copy:
        spec, first = self._spec(name, "failsafe")
        base = (first + copy * spec.sectors) * self.flash.sector_size
        head = self.flash.read(base, _F_HEAD.size)
        magic, seq, length, nonce = _F_HEAD.unpack(head)
        if magic != _F_MAGIC:
            return _Copy("blank" if head == bytes([ERASED]) * len(head) else "invalid")
        if length > self._copy_size(spec) - _F_HEAD.size - _TAG:
            return _Copy("invalid")
        sealed = self.flash.read(base + _F_HEAD.size, length + _TAG)
        ad = DOMAIN + b"F" + _name_ad(name) + struct.pack(">QI", seq, length)
        try:
            return _Copy("valid", seq, self._aead.decrypt(nonce, sealed, ad))
        except InvalidTag:
            return _Copy("invalid")

    def _newest(self, name: str) -> tuple[int, int, bytes] | None:
        cached = self._cache.get(name)
        if cached is not None:
            return cached
        best: tuple[int, int, bytes] | None = None
        for i in (0, 1):
            c = self._read_copy(name, i)
            if c.state == "valid" and (best is None or c.seq > best[1]):
                best = (i, c.seq, c.data)
        if best is not None:
            self._cache[name] = best
        return best

    def read(self, name: str) -> bytes | None:
        """The newest content of a failsafe file that authenticates; None if none does."""
        newest = self._newest(name)
        return None if newest is None else newest[2]

    def capacity(self, name: str) -> int:
        """The most bytes a failsafe file holds."""
        spec, _ = self._spec(name, "failsafe")
        return self._copy_size(spec) - _F_HEAD.size - _TAG

    def write(self, name: str, data: bytes) -> None:
        """Replace a failsafe file's content atomically (power-safe)."""
        spec, first = self._spec(name, "failsafe")
        if len(data) > self._copy_size(spec) - _F_HEAD.size - _TAG:
            raise EfsError(f"{len(data)} bytes do not fit in file {name!r}")
        newest = self._newest(name)
        copy, seq = (0, 1) if newest is None else (1 - newest[0], newest[1] + 1)
        nonce = os.urandom(12)
        ad = DOMAIN + b"F" + _name_ad(name) + struct.pack(">QI", seq, len(data))
        record = _F_HEAD.pack(_F_MAGIC, seq, len(data), nonce) + self._aead.encrypt(nonce, data, ad)
        self._cache.pop(name, None)
        start = first + copy * spec.sectors
        for sector in range(start, start + spec.sectors):
            self.flash.erase(sector)
        self.flash.program(start * self.flash.sector_size, record)
        self._cache[name] = (copy, seq, data)

    # --- bulk files ----------------------------------------------------------------------------

    def chunks(self, name: str) -> int:
        return self._spec(name, "bulk")[0].sectors

    def _chunk_base(self, name: str, index: int) -> int:
        spec, first = self._spec(name, "bulk")
        if not 0 <= index < spec.sectors:
            raise EfsError(f"chunk {index} is outside file {name!r} ({spec.sectors} chunks)")
        return (first + index) * self.flash.sector_size

    def _chunk_ad(self, name: str, generation: bytes, index: int, length: int) -> bytes:
        return DOMAIN + b"C" + _name_ad(name) + generation + struct.pack(">II", index, length)

    def read_chunk(self, name: str, generation: bytes, index: int) -> bytes | None:
        """The chunk's plaintext; None if it is blank or does not authenticate for this
        name, generation and index (never written, half-written, tampered or foreign)."""
        base = self._chunk_base(name, index)
        magic, length, nonce = _C_HEAD.unpack(self.flash.read(base, _C_HEAD.size))
        if magic != _C_MAGIC or length > self.chunk_capacity:
            return None
        sealed = self.flash.read(base + _C_HEAD.size, length + _TAG)
        try:
            return self._aead.decrypt(nonce, sealed, self._chunk_ad(name, generation, index, length))
        except InvalidTag:
            return None

    def write_chunk(self, name: str, generation: bytes, index: int, data: bytes) -> None:
        base = self._chunk_base(name, index)
        if len(data) > self.chunk_capacity:
            raise EfsError(f"a chunk holds at most {self.chunk_capacity} bytes")
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, data, self._chunk_ad(name, generation, index, len(data)))
        self.flash.erase(base // self.flash.sector_size)
        self.flash.program(base, _C_HEAD.pack(_C_MAGIC, len(data), nonce) + sealed)
