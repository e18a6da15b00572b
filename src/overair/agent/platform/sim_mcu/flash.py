"""A simulated NOR flash device backed by one file, with power-cut injection (R2).

Geometry: `sectors` sectors of `sector_size` bytes. Like NOR flash:

- `program(address, data)` can only clear bits (1 -> 0); a write that needs a 0 -> 1
  transition without an erase raises `FlashError` and changes nothing;
- `erase(sector)` sets a whole sector to 0xFF and increments its wear counter.

File layout: the sectors, then one little-endian u32 wear counter per sector. The
counters are bookkeeping of the simulator, not flash content: they are updated in
place and never subject to power cuts.

Power cuts: `Flash(..., cut_after_writes=k)` raises `PowerCut` when the k-th
program/erase operation starts, after doing half of it (the first half of the bytes
programmed, or the first half of the sector erased), which is what a real cut leaves.
From then on the object is dead: every operation, reads included, raises `PowerCut`.
A new `Flash` object on the same file is the device after the reset.
"""

from __future__ import annotations

import os
from pathlib import Path

from overair.agent.platform.base import PlatformError, PowerLost

ERASED = 0xFF
_WEAR_BYTES = 4


class FlashError(PlatformError):
    """Misuse of the flash: out of range, or programming a 0 bit back to 1."""

    code = "FlashError"


class PowerCut(PowerLost):
    """The power failed during a flash operation (injected fault)."""


class Flash:
    def __init__(self, path: Path, *, sectors: int, sector_size: int = 4096,
                 cut_after_writes: int | None = None) -> None:
        if sectors < 1 or sector_size < 16:
            raise ValueError("a flash needs at least one sector of at least 16 bytes")
        self._fd = -1
        if cut_after_writes is not None and cut_after_writes < 1:
            raise ValueError("cut_after_writes counts from 1")
        self.path = Path(path)
        self.sectors = sectors
        self.sector_size = sector_size
        self.size = sectors * sector_size
        self.cut_after_writes = cut_after_writes
        self.operations = 0  # program/erase operations started by this object
        self.dead = False
        expected = self.size + sectors * _WEAR_BYTES
        if not self.path.exists():
            with open(self.path, "wb") as f:
                f.write(bytes([ERASED]) * self.size + bytes(sectors * _WEAR_BYTES))
        actual = self.path.stat().st_size
        if actual != expected:
            raise FlashError(f"{self.path}: {actual} bytes, a flash of {sectors} x {sector_size} "
                             f"needs {expected}")
        self._fd = os.open(self.path, os.O_RDWR)

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        self.close()

    # --- helpers -----------------------------------------------------------------------------

    def _alive(self) -> None:
        if self.dead:
            raise PowerCut("the device is powered off")

    def _check_range(self, address: int, length: int) -> None:
        if address < 0 or length < 0 or address + length > self.size:
            raise FlashError(f"access of {length} bytes at {address:#x} is outside the flash "
                             f"({self.size:#x} bytes)")

    def _start_operation(self) -> bool:
        """Count an operation; True when the power fails during it."""
        self._alive()
        self.operations += 1
        return self.cut_after_writes is not None and self.operations >= self.cut_after_writes

    def _pwrite(self, address: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, address)
            view, address = view[written:], address + written

    # --- operations ----------------------------------------------------------------------------

    def read(self, address: int, length: int) -> bytes:
        self._alive()
        self._check_range(address, length)
        return os.pread(self._fd, length, address)

    def program(self, address: int, data: bytes) -> None:
        self._alive()
        self._check_range(address, len(data))
        old = os.pread(self._fd, len(data), address)
        # NOR: programming can only clear bits.
        if int.from_bytes(data, "big") & ~int.from_bytes(old, "big"):
            raise FlashError(f"program of {len(data)} bytes at {address:#x} needs an erase first "
                             "(a 0 bit cannot be programmed back to 1)")
        if self._start_operation():
            self._pwrite(address, data[:len(data) // 2])
            self.dead = True
            raise PowerCut(f"power cut during program #{self.operations} at {address:#x}")
        self._pwrite(address, data)

    def erase(self, sector: int) -> None:
        self._alive()
        if not 0 <= sector < self.sectors:
            raise FlashError(f"sector {sector} does not exist (0..{self.sectors - 1})")
        start = sector * self.sector_size
        cut = self._start_operation()
        count = self.wear(sector) + 1
        self._pwrite(self.size + sector * _WEAR_BYTES, count.to_bytes(_WEAR_BYTES, "little"))
        if cut:
            self._pwrite(start, bytes([ERASED]) * (self.sector_size // 2))
            self.dead = True
            raise PowerCut(f"power cut during erase #{self.operations} of sector {sector}")
        self._pwrite(start, bytes([ERASED]) * self.sector_size)

    def wear(self, sector: int) -> int:
        """How many times `sector` was erased, over the life of the file."""
        if not 0 <= sector < self.sectors:
            raise FlashError(f"sector {sector} does not exist (0..{self.sectors - 1})")
        raw = os.pread(self._fd, _WEAR_BYTES, self.size + sector * _WEAR_BYTES)
        return int.from_bytes(raw, "little")
