"""The platform abstraction layer (PAL): where images live and which one boots.

It mirrors the FreeRTOS OTA PAL (create/write/close/abort the receive file, activate,
set image state) with A/B semantics made explicit so that the agent can survive a
flawed update (R1) and a power cut (R2):

- `boot()` is the boot loader's decision, taken once per (re)boot: the confirmed image,
  or a pending (trial) image as long as it has boot attempts left; when a pending image
  was booted `max_boot_attempts` times without being committed, it is abandoned and the
  confirmed image boots again.
- `activate()` makes the staged image pending; `commit()` makes the running pending
  image the confirmed one; `rollback()` abandons it.

Implementations: `LinuxSlots` (directories and an atomic symlink); a simulated MCU flash
with power-cut injection comes later and implements the same protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from overair.core.errors import OverairError
from overair.core.versions import Version


class PlatformError(OverairError):
    """Storage or boot-state operation failed (disk full, corrupt slot, misuse)."""

    code = "PlatformError"


@dataclass(frozen=True, slots=True)
class BootInfo:
    slot: str
    version: Version
    trial: bool  # running a pending image that must pass its self-test
    fell_back: bool = False  # a pending image was abandoned at this boot
    boot_count: int = 0  # boots of the pending image so far (trial only)


@dataclass(frozen=True, slots=True)
class SlotInfo:
    name: str
    version: Version | None  # None: empty slot
    size: int
    state: str  # "confirmed" | "pending" | "inactive" | "empty"
    current: bool  # the boot selection points at it


class Platform(Protocol):
    def is_empty(self) -> bool:
        """True until a first image (the factory image) was installed."""
        ...

    def install_factory(self, image: bytes) -> None:
        """Install a complete image as the confirmed one on an empty store."""
        ...

    def boot(self) -> BootInfo:
        """Select the image to run, as a boot loader does at each reset."""
        ...

    def running_version(self) -> Version: ...

    def create_staging(self, size: int) -> None:
        """Create (or truncate) the receive file for an image of `size` bytes."""
        ...

    def write_block(self, offset: int, data: bytes) -> None: ...

    def read_staging(self) -> bytes:
        """Flush and close the receive file, then return its content for verification."""
        ...

    def abort_staging(self) -> None: ...

    def activate(self) -> None:
        """Make the staged image the pending one; the next `boot()` tries it."""
        ...

    def commit(self) -> None:
        """Confirm the running pending image."""
        ...

    def rollback(self) -> None:
        """Abandon the pending image; the next `boot()` runs the confirmed one."""
        ...

    def slots(self) -> list[SlotInfo]:
        """Describe the slots without changing anything (for status displays)."""
        ...
