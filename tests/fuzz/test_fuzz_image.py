"""Fuzz target: core/image.py, the firmware image header the agent reads after the
signature checked out and the boot loader reads at every boot (P2). Only `DecodeError`
may escape, and a header that parses describes the bytes exactly."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from overair.core.errors import DecodeError
from overair.core.image import HEADER_SIZE, MAGIC, parse_header


@given(st.binary(max_size=64))
def test_fuzz_image_header_any_bytes_raise_only_decode_error(data: bytes) -> None:
    try:
        header = parse_header(data)
    except DecodeError:
        return
    assert header.payload_length == len(data) - HEADER_SIZE


@given(st.integers(0, 255), st.binary(min_size=3, max_size=3), st.integers(0, 2**32 - 1),
       st.integers(0, 2**32 - 1), st.binary(max_size=32))
def test_fuzz_image_header_with_the_magic_raises_only_decode_error(fmt: int, counter: bytes, version: int,
                                                                   length: int, payload: bytes) -> None:
    data = struct.pack(">4sB3sII", MAGIC, fmt, counter, version, length) + payload
    try:
        header = parse_header(data)
    except DecodeError:
        return
    assert (header.payload_length, header.version.to_u32()) == (len(payload), version)
