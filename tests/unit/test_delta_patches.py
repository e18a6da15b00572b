"""core/delta.py: patches round-trip, and the bounds that keep a hostile patch from
costing the agent memory or CPU (threat N2: the patch is untrusted input)."""

from __future__ import annotations

import lzma
import struct
import tracemalloc

import pytest

from overair.core import delta
from overair.core.limits import DEFAULT_LIMITS, KIB, Limits

SOURCE = bytes(range(256)) * 64  # 16 KiB
TARGET = SOURCE[:5000] + b"a small change" + SOURCE[5014:]


def _apply(patch: bytes, size: int = len(TARGET), limits: Limits = DEFAULT_LIMITS) -> bytes:
    out = bytearray()
    delta.apply_patch(SOURCE, patch, size, lambda _offset, data: out.extend(data), limits)
    return bytes(out)


def test_a_patch_rebuilds_the_target_and_is_small() -> None:
    patch = delta.create_patch(SOURCE, TARGET)
    assert _apply(patch) == TARGET
    assert len(patch) < len(TARGET) // 20


def test_a_patch_for_another_size_is_refused_before_anything_is_written() -> None:
    with pytest.raises(delta.DeltaError, match="patch makes"):
        _apply(delta.create_patch(SOURCE, TARGET), len(TARGET) - 1)


def test_a_huge_lzma_dictionary_is_refused_before_it_is_allocated() -> None:
    patch = bytearray(delta.create_patch(SOURCE, TARGET))
    at = 4  # the header byte, then the output size (16,384) as a 3-byte varint
    properties, _, size = struct.unpack_from("<BIQ", patch, at)
    struct.pack_into("<BIQ", patch, at, properties, 1 << 31, size)
    with pytest.raises(delta.DeltaError, match="dictionary"):
        _apply(bytes(patch))


def test_a_decompression_bomb_is_refused_not_expanded() -> None:
    size_varint = b"\x80\x80\x01"  # 1 << 13 = 8 KiB declared
    bomb = lzma.compress(bytes(32 * 1024 * 1024), format=lzma.FORMAT_ALONE)  # 4.6 KiB
    tracemalloc.start()
    try:
        with pytest.raises(delta.DeltaError, match="expands past"):
            _apply(b"\x01" + size_varint + bomb, 8 * KIB, Limits(delta_body_slack=1 * KIB))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Stopped at the bound (17 KiB; liblzma's 8 MiB dictionary counts too), not after 32 MiB.
    assert peak < 12 * 1024 * KIB


def test_a_body_whose_sizes_lie_is_refused_by_the_structure_check() -> None:
    def varint(value: int) -> bytes:
        out = bytearray([value & 0x3F])
        value >>= 6
        while value:
            out[-1] |= 0x80
            out.append(value & 0x7F)
            value >>= 7
        return bytes(out)

    # One diff step claiming 100 bytes that are not there.
    body = varint(0) + varint(100) + b"x" * 10
    with pytest.raises(delta.DeltaError, match="out of bounds"):
        _apply(b"\x01" + varint(100) + lzma.compress(body, format=lzma.FORMAT_ALONE), 100)
    # A step that writes nothing and moves nowhere (a loop that never ends without the check).
    body = varint(0) + varint(0) + varint(0) + varint(0)
    with pytest.raises(delta.DeltaError, match="writes nothing"):
        _apply(b"\x01" + varint(100) + lzma.compress(body, format=lzma.FORMAT_ALONE), 100)


def test_an_offer_of_an_empty_patch_is_not_understood() -> None:
    """An empty patch cannot exist; taking the offer would make the agent verify a
    download it never made. The agent then takes the full image."""
    from overair.core.delta_offer import OFFER_KEY, parse_offer
    offer = {"fileid": 7, "filesize": 0, "sha256": "1" * 64, "sourceVersion": "1.0.0",
             "sourceSha256": "2" * 64}
    assert parse_offer({OFFER_KEY: offer}) is None
    assert parse_offer({OFFER_KEY: {**offer, "filesize": 1}}) is not None
