"""A partial download that survives a reboot (threat R2: resumable download).

The platform keeps the partial file and, beside it, the bitmap of the blocks still
needed (device-protocol.md §3 bit order). Both are bound to what they are a part of:
`binding()` digests the job id, the stream and file id, the file size, the block size
and the expected signature, so a bitmap kept for one job or one version of a stream is
never taken for another; anything that differs starts afresh.

Rule that keeps it honest: a bitmap is only ever saved after the blocks it claims are
durably stored (the platform flushes the partial file first), and a platform that can
check stored blocks (the simulated MCU authenticates every chunk) marks the blocks it
cannot read back as needed again when it loads the bitmap.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

BINDING_DOMAIN = b"overair-agent/staging-binding/1\0"


@dataclass(frozen=True, slots=True)
class StagedProgress:
    binding: bytes  # binding() of the download the partial file belongs to
    size: int  # bytes of the whole file
    block_size: int
    needed: bytes  # bit set = block still needed

    def __repr__(self) -> str:
        return (f"StagedProgress(binding={self.binding[:6].hex()}.., size={self.size}, "
                f"block_size={self.block_size}, missing={missing_blocks(self)})")


def binding(job_id: str, stream: str, file_id: int, size: int, block_size: int, signature: bytes) -> bytes:
    def field(raw: bytes) -> bytes:
        return struct.pack(">I", len(raw)) + raw

    return hashlib.sha256(BINDING_DOMAIN + field(job_id.encode()) + field(stream.encode())
                          + struct.pack(">qqq", file_id, size, block_size) + field(signature)).digest()


def block_total(progress: StagedProgress) -> int:
    return -(-progress.size // progress.block_size) if progress.block_size > 0 else 0


def missing_blocks(progress: StagedProgress) -> int:
    total = block_total(progress)
    return sum(1 for i in range(total) if is_needed(progress.needed, i))


def is_needed(needed: bytes, block: int) -> bool:
    return block // 8 < len(needed) and bool(needed[block // 8] & (1 << (block % 8)))


def well_formed(progress: StagedProgress) -> bool:
    """Sizes that make sense and a bitmap exactly as long as the file's blocks need."""
    total = block_total(progress)
    return (len(progress.binding) == 32 and progress.size > 0 and progress.block_size > 0
            and len(progress.needed) == (total + 7) // 8)


def mark_needed(needed: bytes, blocks: set[int]) -> bytes:
    out = bytearray(needed)
    for block in blocks:
        out[block // 8] |= 1 << (block % 8)
    return bytes(out)
