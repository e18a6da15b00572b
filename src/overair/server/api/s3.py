"""The S3 API (rest-xml, path-style addressing) over the embedded `ObjectStore`.

Routing, input parsing and XML output come from the botocore s3 model (`models.py`);
this module supplies the behaviour of each operation and the S3-specific request
handling: `aws-chunked` bodies (with trailers) and the flexible checksum headers that
current SDKs send by default (`x-amz-checksum-*`, `Content-MD5`), which are verified
against the received bytes before anything is stored.

Operations: ListBuckets, CreateBucket, DeleteBucket, HeadBucket, GetBucketLocation,
Put/GetBucketVersioning, Put/Get/DeleteBucketPolicy, PutObject, GetObject (VersionId,
Range), HeadObject, DeleteObject, ListObjects, ListObjectsV2, ListObjectVersions.
Any other S3 operation answers `NotImplemented` (501) naming it.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from overair.server.api.contract import ApiError, Caller
from overair.server.api.models import S3_XMLNS
from overair.server.api.sigv4 import AuthResult, IncomingRequest, decode_aws_chunked
from overair.server.storage.objects import (
    NULL_VERSION,
    ObjectStore,
    StoredObject,
    decode_marker,
    encode_marker,
)

OWNER = {"ID": "overair", "DisplayName": "overair"}

# (caller, action such as "s3:GetObject", resource ARN) -> None, or raise ApiError (AccessDenied).
S3Authorizer = Callable[[Caller, str, str], None]

_ROOTS = {
    "ListBuckets": "ListAllMyBucketsResult",
    "ListObjects": "ListBucketResult",
    "ListObjectsV2": "ListBucketResult",
    "ListObjectVersions": "ListVersionsResult",
    "GetBucketVersioning": "VersioningConfiguration",
    "CreateBucket": "CreateBucketResult",
}


# ------------------------------------------------------------------ checksums


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


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def crc64nvme(data: bytes) -> int:
    mask = 0xFFFFFFFFFFFFFFFF
    crc = mask
    table = _CRC64NVME_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ mask


def _digest(algorithm: str, data: bytes) -> bytes:
    if algorithm == "crc32":
        return zlib.crc32(data).to_bytes(4, "big")
    if algorithm == "crc32c":
        return crc32c(data).to_bytes(4, "big")
    if algorithm == "crc64nvme":
        return crc64nvme(data).to_bytes(8, "big")
    if algorithm in ("sha1", "sha256", "sha512"):
        return hashlib.new(algorithm, data).digest()
    if algorithm == "md5":
        return hashlib.md5(data, usedforsecurity=False).digest()
    raise ApiError("InvalidRequest", f"Checksum algorithm {algorithm} is not supported by overair", 400)


def checksum_b64(algorithm: str, data: bytes) -> str:
    """The base64 checksum S3 would compute for `algorithm` (crc32, crc32c, sha256, ...)."""
    return base64.b64encode(_digest(algorithm.lower(), data)).decode("ascii")


_NOT_CHECKSUMS = {"x-amz-checksum-type", "x-amz-checksum-mode", "x-amz-checksum-algorithm"}


def verify_checksums(headers: dict[str, str], body: bytes) -> None:
    """Check every `x-amz-checksum-<alg>` value and `Content-MD5` against the body."""
    for name, value in headers.items():
        if not name.startswith("x-amz-checksum-") or name in _NOT_CHECKSUMS:
            continue
        algorithm = name.removeprefix("x-amz-checksum-")
        if not hmac.compare_digest(checksum_b64(algorithm, body), value.strip()):
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


def decode_body(req: IncomingRequest, auth: AuthResult) -> tuple[bytes, dict[str, str]]:
    """The payload of an S3 request and its headers (lower-case, trailers merged in).

    Decodes `aws-chunked` bodies (verifying chunk signatures when signed), checks
    `x-amz-decoded-content-length`, and verifies all checksums."""
    headers: dict[str, str] = {}
    for name, value in req.headers:
        lname = name.lower()
        headers[lname] = f"{headers[lname]},{value}" if lname in headers else value
    body = req.body
    if auth.streaming:
        decoded_raw = headers.get("x-amz-decoded-content-length")
        decoded_length: int | None = None
        if decoded_raw is not None:
            if not decoded_raw.strip().isdigit():
                raise ApiError("InvalidArgument", "x-amz-decoded-content-length is not a number", 400)
            decoded_length = int(decoded_raw)
        body, trailers = decode_aws_chunked(body, auth, decoded_length)
        declared = {t.strip().lower() for t in headers.get("x-amz-trailer", "").split(",") if t.strip()}
        for name in trailers:
            if name not in declared:
                raise ApiError("InvalidRequest", f"Trailer {name} was not declared in x-amz-trailer", 400)
        headers.update(trailers)
        encodings = [e.strip() for e in headers.get("content-encoding", "").split(",")]
        remaining = [e for e in encodings if e and e != "aws-chunked"]
        if remaining:
            headers["content-encoding"] = ",".join(remaining)
        else:
            headers.pop("content-encoding", None)
        headers["content-length"] = str(len(body))
    verify_checksums(headers, body)
    return body, headers


# ------------------------------------------------------------------ operations


@dataclass(slots=True)
class S3Reply:
    """An operation's output members, plus how to render them."""

    output: dict[str, Any] = field(default_factory=dict)
    status: int | None = None
    root: str | None = None  # XML root element name
    raw_body: bytes | None = None  # a verbatim XML body (GetBucketLocation)


def _ts(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, tz=dt.UTC)


def _version_header(obj: StoredObject) -> str | None:
    return None if obj.version_id == NULL_VERSION else obj.version_id


_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _parse_range(spec: str, size: int) -> tuple[int, int] | None:
    """Inclusive (start, end) for a single byte range; None to serve the whole object."""
    match = _RANGE_RE.match(spec.strip())
    if match is None:
        return None  # multiple or unknown ranges: S3 serves the whole object
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:
        length = int(last)
        if length == 0:
            raise _invalid_range(size)
        return max(0, size - length), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if start >= size or (last and end < start):
        raise _invalid_range(size)
    return start, min(end, size - 1)


def _invalid_range(size: int) -> ApiError:
    return ApiError("InvalidRange", f"The requested range is not satisfiable (object size {size})", 416)


class S3Api:
    """Implements the S3 operations; `call` is synchronous (run it in a worker thread)."""

    def __init__(
        self,
        objects: ObjectStore,
        *,
        region: str,
        authorize: S3Authorizer | None = None,
        partition: str = "aws",
    ) -> None:
        self.objects = objects
        self.region = region
        self.partition = partition
        self._authorize = authorize
        self._ops: dict[str, Callable[[dict[str, Any]], S3Reply]] = {
            "ListBuckets": self.list_buckets,
            "CreateBucket": self.create_bucket,
            "DeleteBucket": self.delete_bucket,
            "HeadBucket": self.head_bucket,
            "GetBucketLocation": self.get_bucket_location,
            "PutBucketVersioning": self.put_bucket_versioning,
            "GetBucketVersioning": self.get_bucket_versioning,
            "PutBucketPolicy": self.put_bucket_policy,
            "GetBucketPolicy": self.get_bucket_policy,
            "DeleteBucketPolicy": self.delete_bucket_policy,
            "PutObject": self.put_object,
            "GetObject": self.get_object,
            "HeadObject": self.head_object,
            "DeleteObject": self.delete_object,
            "ListObjects": self.list_objects,
            "ListObjectsV2": self.list_objects_v2,
            "ListObjectVersions": self.list_object_versions,
        }

    def operations(self) -> list[str]:
        return sorted(self._ops)

    def call(self, operation: str, params: dict[str, Any], caller: Caller) -> S3Reply:
        handler = self._ops.get(operation)
        if handler is None:
            raise ApiError("NotImplemented", f"s3:{operation} is not implemented by overair", 501)
        if self._authorize is not None:
            action, resource = self.action_for(operation, params)
            self._authorize(caller, action, resource)
        reply = handler(params)
        if reply.root is None:
            reply.root = _ROOTS.get(operation)
        return reply

    def action_for(self, operation: str, params: dict[str, Any]) -> tuple[str, str]:
        """The IAM action and resource ARN an S3 operation needs."""
        bucket = params.get("Bucket")
        key = params.get("Key")
        versioned = params.get("VersionId") is not None
        arn = f"arn:{self.partition}:s3:::"
        actions = {
            "ListBuckets": "s3:ListAllMyBuckets",
            "HeadBucket": "s3:ListBucket",
            "ListObjects": "s3:ListBucket",
            "ListObjectsV2": "s3:ListBucket",
            "ListObjectVersions": "s3:ListBucketVersions",
            "HeadObject": "s3:GetObjectVersion" if versioned else "s3:GetObject",
            "GetObject": "s3:GetObjectVersion" if versioned else "s3:GetObject",
            "DeleteObject": "s3:DeleteObjectVersion" if versioned else "s3:DeleteObject",
        }
        action = actions.get(operation, f"s3:{operation}")
        if bucket is None:
            return action, arn + "*"
        if key is None:
            return action, arn + bucket
        return action, f"{arn}{bucket}/{key}"

    # -- buckets

    def list_buckets(self, params: dict[str, Any]) -> S3Reply:
        buckets = [
            {"Name": b.name, "CreationDate": _ts(b.created_at), "BucketRegion": self.region}
            for b in self.objects.list_buckets()
            if not params.get("Prefix") or b.name.startswith(params["Prefix"])
        ]
        return S3Reply({"Buckets": buckets, "Owner": OWNER})

    def create_bucket(self, params: dict[str, Any]) -> S3Reply:
        config = params.get("CreateBucketConfiguration") or {}
        constraint = config.get("LocationConstraint")
        if constraint and constraint != self.region:
            raise ApiError(
                "IllegalLocationConstraintException",
                f"The {constraint} location constraint is incompatible with the region of this "
                f"endpoint ({self.region})",
                400,
            )
        self.objects.create_bucket(params["Bucket"])
        return S3Reply({"Location": "/" + params["Bucket"]})

    def delete_bucket(self, params: dict[str, Any]) -> S3Reply:
        self.objects.delete_bucket(params["Bucket"])
        return S3Reply(status=204)

    def head_bucket(self, params: dict[str, Any]) -> S3Reply:
        self.objects.get_bucket(params["Bucket"])
        return S3Reply({"BucketRegion": self.region})

    def get_bucket_location(self, params: dict[str, Any]) -> S3Reply:
        self.objects.get_bucket(params["Bucket"])
        constraint = "" if self.region == "us-east-1" else self.region
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<LocationConstraint xmlns="{S3_XMLNS}">{constraint}</LocationConstraint>'
        ).encode()
        return S3Reply(raw_body=body)

    def put_bucket_versioning(self, params: dict[str, Any]) -> S3Reply:
        config = params.get("VersioningConfiguration") or {}
        status = config.get("Status")
        if status is None:
            raise ApiError("MalformedXML", "VersioningConfiguration must contain a Status", 400)
        self.objects.set_versioning(params["Bucket"], status)
        return S3Reply()

    def get_bucket_versioning(self, params: dict[str, Any]) -> S3Reply:
        status = self.objects.get_versioning(params["Bucket"])
        return S3Reply({"Status": status} if status else {})

    def put_bucket_policy(self, params: dict[str, Any]) -> S3Reply:
        policy = params.get("Policy") or ""
        try:
            doc = json.loads(policy)
        except ValueError as exc:
            raise ApiError("MalformedPolicy", f"Policy is not valid JSON: {exc}", 400) from exc
        if not isinstance(doc, dict) or "Statement" not in doc:
            raise ApiError("MalformedPolicy", "Policy must be a JSON object with a Statement", 400)
        self.objects.set_bucket_policy(params["Bucket"], policy)
        return S3Reply(status=204)

    def get_bucket_policy(self, params: dict[str, Any]) -> S3Reply:
        policy = self.objects.get_bucket_policy(params["Bucket"])
        if policy is None:
            raise ApiError("NoSuchBucketPolicy", "The bucket policy does not exist", 404)
        return S3Reply({"Policy": policy})

    def delete_bucket_policy(self, params: dict[str, Any]) -> S3Reply:
        self.objects.set_bucket_policy(params["Bucket"], None)
        return S3Reply(status=204)

    # -- objects

    def put_object(self, params: dict[str, Any]) -> S3Reply:
        if params.get("SSECustomerAlgorithm") or params.get("SSECustomerKey"):
            raise ApiError("NotImplemented", "SSE-C is not implemented by overair", 501)
        if params.get("WriteOffsetBytes") is not None:
            raise ApiError("NotImplemented", "Appending writes are not implemented by overair", 501)
        data = params.get("Body") or b""
        obj = self.objects.put_object(
            params["Bucket"],
            params["Key"],
            data,
            content_type=params.get("ContentType"),
            metadata=params.get("Metadata"),
        )
        output: dict[str, Any] = {"ETag": obj.etag, "VersionId": _version_header(obj)}
        for member in ("ChecksumCRC32", "ChecksumCRC32C", "ChecksumCRC64NVME", "ChecksumSHA1",
                       "ChecksumSHA256"):
            if params.get(member):
                output[member] = params[member]
                output["ChecksumType"] = "FULL_OBJECT"
        return S3Reply(output)

    def _object_headers(self, obj: StoredObject) -> dict[str, Any]:
        return {
            "ETag": obj.etag,
            "LastModified": _ts(obj.last_modified),
            "ContentType": obj.content_type,
            "ContentLength": obj.size,
            "VersionId": _version_header(obj),
            "Metadata": obj.metadata or None,
            "AcceptRanges": "bytes",
        }

    def get_object(self, params: dict[str, Any]) -> S3Reply:
        obj, data = self.objects.get_object(params["Bucket"], params["Key"], params.get("VersionId"))
        output = self._object_headers(obj)
        status = None
        spec = params.get("Range")
        window = _parse_range(spec, obj.size) if spec else None
        if window is not None:
            start, end = window
            data = data[start : end + 1]
            output["ContentRange"] = f"bytes {start}-{end}/{obj.size}"
            output["ContentLength"] = len(data)
            status = 206
        output["Body"] = data
        return S3Reply(output, status=status)

    def head_object(self, params: dict[str, Any]) -> S3Reply:
        obj = self.objects.head_object(params["Bucket"], params["Key"], params.get("VersionId"))
        return S3Reply(self._object_headers(obj))

    def delete_object(self, params: dict[str, Any]) -> S3Reply:
        result = self.objects.delete_object(params["Bucket"], params["Key"], params.get("VersionId"))
        output: dict[str, Any] = {}
        if result.delete_marker:
            output["DeleteMarker"] = True
        if result.version_id is not None:
            output["VersionId"] = result.version_id
        return S3Reply(output, status=204)

    def list_objects(self, params: dict[str, Any]) -> S3Reply:
        encode = _encoder(params)
        max_keys = int(params.get("MaxKeys", 1000))
        listing = self.objects.list_objects(
            params["Bucket"], params.get("Prefix") or "", delimiter=params.get("Delimiter"),
            max_keys=max_keys, marker=params.get("Marker"),
        )
        return S3Reply({
            "Name": params["Bucket"],
            "Prefix": encode(params.get("Prefix") or ""),
            "Delimiter": encode(params.get("Delimiter")),
            "Marker": encode(params.get("Marker") or ""),
            "NextMarker": encode(listing.next_marker) if params.get("Delimiter") else None,
            "MaxKeys": max_keys,
            "IsTruncated": listing.is_truncated,
            "Contents": [self._content(o, encode) for o in listing.objects] or None,
            "CommonPrefixes": [{"Prefix": encode(p)} for p in listing.common_prefixes] or None,
            "EncodingType": params.get("EncodingType"),
        })

    def list_objects_v2(self, params: dict[str, Any]) -> S3Reply:
        encode = _encoder(params)
        max_keys = int(params.get("MaxKeys", 1000))
        token = params.get("ContinuationToken")
        marker = decode_marker(token) if token else params.get("StartAfter")
        listing = self.objects.list_objects(
            params["Bucket"], params.get("Prefix") or "", delimiter=params.get("Delimiter"),
            max_keys=max_keys, marker=marker,
        )
        contents = [self._content(o, encode) for o in listing.objects]
        return S3Reply({
            "Name": params["Bucket"],
            "Prefix": encode(params.get("Prefix") or ""),
            "Delimiter": encode(params.get("Delimiter")),
            "MaxKeys": max_keys,
            "KeyCount": len(contents) + len(listing.common_prefixes),
            "IsTruncated": listing.is_truncated,
            "ContinuationToken": token,
            "NextContinuationToken": encode_marker(listing.next_marker) if listing.next_marker else None,
            "StartAfter": encode(params.get("StartAfter")),
            "Contents": contents or None,
            "CommonPrefixes": [{"Prefix": encode(p)} for p in listing.common_prefixes] or None,
            "EncodingType": params.get("EncodingType"),
        })

    @staticmethod
    def _content(obj: StoredObject, encode: Callable[[str | None], str | None]) -> dict[str, Any]:
        return {
            "Key": encode(obj.key),
            "LastModified": _ts(obj.last_modified),
            "ETag": obj.etag,
            "Size": obj.size,
            "StorageClass": "STANDARD",
        }

    def list_object_versions(self, params: dict[str, Any]) -> S3Reply:
        encode = _encoder(params)
        max_keys = int(params.get("MaxKeys", 1000))
        listing = self.objects.list_object_versions(
            params["Bucket"], params.get("Prefix") or "", delimiter=params.get("Delimiter"),
            max_keys=max_keys, key_marker=params.get("KeyMarker"),
            version_id_marker=params.get("VersionIdMarker"),
        )
        versions = []
        markers = []
        for entry in listing.versions:
            obj = entry.object
            common = {
                "Key": encode(obj.key),
                "VersionId": obj.version_id,
                "IsLatest": entry.is_latest,
                "LastModified": _ts(obj.last_modified),
                "Owner": OWNER,
            }
            if obj.delete_marker:
                markers.append(common)
            else:
                versions.append({**common, "ETag": obj.etag, "Size": obj.size, "StorageClass": "STANDARD"})
        return S3Reply({
            "Name": params["Bucket"],
            "Prefix": encode(params.get("Prefix") or ""),
            "Delimiter": encode(params.get("Delimiter")),
            "KeyMarker": encode(params.get("KeyMarker") or ""),
            "VersionIdMarker": params.get("VersionIdMarker") or "",
            "NextKeyMarker": encode(listing.next_key_marker),
            "NextVersionIdMarker": listing.next_version_id_marker,
            "MaxKeys": max_keys,
            "IsTruncated": listing.is_truncated,
            "Versions": versions or None,
            "DeleteMarkers": markers or None,
            "CommonPrefixes": [{"Prefix": encode(p)} for p in listing.common_prefixes] or None,
            "EncodingType": params.get("EncodingType"),
        })


def _encoder(params: dict[str, Any]) -> Callable[[str | None], str | None]:
    """URL-encode key names in list output when the client asked for encoding-type=url."""
    if params.get("EncodingType") == "url":
        return lambda v: None if v is None else quote(v, safe="/")
    return lambda v: v
