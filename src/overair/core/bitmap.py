"""Block bitmaps of MQTT file delivery (device-protocol.md §3).

Block `offset + i` is bit `1 << (i % 8)` of byte `i // 8`: least significant bit
first. A set bit means the block is still needed.
"""

from __future__ import annotations


def needed_blocks(bitmap: bytes, offset: int, total_blocks: int, limit: int | None = None) -> list[int]:
    """Block indices marked needed, lowest first, clipped to the file's blocks; at most
    `limit` of them (the caller's budget: a device's bitmap is its own choice)."""
    needed: list[int] = []
    if offset < 0 or (limit is not None and limit <= 0):
        return needed
    for byte_index, byte in enumerate(bitmap):
        if not byte:
            continue
        for bit in range(8):
            if byte & (1 << bit):
                block = offset + byte_index * 8 + bit
                if block >= total_blocks:
                    return needed
                needed.append(block)
                if limit is not None and len(needed) >= limit:
                    return needed
    return needed


def make_bitmap(needed: list[int] | range, offset: int, span: int) -> bytes:
    """Bitmap of `span` blocks starting at `offset` with the given blocks set."""
    out = bytearray((span + 7) // 8)
    for block in needed:
        i = block - offset
        if 0 <= i < span:
            out[i // 8] |= 1 << (i % 8)
    return bytes(out)


def block_count(file_size: int, block_size: int) -> int:
    return (file_size + block_size - 1) // block_size
