"""Delta updates: a patch from the image a device runs to the image of an OTA update.

The library is detools (chosen by bench/delta.py over bsdiff4: smaller patches and an
apply that streams in 4 KiB chunks instead of holding source, patch and output at once),
its *sequential* patch type with the bsdiff algorithm and lzma compression, the kind made
for firmware. The server makes a patch with `create_patch`; the agent applies one with
`apply_patch`, which treats the patch as hostile (threat-model.md, the patch is data from
the network like a block):

- the header must name a sequential lzma patch whose output size is exactly the declared
  image size (anything larger is refused before a byte is written);
- the lzma body is decompressed here first, with the dictionary bounded by
  `Limits.delta_max_lzma_dictionary` (liblzma allocates the dictionary a header asks
  for) and the output bounded to `Limits.delta_max_expansion` times the image size (a
  decompression bomb is refused, not expanded);
- the decompressed body is walked once to check its structure (every size a short
  non-negative varint inside the image, every adjustment inside the source, no data
  format section) before detools applies it, so that detools only ever sees a
  well-formed patch whose every step advances;
- whatever still goes wrong (a library error of any kind) is a `DeltaError`; the output
  is written through `sink` and never past the declared size.

A patch that applies cleanly may still reconstruct the wrong image: the caller verifies
the signature over the result exactly as for a full image (agent/trust.py).
"""

from __future__ import annotations

import io
import lzma
import struct
from collections.abc import Callable
from typing import Any

import detools

from overair.core.errors import DecodeError
from overair.core.limits import DEFAULT_LIMITS, Limits

_SEQUENTIAL = 0  # detools' patch types (header byte, high nibble)
_COMPRESSION_NONE = 0  # and compressions (low nibble)
_COMPRESSION_LZMA = 1
_MAX_VARINT_BYTES = 10  # detools' sizes: 6 + 9 * 7 bits cover 64-bit values
_LZMA_ALONE_HEADER = struct.Struct("<BIQ")  # properties, dictionary size, uncompressed size


class DeltaError(DecodeError):
    """The patch cannot be applied (malformed, too large, wrong source, wrong output)."""

    code = "DeltaFailed"

    def __init__(self, message: str) -> None:
        super().__init__(message, code="DeltaFailed")


def create_patch(source: bytes, target: bytes) -> bytes:
    """A sequential bsdiff patch with lzma compression from `source` to `target`."""
    out = io.BytesIO()
    detools.create_patch(io.BytesIO(source), io.BytesIO(target), out, compression="lzma",
                         patch_type="sequential", algorithm="bsdiff", use_mmap=False)
    return out.getvalue()


def _varint(data: bytes | bytearray, at: int) -> tuple[int, int]:
    """detools' signed size (common.unpack_size) at `at`: (value, next offset)."""
    value, shift, used = 0, 6, 0
    if at >= len(data):
        raise DeltaError("patch ends inside a size")
    byte = data[at]
    negative, value = byte & 0x40, byte & 0x3F
    at += 1
    used = 1
    while byte & 0x80:
        if used >= _MAX_VARINT_BYTES or at >= len(data):
            raise DeltaError("malformed size in patch")
        byte = data[at]
        value |= (byte & 0x7F) << shift
        shift += 7
        at += 1
        used += 1
    return (-value if negative else value), at


def _header(patch: bytes) -> tuple[int, int]:
    """(output size, offset of the compressed body) of a sequential lzma patch."""
    if not patch:
        raise DeltaError("empty patch")
    kind, compression = patch[0] >> 4 & 0x7, patch[0] & 0xF
    if kind != _SEQUENTIAL or compression != _COMPRESSION_LZMA:
        raise DeltaError(f"unsupported patch (type {kind}, compression {compression})")
    size, at = _varint(patch, 1)
    if size < 0:
        raise DeltaError("negative output size in patch")
    return size, at


def _decompress(body: bytes, bound: int, limits: Limits) -> bytes:
    if len(body) < _LZMA_ALONE_HEADER.size:
        raise DeltaError("patch body shorter than its lzma header")
    _, dictionary, _ = _LZMA_ALONE_HEADER.unpack_from(body)
    if dictionary > limits.delta_max_lzma_dictionary:
        raise DeltaError(f"patch asks for a {dictionary}-byte lzma dictionary "
                         f"(at most {limits.delta_max_lzma_dictionary})")
    decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_ALONE)
    try:
        raw = decompressor.decompress(body, max_length=bound + 1)
    except lzma.LZMAError as exc:
        raise DeltaError(f"patch body does not decompress: {exc}") from exc
    if len(raw) > bound:
        raise DeltaError(f"patch body expands past {bound} bytes")
    if not decompressor.eof or decompressor.unused_data:
        raise DeltaError("patch body is truncated or has trailing data")
    return raw


def check_structure(raw: bytes, to_size: int, from_size: int) -> None:
    """Walk a decompressed sequential body as detools will (apply_patch_sequential), and
    refuse anything it would not apply as a well-formed patch."""
    dfpatch, at = _varint(raw, 0)
    if dfpatch != 0:
        raise DeltaError("patch has a data format section (not supported)")
    to_pos, from_pos = 0, 0
    while to_pos < to_size:
        diff, at = _varint(raw, at)
        if diff < 0 or to_pos + diff > to_size or from_pos + diff > from_size or at + diff > len(raw):
            raise DeltaError("patch diff section out of bounds")
        at, to_pos, from_pos = at + diff, to_pos + diff, from_pos + diff
        extra, at = _varint(raw, at)
        if extra < 0 or to_pos + extra > to_size or at + extra > len(raw):
            raise DeltaError("patch extra section out of bounds")
        at, to_pos = at + extra, to_pos + extra
        adjust, at = _varint(raw, at)
        from_pos += adjust
        if not 0 <= from_pos <= from_size:
            raise DeltaError("patch moves outside the source image")
        if diff == 0 and extra == 0 and to_pos < to_size:
            raise DeltaError("patch step writes nothing")
    if at != len(raw):
        raise DeltaError("patch has data past its end")


class _Sink(io.RawIOBase):
    """detools' output file: forwards to `sink`, never past `size` bytes."""

    def __init__(self, sink: Callable[[int, bytes], None], size: int) -> None:
        super().__init__()
        self._sink, self._size, self.written = sink, size, 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        if self.written + len(chunk) > self._size:
            raise DeltaError(f"patch output exceeds the declared {self._size} bytes")
        self._sink(self.written, chunk)
        self.written += len(chunk)
        return len(chunk)


def apply_patch(source: bytes, patch: bytes, image_size: int, sink: Callable[[int, bytes], None],
                limits: Limits = DEFAULT_LIMITS) -> int:
    """Apply `patch` to `source`, handing the output to `sink(offset, data)` in order; it
    must be exactly `image_size` bytes. Returns the bytes written; raises DeltaError."""
    to_size, at = _header(patch)
    if to_size != image_size:
        raise DeltaError(f"patch makes {to_size} bytes, the image is {image_size}")
    raw = _decompress(patch[at:], limits.delta_max_expansion * image_size + limits.delta_body_slack, limits)
    check_structure(raw, to_size, len(source))
    # detools applies the checked body, uncompressed (its "none" compression).
    plain = bytes([_SEQUENTIAL << 4 | _COMPRESSION_NONE]) + patch[1:at] + raw
    out = _Sink(sink, image_size)
    try:
        detools.apply_patch(io.BytesIO(source), io.BytesIO(plain), out)
    except DeltaError:
        raise
    except Exception as exc:  # a library fault on hostile input must not escape as a crash
        raise DeltaError(f"patch does not apply: {type(exc).__name__}: {exc}") from exc
    if out.written != image_size:
        raise DeltaError(f"patch made {out.written} bytes, the image is {image_size}")
    return out.written
