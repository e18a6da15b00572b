"""MQTT file-delivery codec: byte-exact frames, strict decoding, block planning."""

from __future__ import annotations

import base64
import json

import cbor2
import pytest

from overair.core.bitmap import block_count, make_bitmap, needed_blocks
from overair.core.errors import DecodeError, PeerInputError
from overair.core.limits import DEFAULT_LIMITS
from overair.core.streamcodec import (
    DataBlock,
    GetStreamRequest,
    decode_data_block,
    decode_get_stream,
    encode_data_block,
    encode_get_stream,
    encode_rejection,
)
from overair.core.streamplan import plan_blocks

# {"c":"rdy","f":0,"l":4096,"o":0,"b":h'07',"n":8} from device-protocol.md §3.
EXAMPLE = bytes.fromhex("a6616363726479616600616c191000616f006162410761 6e08".replace(" ", ""))


def test_get_stream_request_matches_the_documented_bytes() -> None:
    request = GetStreamRequest("rdy", 0, 4096, 0, b"\x07", 8, None)
    assert encode_get_stream(request) == EXAMPLE
    assert decode_get_stream(EXAMPLE, "cbor") == request


def test_data_block_carries_exactly_f_i_l_p() -> None:
    frame = encode_data_block(DataBlock(0, 3, b"abc"))
    assert cbor2.loads(frame) == {"f": 0, "i": 3, "l": 3, "p": b"abc"}
    assert decode_data_block(frame) == DataBlock(0, 3, b"abc")


def test_json_format_uses_base64_for_bytes() -> None:
    frame = encode_data_block(DataBlock(1, 0, b"\x00\xff"), "json")
    assert json.loads(frame) == {"f": 1, "i": 0, "l": 2, "p": base64.b64encode(b"\x00\xff").decode()}
    request = json.dumps({"c": "x", "f": 0, "l": 1024, "o": 0, "b": "Aw==", "n": 2}).encode()
    assert decode_get_stream(request, "json").bitmap == b"\x03"


@pytest.mark.parametrize(("patch", "field"), [
    ({"l": 1000}, "power of two"),
    ({"l": 128}, "'l'"),
    ({"l": 256 * 1024}, "'l'"),
    ({"f": "0"}, "'f'"),
    ({"b": b""}, "bitmap"),
    ({"n": 0}, "'n'"),
    ({"c": "x" * 65}, "client token"),
])
def test_malformed_requests_name_the_bad_field(patch: dict[str, object], field: str) -> None:
    message = {"c": "rdy", "f": 0, "l": 4096, "o": 0, "b": b"\x01", "n": 1, **patch}
    with pytest.raises(DecodeError, match=field):
        decode_get_stream(cbor2.dumps(message), "cbor")


def test_undecodable_payload_is_a_decode_error() -> None:
    with pytest.raises(DecodeError) as err:
        decode_get_stream(b"\xff\x00garbage", "cbor")
    assert err.value.code == "InvalidCbor"
    with pytest.raises(DecodeError):
        decode_get_stream(cbor2.dumps([1, 2]), "cbor")


def test_bitmap_is_lsb_first_and_clipped_to_the_file() -> None:
    assert needed_blocks(b"\x05", 0, 100) == [0, 2]
    assert needed_blocks(b"\x80\x01", 16, 100) == [23, 24]
    assert needed_blocks(b"\xff", 0, 3) == [0, 1, 2]
    assert make_bitmap([0, 2, 9], 0, 10) == b"\x05\x02"
    assert block_count(4097, 4096) == 2


def test_plan_answers_exactly_min_n_needed_lowest_first() -> None:
    size = 10 * 4096 + 1  # 11 blocks
    request = GetStreamRequest("rdy", 0, 4096, 0, make_bitmap(range(11), 0, 11), 8, None)
    assert plan_blocks(request, size, DEFAULT_LIMITS) == list(range(8))
    request = GetStreamRequest("rdy", 0, 4096, 0, make_bitmap([3, 10], 0, 11), 8, None)
    assert plan_blocks(request, size, DEFAULT_LIMITS) == [3, 10]


def test_plan_never_exceeds_128_kib_per_request() -> None:
    request = GetStreamRequest("rdy", 0, 65536, 0, b"\xff", 8, None)
    assert plan_blocks(request, 8 * 65536, DEFAULT_LIMITS) == [0, 1]


def test_plan_refuses_offsets_past_the_end() -> None:
    request = GetStreamRequest("rdy", 0, 4096, 5, b"\x01", 1, None)
    with pytest.raises(PeerInputError):
        plan_blocks(request, 4096, DEFAULT_LIMITS)


def test_rejection_shape() -> None:
    assert cbor2.loads(encode_rejection("InvalidRequest", "bad", "rdy", "cbor")) == {
        "o": "InvalidRequest", "m": "bad", "c": "rdy"}


# Hostile requests (issue 12, finding 10): only DecodeError, with a file-delivery code.

def test_no_500_non_ascii_base64_bitmap_is_a_decode_error() -> None:
    # base64.b64decode raises ValueError (not binascii.Error) on non-ASCII text.
    request = json.dumps({"c": "x", "f": 0, "l": 1024, "o": 0, "b": "\u00e9\u00e9==", "n": 1}).encode()
    with pytest.raises(DecodeError, match="base64"):
        decode_get_stream(request, "json")


def test_no_500_json_request_nested_deep_or_with_huge_numbers_is_refused() -> None:
    for payload in (b"[" * 1000 + b"]" * 1000, b'{"c":' + b"[" * 1000 + b"]" * 1000 + b"}",
                    b'{"l": 1e400, "b": "AQ=="}', b'{"f": ' + b"9" * 500 + b"}"):
        with pytest.raises(DecodeError) as err:
            decode_get_stream(payload, "json")
        assert err.value.code in ("InvalidJson", "InvalidRequest")


def test_no_500_lone_surrogate_client_token_is_refused_before_it_is_echoed() -> None:
    request = b'{"c": "\\ud800", "f": 0, "l": 1024, "o": 0, "b": "AQ==", "n": 1}'
    with pytest.raises(DecodeError, match="client token"):
        decode_get_stream(request, "json")


@pytest.mark.parametrize(("payload", "what"), [
    (b"\x81" * 500 + b"\x00", "nested"),  # arrays 500 deep
    (b"\xa1\x61a" * 50 + b"\x00", "nested"),  # maps 50 deep
    (b"\xd8\x23\x63(a)", "tags"),  # tag 35: cbor2 would compile a device's regular expression
    (b"\xc2\x59\x03\xe8" + b"\xff" * 1000, "tags"),  # tag 2: a 1,000-byte bignum
    (b"\xd8\x1c\x81\xd8\x1d\x00", "tags"),  # tags 28/29: a cyclic structure
    (b"\x5b\x7f\xff\xff\xff\xff\xff\xff\xff", "announced"),  # a byte string of 2^63 bytes
    (b"\x9b\x7f\xff\xff\xff\xff\xff\xff\xff", "announced"),  # an array of 2^63 items
    (b"\xa2\x61a\x00\x61a\x01", "duplicate"),  # the same key twice: which one wins?
    (b"\xa1\x80\x00", "keys"),  # an unhashable (array) key
    (b"\xa1\x61a\x00\x00", "after"),  # trailing bytes
    (b"\xf8\x20", "simple"),
])
def test_no_500_hostile_cbor_is_refused_by_the_bounded_decoder(payload: bytes, what: str) -> None:
    with pytest.raises(DecodeError, match=what) as err:
        decode_get_stream(payload, "cbor")
    assert err.value.code == "InvalidCbor"


def test_indefinite_lengths_decode_like_definite_ones() -> None:
    # {_ "c": "rdy", "f": 0, "l": 4096, "o": 0, "b": (_ h'07'), "n": 8}
    indefinite = (b"\xbf\x61c\x7f\x63rdy\xff\x61f\x00\x61l\x19\x10\x00\x61o\x00"
                  b"\x61b\x5f\x41\x07\xff\x61n\x08\xff")
    assert decode_get_stream(indefinite, "cbor") == decode_get_stream(EXAMPLE, "cbor")


def test_hostile_data_block_is_a_decode_error_for_the_agent() -> None:
    wrong_length = cbor2.dumps({"f": 0, "i": 0, "l": 9, "p": b"x"})
    not_base64 = b'{"f":0,"i":0,"l":1,"p":"\xc3\xa9"}'
    for payload in (b"\xd8\x23\x63(a)", b"\x81" * 100 + b"\x00", wrong_length, not_base64):
        with pytest.raises(DecodeError):
            decode_data_block(payload, "json" if payload.startswith(b"{") else "cbor")


def test_needed_blocks_stops_at_the_limit() -> None:
    assert needed_blocks(b"\xff" * 100, 0, 10_000, limit=3) == [0, 1, 2]
    assert needed_blocks(b"\xff", -1, 10) == []
