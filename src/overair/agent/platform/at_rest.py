"""Encryption at rest for the Linux platform (threats P1, P3).

The key is derived (HKDF-SHA256) from the device secret file and the machine's unique
id (e.g. /etc/machine-id): neither is stored with the data, so a copy of the data
directory (or of the whole bundle) on another machine does not decrypt (P3), and the
files never hold plaintext image bytes (P1). Each purpose gets its own key.

A file of `size` plaintext bytes is stored as a header and fixed-size records, each
sealed with AES-256-GCM under a random nonce:

    header: magic `OVRS` | format u8 (=1) | record size u32 | size u64 | generation 16
    record i (at header + i * (record size + 28)): nonce 12 | ciphertext | tag 16
    associated data: domain | generation | size | index | record length

Records can be written in any order (a download's blocks arrive out of order) and one
at a time; one that was never written, was cut short or altered does not
authenticate, which is how a resumed download finds what it really holds. The random
generation binds records to their file: records cannot move between files or places.

`RecordFile` with `key=None` is a plain file with the same interface: the platform's
behaviour without a device secret.
"""

from __future__ import annotations

import contextlib
import os
import struct
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from overair.agent.fsutil import atomic_write, fsync_dir
from overair.agent.platform.base import PlatformError

DOMAIN = b"overair-linux-at-rest/1\0"
MAGIC = b"OVRS"
FORMAT = 1
_HEADER = struct.Struct(">4sBIQ16s")
_NONCE = 12
_TAG = 16
DEFAULT_RECORD_SIZE = 4096
IMAGES = b"images"
TLS_KEY = b"tls-key"


def derive_key(device_secret: bytes, machine_id: bytes, purpose: bytes) -> bytes:
    if len(device_secret) < 16:
        raise ValueError("the device secret must be at least 16 bytes")
    machine_id = machine_id.strip()
    if not machine_id:
        raise ValueError("the machine id is empty")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=machine_id,
                info=b"overair-linux/1 " + purpose).derive(device_secret)


class RecordFile:
    """One file of `size` bytes, sealed record by record (or plain when key is None)."""

    def __init__(self, path: Path, fd: int, key: bytes | None, size: int, record_size: int,
                 generation: bytes) -> None:
        self.path, self._fd, self.size = path, fd, size
        self.record_size, self.generation = record_size, generation
        self._aead = None if key is None else AESGCM(key)

    # --- open / create -------------------------------------------------------------------------

    @classmethod
    def create(cls, path: Path, key: bytes | None, size: int,
               record_size: int = DEFAULT_RECORD_SIZE) -> RecordFile:
        if size < 0 or record_size < 1:
            raise PlatformError(f"bad file geometry: {size} bytes in records of {record_size}")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as exc:
            raise PlatformError(f"cannot create {path}: {exc}") from exc
        generation = os.urandom(16) if key is not None else bytes(16)
        try:
            if key is None:
                os.ftruncate(fd, size)
            else:
                records = -(-size // record_size)
                os.pwrite(fd, _HEADER.pack(MAGIC, FORMAT, record_size, size, generation), 0)
                os.ftruncate(fd, _HEADER.size + size + records * (_NONCE + _TAG))
        except OSError as exc:
            os.close(fd)
            raise PlatformError(f"cannot create {path}: {exc}") from exc
        return cls(path, fd, key, size, record_size, generation)

    @classmethod
    def open(cls, path: Path, key: bytes | None) -> RecordFile:
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError as exc:
            raise PlatformError(f"cannot open {path}: {exc}") from exc
        try:
            if key is None:
                return cls(path, fd, None, os.fstat(fd).st_size, DEFAULT_RECORD_SIZE, bytes(16))
            head = os.pread(fd, _HEADER.size, 0)
            if len(head) != _HEADER.size:
                raise PlatformError(f"{path}: not an encrypted file (too short)")
            magic, fmt, record_size, size, generation = _HEADER.unpack(head)
            if magic != MAGIC or fmt != FORMAT or record_size < 1:
                raise PlatformError(f"{path}: not an encrypted file of this format")
            return cls(path, fd, key, size, record_size, generation)
        except (OSError, PlatformError) as exc:
            os.close(fd)
            if isinstance(exc, PlatformError):
                raise
            raise PlatformError(f"cannot read {path}: {exc}") from exc

    def close(self, *, sync: bool = False) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            try:
                if sync:
                    os.fsync(fd)
            finally:
                os.close(fd)

    def sync(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)

    # --- records ---------------------------------------------------------------------------------

    @property
    def records(self) -> int:
        return -(-self.size // self.record_size)

    def _length(self, index: int) -> int:
        return max(0, min(self.record_size, self.size - index * self.record_size))

    def _position(self, index: int) -> int:
        return _HEADER.size + index * (self.record_size + _NONCE + _TAG)

    def _ad(self, index: int, length: int) -> bytes:
        return DOMAIN + self.generation + struct.pack(">QII", self.size, index, length)

    def _read_record(self, index: int) -> bytes | None:
        assert self._aead is not None
        length = self._length(index)
        raw = os.pread(self._fd, _NONCE + length + _TAG, self._position(index))
        if len(raw) != _NONCE + length + _TAG:
            return None
        try:
            return self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], self._ad(index, length))
        except InvalidTag:
            return None

    def _write_record(self, index: int, data: bytes) -> None:
        assert self._aead is not None
        nonce = os.urandom(_NONCE)
        sealed = nonce + self._aead.encrypt(nonce, data, self._ad(index, len(data)))
        _pwrite_all(self._fd, sealed, self._position(index))

    def readable(self) -> list[bool]:
        """Which records authenticate (all of a plain file)."""
        if self._aead is None:
            return [True] * self.records
        return [self._read_record(i) is not None for i in range(self.records)]

    def write(self, offset: int, data: bytes) -> None:
        if offset < 0 or offset + len(data) > self.size:
            raise PlatformError(f"write of {len(data)} bytes at {offset} is outside the file")
        try:
            if self._aead is None:
                _pwrite_all(self._fd, data, offset)
                return
            if not data:
                return
            size = self.record_size
            for index in range(offset // size, (offset + len(data) - 1) // size + 1):
                start, length = index * size, self._length(index)
                lo, hi = max(offset, start), min(offset + len(data), start + length)
                if lo == start and hi == start + length:
                    record = bytearray(data[lo - offset:hi - offset])
                else:  # a part of the record: keep what it held
                    old = self._read_record(index)
                    record = bytearray(old if old is not None else bytes(length))
                    record[lo - start:hi - start] = data[lo - offset:hi - offset]
                self._write_record(index, bytes(record))
        except OSError as exc:
            raise PlatformError(f"write to {self.path} failed: {exc}") from exc

    def read_all(self) -> bytes:
        """The whole plaintext; PlatformError if any record does not authenticate."""
        try:
            if self._aead is None:
                return os.pread(self._fd, self.size, 0)
            parts = []
            for index in range(self.records):
                record = self._read_record(index)
                if record is None:
                    raise PlatformError(f"{self.path}: record {index} does not decrypt (written on another "
                                        "device, tampered with, or never written)")
                parts.append(record)
            return b"".join(parts)
        except OSError as exc:
            raise PlatformError(f"cannot read {self.path}: {exc}") from exc


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def write_whole(path: Path, key: bytes | None, data: bytes) -> None:
    """Replace `path` with `data`, sealed when there is a key, atomically (R2)."""
    if key is None:
        atomic_write(path, data)
        return
    tmp = path.with_name(f".{path.name}.sealing-{os.getpid()}")
    sealed = RecordFile.create(tmp, key, len(data))
    try:
        sealed.write(0, data)
        sealed.close(sync=True)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        raise PlatformError(f"cannot write {path}: {exc}") from exc
    finally:
        sealed.close()
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def read_whole(path: Path, key: bytes | None) -> bytes:
    if key is None:
        try:
            return path.read_bytes()
        except OSError as exc:
            raise PlatformError(f"cannot read {path}: {exc}") from exc
    sealed = RecordFile.open(path, key)
    try:
        return sealed.read_all()
    finally:
        sealed.close()
