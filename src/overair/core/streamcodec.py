"""Wire codec of MQTT file delivery: GetStream/DescribeStream requests and replies.

CBOR and JSON carry the same one-letter keys. In JSON, byte strings (the bitmap `b`
and the block payload `p`) are base64 text. Decoding is strict: a request with a key
of the wrong type, an out-of-range block size or an oversized bitmap is refused with a
`DecodeError` naming the field, and the caller answers on `.../rejected/<fmt>`.

Both formats are decoded by the bounded decoders every boundary uses (core/wirecbor.py,
core/wirejson.py), after a size check, so the only error any decoder here raises is
`DecodeError`, whatever the bytes.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

import cbor2

from overair.core import wirecbor, wirejson
from overair.core.errors import DecodeError
from overair.core.limits import DEFAULT_LIMITS, Limits
from overair.core.wiretext import text_field

CBOR = "cbor"
JSON = "json"


@dataclass(frozen=True, slots=True)
class GetStreamRequest:
    client_token: str
    file_id: int
    block_size: int
    block_offset: int
    bitmap: bytes
    number_of_blocks: int | None
    stream_version: int | None


@dataclass(frozen=True, slots=True)
class DataBlock:
    file_id: int
    block_id: int
    payload: bytes


def _loads(payload: bytes, fmt: str, limits: Limits, max_bytes: int | None = None,
           what: str = "request") -> dict[str, Any]:
    """One message as a map; `max_bytes` defaults to the bound on a device's request."""
    bound = limits.max_stream_request_bytes if max_bytes is None else max_bytes
    if len(payload) > bound:
        raise DecodeError(f"{what} of {len(payload)} bytes is too large", code="InvalidRequest")
    if fmt == CBOR:
        value = wirecbor.loads(payload, limits=limits, what=what)
    else:
        try:
            value = wirejson.loads(payload, limits=limits, max_bytes=bound, what=what)
        except DecodeError as exc:
            raise DecodeError(exc.message, code="InvalidJson") from None
    if not isinstance(value, dict):
        raise DecodeError(f"{what} must be a map", code="InvalidRequest")
    return value


def _int(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise DecodeError(f"field {name!r} must be an integer in [{low}, {high}]")
    return value


def _bytes(value: Any, name: str, fmt: str) -> bytes:
    if fmt == JSON and isinstance(value, str):
        # b64decode raises ValueError, not binascii.Error, on non-ASCII text: check first.
        if not value.isascii():
            raise DecodeError(f"field {name!r} is not base64")
        try:
            return base64.b64decode(value, validate=True)
        except binascii.Error as exc:
            raise DecodeError(f"field {name!r} is not base64") from exc
    if fmt == CBOR and isinstance(value, bytes):
        return value
    raise DecodeError(f"field {name!r} must be a byte string")


def client_token_of(value: Any, limits: Limits) -> str:
    if value is None:
        return ""
    return text_field(value, name="client token", max_bytes=limits.max_client_token_length,
                      code="InvalidRequest")


def decode_get_stream(payload: bytes, fmt: str, limits: Limits = DEFAULT_LIMITS) -> GetStreamRequest:
    msg = _loads(payload, fmt, limits)
    block_size = _int(msg.get("l"), "l", limits.min_block_size, limits.max_block_size)
    if block_size & (block_size - 1):
        raise DecodeError(f"block size {block_size} is not a power of two")
    max_blocks = limits.max_bytes_per_stream_request // limits.min_block_size
    bitmap = _bytes(msg.get("b"), "b", fmt)
    # A bitmap never needs more bits than the largest file has blocks.
    if not bitmap or len(bitmap) > limits.max_object_bytes // limits.min_block_size // 8:
        raise DecodeError("bitmap is empty or too large")
    n = msg.get("n")
    return GetStreamRequest(
        client_token=client_token_of(msg.get("c"), limits),
        file_id=_int(msg.get("f"), "f", 0, 255),
        block_size=block_size,
        block_offset=_int(msg.get("o", 0), "o", 0, 0xFFFFFFFF),
        bitmap=bitmap,
        number_of_blocks=None if n is None else _int(n, "n", 1, max_blocks),
        stream_version=None if msg.get("s") is None else _int(msg.get("s"), "s", 0, 0xFFFFFFFF),
    )


def decode_describe_stream(payload: bytes, fmt: str, limits: Limits = DEFAULT_LIMITS) -> str:
    """A DescribeStream request carries only an optional client token."""
    if not payload.strip():
        return ""
    return client_token_of(_loads(payload, fmt, limits).get("c"), limits)


def encode_get_stream(request: GetStreamRequest, fmt: str = CBOR) -> bytes:
    msg: dict[str, Any] = {
        "c": request.client_token,
        "f": request.file_id,
        "l": request.block_size,
        "o": request.block_offset,
        "b": request.bitmap,
    }
    if request.number_of_blocks is not None:
        msg["n"] = request.number_of_blocks
    if request.stream_version is not None:
        msg["s"] = request.stream_version
    return _dumps(msg, fmt)


def encode_data_block(block: DataBlock, fmt: str = CBOR) -> bytes:
    # Exactly the keys the FreeRTOS decoder reads: f, i, l, p with l == len(p).
    return _dumps({"f": block.file_id, "i": block.block_id, "l": len(block.payload),
                   "p": block.payload}, fmt)


def decode_data_block(payload: bytes, fmt: str = CBOR, limits: Limits = DEFAULT_LIMITS) -> DataBlock:
    """A data block as a device receives it (the agent's side of §3)."""
    # The largest block plus its framing; base64 makes JSON a third larger.
    bound = (limits.max_block_size * 4 // 3 if fmt == JSON else limits.max_block_size) + 1024
    msg = _loads(payload, fmt, limits, max_bytes=bound, what="data block")
    data = _bytes(msg.get("p"), "p", fmt)
    length = _int(msg.get("l"), "l", 0, 1 << 20)
    if length != len(data):
        raise DecodeError(f"data block length {length} != payload length {len(data)}")
    return DataBlock(_int(msg.get("f"), "f", 0, 255), _int(msg.get("i"), "i", 0, 0xFFFFFFFF), data)


def encode_description(client_token: str, version: int, description: str,
                       files: list[tuple[int, int]], fmt: str) -> bytes:
    return _dumps({"c": client_token, "s": version, "d": description,
                   "r": [{"f": fid, "z": size} for fid, size in files]}, fmt)


def encode_rejection(code: str, message: str, client_token: str, fmt: str) -> bytes:
    """AWS's file-delivery error shape: `o` error code, `m` message, `c` token."""
    return _dumps({"o": code, "m": message, "c": client_token}, fmt)


def decode_rejection(payload: bytes, fmt: str, limits: Limits = DEFAULT_LIMITS) -> tuple[str, str]:
    msg = _loads(payload, fmt, limits, max_bytes=limits.max_stream_request_bytes * 4, what="rejection")
    return str(msg.get("o", ""))[:64], str(msg.get("m", ""))[:512]


def _dumps(msg: dict[str, Any], fmt: str) -> bytes:
    if fmt == CBOR:
        return cbor2.dumps(msg)
    converted = {k: base64.b64encode(v).decode() if isinstance(v, bytes) else v
                 for k, v in msg.items()}
    return json.dumps(converted, separators=(",", ":")).encode()
