"""The overair firmware image: a 16-byte header in front of the payload.

The header carries the firmware version so that a device can read the version of an
image *before* activating it (anti-rollback, threat N1) and the bootloader can verify
the image length at every boot (P2). The signature covers header and payload together,
so the version cannot be changed without breaking the signature.

Layout (big-endian): magic `OVRI` | format u8 (=1) | security counter u24 |
version u32 (major<<24 | minor<<16 | build) | payload length u32.

The security counter (0 in images that predate it: the bytes were reserved zeros) is
the anti-rollback epoch (N1): a device refuses an image whose counter is below the
highest counter it ever committed. Being in the signed header, it cannot be raised or
lowered without breaking the signature.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from overair.core.errors import DecodeError
from overair.core.versions import Version

MAGIC = b"OVRI"
FORMAT = 1
_HEADER = struct.Struct(">4sB3sII")
HEADER_SIZE = _HEADER.size
MAX_SECURITY_COUNTER = 0xFFFFFF


@dataclass(frozen=True, slots=True)
class ImageHeader:
    version: Version
    payload_length: int
    security_counter: int = 0


def build_image(version: Version, payload: bytes, security_counter: int = 0) -> bytes:
    if not 0 <= security_counter <= MAX_SECURITY_COUNTER:
        raise ValueError(f"security counter {security_counter} out of range (0..{MAX_SECURITY_COUNTER})")
    return (_HEADER.pack(MAGIC, FORMAT, security_counter.to_bytes(3, "big"), version.to_u32(), len(payload))
            + payload)


def parse_header(data: bytes) -> ImageHeader:
    """Read the header of a complete image; the length must match exactly."""
    if len(data) < HEADER_SIZE:
        raise DecodeError("image shorter than its header", code="BadImage")
    magic, fmt, counter, version_word, length = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise DecodeError("not an overair image (bad magic)", code="BadImage")
    if fmt != FORMAT:
        raise DecodeError(f"unsupported image format {fmt}", code="BadImage")
    if length != len(data) - HEADER_SIZE:
        raise DecodeError(
            f"image payload is {len(data) - HEADER_SIZE} bytes, header says {length}",
            code="BadImage",
        )
    return ImageHeader(Version.from_u32(version_word), length, int.from_bytes(counter, "big"))
