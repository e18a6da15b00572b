"""S3's flexible checksums: the algorithms, their base64 wire form, and the checks.

Current SDKs send `x-amz-checksum-<algorithm>` (CRC32 by default) with every upload,
either as a header or as an `aws-chunked` trailer; S3 refuses a body whose checksum
does not match (`BadDigest`). Multipart uploads add two object-level forms: a
COMPOSITE checksum (the checksum of the concatenated binary part checksums, written
`<base64>-<part count>`) and a FULL_OBJECT checksum (the checksum of all bytes, which
for a CRC is what a single PUT of the whole object would have carried).

CRC32 comes from zlib; CRC32C and CRC64NVME are table-driven here because no
dependency provides them (botocore itself needs the optional awscrt for both).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import zlib
from typing import Any

from overair.server.api.contract import ApiError

# The algorithms S3 accepts for objects and multipart uploads, in botocore's spelling.
ALGORITHMS = ("CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256")
# Only CRCs can be combined over parts into a checksum of the whole object.
FULL_OBJECT_ALGORITHMS = frozenset({"CRC32", "CRC32C", "CRC64NVME"})


def _crc_table(poly: int) -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C_TABLE = _crc_table(0x82F63B78)
_CRC64NVME_TABLE = _crc_table(0x9A6C9329AC4BC9B5)
_MASK32 = 0xFFFFFFFF
_MASK64 = 0xFFFFFFFFFFFFFFFF


def _reflected_crc(table: list[int], mask: int, data: bytes, value: int) -> int:
    crc = value ^ mask
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ mask


def crc32c(data: bytes, value: int = 0) -> int:
    """CRC-32C (Castagnoli); pass the previous result as `value` to continue (like zlib.crc32)."""
    return _reflected_crc(_CRC32C_TABLE, _MASK32, data, value)


def crc64nvme(data: bytes, value: int = 0) -> int:
    """CRC-64/NVME; pass the previous result as `value` to continue."""
    return _reflected_crc(_CRC64NVME_TABLE, _MASK64, data, value)


class Checksummer:
    """An incremental checksum of one algorithm (crc32, crc32c, crc64nvme, sha1, ...)."""

    def __init__(self, algorithm: str) -> None:
        self.algorithm = algorithm.lower()
        self._crc = 0
        self._hash: Any = None
        if self.algorithm in ("sha1", "sha256", "sha512"):
            self._hash = hashlib.new(self.algorithm)
        elif self.algorithm == "md5":
            self._hash = hashlib.md5(usedforsecurity=False)
        elif self.algorithm not in ("crc32", "crc32c", "crc64nvme"):
            raise ApiError(
                "InvalidRequest", f"Checksum algorithm {algorithm} is not supported by overair", 400
            )

    def update(self, data: bytes) -> None:
        if self._hash is not None:
            self._hash.update(data)
        elif self.algorithm == "crc32":
            self._crc = zlib.crc32(data, self._crc)
        elif self.algorithm == "crc32c":
            self._crc = crc32c(data, self._crc)
        else:
            self._crc = crc64nvme(data, self._crc)

    def digest(self) -> bytes:
        if self._hash is not None:
            return bytes(self._hash.digest())
        return self._crc.to_bytes(8 if self.algorithm == "crc64nvme" else 4, "big")

    def b64(self) -> str:
        return base64.b64encode(self.digest()).decode("ascii")


def checksum_b64(algorithm: str, data: bytes) -> str:
    """The base64 checksum S3 would compute for `algorithm` (crc32, crc32c, sha256, ...)."""
    summer = Checksummer(algorithm)
    summer.update(data)
    return summer.b64()


def composite_b64(algorithm: str, part_checksums: list[str]) -> str:
    """A multipart upload's COMPOSITE checksum from its parts' base64 checksums."""
    summer = Checksummer(algorithm)
    for value in part_checksums:
        summer.update(base64.b64decode(value))
    return f"{summer.b64()}-{len(part_checksums)}"


def member_name(algorithm: str) -> str:
    """The botocore member carrying a checksum, e.g. ChecksumCRC32."""
    return "Checksum" + algorithm.upper()


def sent_checksums(params: dict[str, Any]) -> dict[str, str]:
    """The checksums (algorithm -> base64) a request carried, by botocore member."""
    return {a: str(params[member_name(a)]) for a in ALGORITHMS if params.get(member_name(a))}


_NOT_CHECKSUMS = {"x-amz-checksum-type", "x-amz-checksum-mode", "x-amz-checksum-algorithm"}


def verify_checksums(headers: dict[str, str], body: bytes, *, content_md5_only: bool = False) -> None:
    """Check every `x-amz-checksum-<alg>` value and `Content-MD5` against the body."""
    for name, value in headers.items():
        if content_md5_only or not name.startswith("x-amz-checksum-") or name in _NOT_CHECKSUMS:
            continue
        algorithm = name.removeprefix("x-amz-checksum-")
        expected = value.strip().encode("latin-1", "replace")
        if not hmac.compare_digest(checksum_b64(algorithm, body).encode("ascii"), expected):
            raise ApiError(
                "BadDigest",
                f"The {algorithm.upper()} you specified did not match the calculated checksum.",
                400,
            )
    md5 = headers.get("content-md5")
    if md5 is not None:
        try:
            expected = base64.b64decode(md5.strip(), validate=True)
        except (ValueError, binascii.Error) as exc:
            raise ApiError("InvalidDigest", "The Content-MD5 you specified is not valid.", 400) from exc
        if not hmac.compare_digest(hashlib.md5(body, usedforsecurity=False).digest(), expected):
            raise ApiError("BadDigest", "The Content-MD5 you specified did not match what we received.", 400)
