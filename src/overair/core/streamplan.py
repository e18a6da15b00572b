"""Which blocks answer a GetStream request (device-protocol.md §3, pacing).

The FreeRTOS agent sends its next request only after `n` new blocks arrive (or 10 s of
silence), so the answer is exactly `min(n, blocks still needed)` blocks, lowest first,
never more than the per-request byte budget.
"""

from __future__ import annotations

from overair.core.bitmap import block_count, needed_blocks
from overair.core.errors import PeerInputError
from overair.core.limits import Limits
from overair.core.streamcodec import GetStreamRequest


def plan_blocks(request: GetStreamRequest, file_size: int, limits: Limits) -> list[int]:
    total = block_count(file_size, request.block_size)
    if request.block_offset >= total:
        raise PeerInputError(f"block offset {request.block_offset} is past the last block "
                             f"({total - 1})", code="InvalidRequest")
    budget = max(1, limits.max_bytes_per_stream_request // request.block_size)
    wanted = request.number_of_blocks if request.number_of_blocks is not None else budget
    return needed_blocks(request.bitmap, request.block_offset, total, limit=min(wanted, budget))


def block_bytes(data: bytes, block: int, block_size: int) -> bytes:
    return data[block * block_size:(block + 1) * block_size]
