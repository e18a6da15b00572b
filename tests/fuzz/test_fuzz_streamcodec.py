"""Fuzz targets: MQTT file delivery as the server decodes it (issue 12, finding 10):
core/wirecbor.py, core/streamcodec.py (GetStream, DescribeStream, data blocks,
rejections, CBOR and JSON), core/bitmap.py and core/streamplan.py.

Only `DecodeError` may escape a decoder, whatever the bytes; block planning takes any
request that decoded and answers within the protocol's bounds or raises `PeerInputError`.
"""

from __future__ import annotations

import contextlib

import cbor2
from hypothesis import given
from hypothesis import strategies as st

from overair.core import streamcodec, wirecbor
from overair.core.bitmap import block_count, make_bitmap, needed_blocks
from overair.core.errors import DecodeError, PeerInputError
from overair.core.limits import DEFAULT_LIMITS
from overair.core.streamplan import plan_blocks
from tests.fuzz.device_strategies import (
    VALUES,
    cbor_bytes,
    cbor_payloads,
    json_bytes,
    json_payloads,
    stream_messages,
)


@given(cbor_payloads())
def test_fuzz_wirecbor_raises_only_decode_error(payload: bytes) -> None:
    with contextlib.suppress(DecodeError):
        wirecbor.loads(payload)


@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**64 - 1)
        | st.text(max_size=10)
        | st.binary(max_size=10),
        lambda children: (
            st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
        ),
        max_leaves=15,
    )
)
def test_fuzz_wirecbor_decodes_what_cbor2_writes_in_the_subset(value: object) -> None:
    assert wirecbor.loads(cbor2.dumps(value)) == value


@given(cbor_payloads())
def test_fuzz_get_and_describe_stream_cbor_raise_only_decode_error(payload: bytes) -> None:
    with contextlib.suppress(DecodeError):
        streamcodec.decode_get_stream(payload, "cbor")
    with contextlib.suppress(DecodeError):
        streamcodec.decode_describe_stream(payload, "cbor")


@given(json_payloads(stream_messages()))
def test_fuzz_get_and_describe_stream_json_raise_only_decode_error(payload: bytes) -> None:
    with contextlib.suppress(DecodeError):
        streamcodec.decode_get_stream(payload, "json")
    with contextlib.suppress(DecodeError):
        streamcodec.decode_describe_stream(payload, "json")


VALID = {"c": "rdy", "f": 0, "l": 1024, "o": 0, "b": b"\x07", "n": 3}


@given(st.sampled_from(sorted(VALID)), VALUES, st.sampled_from(["cbor", "json"]))
def test_fuzz_get_stream_with_one_hostile_field_raises_only_decode_error(
    key: str, value: object, fmt: str
) -> None:
    message = {**VALID, key: value}
    with contextlib.suppress(DecodeError):
        streamcodec.decode_get_stream(cbor_bytes(message) if fmt == "cbor" else json_bytes(message), fmt)


@given(st.sampled_from(["cbor", "json"]), st.one_of(cbor_payloads(), json_payloads(VALUES)))
def test_fuzz_data_blocks_and_rejections_raise_only_decode_error(fmt: str, payload: bytes) -> None:
    with contextlib.suppress(DecodeError):
        streamcodec.decode_data_block(payload, fmt)
    with contextlib.suppress(DecodeError):
        streamcodec.decode_rejection(payload, fmt)


@given(stream_messages(), st.integers(0, 3 * 128 * 1024), st.sampled_from(["cbor", "json"]))
def test_fuzz_block_plans_stay_within_the_request_and_the_file(
    message: dict[object, object], size: int, fmt: str
) -> None:
    payload = cbor_bytes(message) if fmt == "cbor" else json_bytes(message)
    try:
        request = streamcodec.decode_get_stream(payload, fmt)
        blocks = plan_blocks(request, size, DEFAULT_LIMITS)
    except PeerInputError:  # DecodeError is one
        return
    total = block_count(size, request.block_size)
    assert blocks == sorted(set(blocks))
    assert all(request.block_offset <= b < total for b in blocks)
    assert len(blocks) * request.block_size <= max(
        DEFAULT_LIMITS.max_bytes_per_stream_request, request.block_size
    )
    if request.number_of_blocks is not None:
        assert len(blocks) <= request.number_of_blocks


@given(st.binary(max_size=64), st.integers(-10, 2**32), st.integers(0, 2**20), st.integers(-2, 600))
def test_fuzz_bitmap_needed_blocks_are_set_bits_within_the_file(
    bitmap: bytes, offset: int, total: int, limit: int
) -> None:
    blocks = needed_blocks(bitmap, offset, total, limit)
    assert len(blocks) <= max(0, limit)
    assert all(0 <= offset <= b < total for b in blocks)
    assert make_bitmap(blocks, offset, len(bitmap) * 8) == make_bitmap(
        needed_blocks(make_bitmap(blocks, offset, len(bitmap) * 8), offset, total), offset, len(bitmap) * 8
    )
