"""The platform abstraction layer (PAL): where images live and which one boots.

It mirrors the FreeRTOS OTA PAL (create/write/close/abort the receive file, activate,
set image state) with A/B semantics made explicit so that the agent can survive a
flawed update (R1) and a power cut (R2):

- `boot()` is the boot loader's decision, taken once per (re)boot: the confirmed image,
  or a pending (trial) image as long as it has boot attempts left; when a pending image
  was booted `max_boot_attempts` times without being committed, it is abandoned and the
  confirmed image boots again.
- `activate()` makes the staged image pending; `commit()` makes the running pending
  image the confirmed one and raises the persisted security counter to the image's
  (N1; it never goes down); `rollback()` abandons it.
- A staging file created with a binding (agent/progress.py) is resumable: after
  `save_progress()` a reboot finds it with `staged_progress()` and `resume_staging()`
  reopens it (R2). `close_staging()` closes it and keeps it; `abort_staging()` and a
  new `create_staging()` discard it.
- `factory_reset()` makes the factory image the confirmed one, as one atomic switch.

Implementations: `LinuxSlots` (directories and an atomic symlink) and `SimMcu` (a
simulated MCU flash with power-cut injection).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from overair.agent.journal import JournalStore
from overair.agent.progress import StagedProgress
from overair.core.errors import OverairError
from overair.core.versions import Version


class PlatformError(OverairError):
    """Storage or boot-state operation failed (disk full, corrupt slot, misuse)."""

    code = "PlatformError"


class PowerLost(Exception):
    """The device lost power in the middle of an operation (a simulated platform injects
    it to test R2). Nothing runs after it: the agent stops, as the device would; it is
    never taken for a defect in handling a job (agent/runtime.py)."""


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
    valid: bool | None = None  # the stored image reads back intact (None: not checked)
    security_counter: int | None = None


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

    def create_staging(self, size: int, binding: bytes = b"", block_size: int = 0) -> None:
        """Create (or truncate) the receive file for an image of `size` bytes, discarding
        any kept progress; with a `binding` the file can be resumed after a reboot."""
        ...

    def staged_progress(self) -> StagedProgress | None:
        """The kept progress of an interrupted download, its bitmap checked against what
        the partial file really holds; None if there is none."""
        ...

    def resume_staging(self, progress: StagedProgress) -> None:
        """Reopen the partial file that `progress` (from staged_progress) describes."""
        ...

    def save_progress(self, needed: bytes) -> None:
        """Make the blocks written so far durable, then keep `needed` with the file."""
        ...

    def close_staging(self) -> None:
        """Close the receive file, keeping it and its progress (agent shutdown)."""
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

    def security_counter(self) -> int:
        """The highest security counter of any committed image (0 before any)."""
        ...

    def factory_reset(self, image: bytes | None = None) -> None:
        """Make the factory image the confirmed one (pending image and kept download
        dropped); `image` is used when the platform keeps no factory image itself."""
        ...

    def slots(self) -> list[SlotInfo]:
        """Describe the slots without changing anything (for status displays)."""
        ...

    def journal_store(self, data_dir: Path) -> JournalStore:
        """Where the agent keeps its journal on this platform (`data_dir` for a file)."""
        ...
