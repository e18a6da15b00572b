"""The S3 API (rest-xml, path-style addressing) over the embedded `ObjectStore`.

Routing, input parsing and XML output come from the botocore s3 model (`models.py`);
this module supplies the behaviour of each operation and the S3-specific request
handling: `aws-chunked` bodies (with trailers) and the flexible checksum headers that
current SDKs send by default (`x-amz-checksum-*`, `Content-MD5`), which are verified
against the received bytes before anything is stored.

Operations: ListBuckets, CreateBucket, DeleteBucket, HeadBucket, GetBucketLocation,
Put/GetBucketVersioning, Put/Get/DeleteBucketPolicy, PutObject, GetObject (VersionId,
Range), HeadObject, DeleteObject, ListObjects, ListObjectsV2, ListObjectVersions, and
the multipart upload operations of `s3_multipart.py`. Any other S3 operation answers
`NotImplemented` (501) naming it. Checksum algorithms live in `s3_checksums.py`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import parse_qs

from overair.core import wirejson
from overair.core.asciinum import parse_uint
from overair.core.errors import DecodeError, PeerInputError
from overair.core.limits import DEFAULT_LIMITS, Limits
from overair.server.api import s3_multipart
from overair.server.api.contract import ApiError, Caller
from overair.server.api.models import S3_XMLNS
from overair.server.api.s3_checksums import ALGORITHMS, member_name, verify_checksums
from overair.server.api.s3_common import (
    OWNER,
    STORAGE_CLASS,
    S3Reply,
    list_limit,
    refuse_sse_c,
    timestamp,
    url_encoder,
)
from overair.server.api.s3_conditions import NotModified, apply_overrides, check_preconditions
from overair.server.api.sigv4 import AuthResult, IncomingRequest, decode_aws_chunked
from overair.server.storage.multipart import MultipartStore
from overair.server.storage.objects import (
    NULL_VERSION,
    ObjectStore,
    StoredObject,
    decode_marker,
    encode_marker,
)

# (caller, action such as "s3:GetObject", resource ARN) -> None, or raise ApiError (AccessDenied).
S3Authorizer = Callable[[Caller, str, str], None]


class BucketPolicyPrincipals(Protocol):
    """Binds the IAM users and roles a bucket policy names to their unique ids when it is
    stored, and shows them as ARNs again (server/iam/principals.py; threat O1)."""

    def bind(self, document: str) -> str: ...  # raises PeerInputError: invalid policy
    def render(self, document: str) -> str: ...
Handler = Callable[[dict[str, Any], Caller], S3Reply]

_ROOTS = {
    "ListBuckets": "ListAllMyBucketsResult",
    "ListObjects": "ListBucketResult",
    "ListObjectsV2": "ListBucketResult",
    "ListObjectVersions": "ListVersionsResult",
    "GetBucketVersioning": "VersioningConfiguration",
    "CreateBucket": "CreateBucketResult",
    **s3_multipart.ROOTS,
}

# IAM actions whose name is not "s3:<operation>" (resource: the bucket, or bucket/key).
_ACTIONS = {
    "ListBuckets": "s3:ListAllMyBuckets",
    "HeadBucket": "s3:ListBucket",
    "ListObjects": "s3:ListBucket",
    "ListObjectsV2": "s3:ListBucket",
    "ListObjectVersions": "s3:ListBucketVersions",
    "CreateMultipartUpload": "s3:PutObject",
    "UploadPart": "s3:PutObject",
    "CompleteMultipartUpload": "s3:PutObject",
    "AbortMultipartUpload": "s3:AbortMultipartUpload",
    "ListParts": "s3:ListMultipartUploadParts",
    "ListMultipartUploads": "s3:ListBucketMultipartUploads",
}
# Actions that have a separate "...Version" form when the request names a version.
_VERSIONED_ACTIONS = {
    "HeadObject": ("s3:GetObject", "s3:GetObjectVersion"),
    "GetObject": ("s3:GetObject", "s3:GetObjectVersion"),
    "DeleteObject": ("s3:DeleteObject", "s3:DeleteObjectVersion"),
}


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
            decoded_length = parse_uint(decoded_raw.strip())
            if decoded_length is None:
                raise ApiError("InvalidArgument", "x-amz-decoded-content-length is not a number", 400)
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
    # On CompleteMultipartUpload (the one POST naming an uploadId) the checksum headers
    # describe the assembled object, not the XML body; the operation verifies them.
    describes_object = req.method == "POST" and "uploadId" in parse_qs(req.raw_query, keep_blank_values=True)
    verify_checksums(headers, body, content_md5_only=describes_object)
    return body, headers


# ------------------------------------------------------------------ operations


def _version_header(obj: StoredObject) -> str | None:
    return None if obj.version_id == NULL_VERSION else obj.version_id


def _params_only(handler: Callable[[dict[str, Any]], S3Reply]) -> Handler:
    return lambda params, _caller: handler(params)


# One byte range, ASCII digits of a bounded length (longer is past any object size and
# parses as "not a range" rather than as a 5,000-digit integer).
_RANGE_RE = re.compile(r"bytes=([0-9]{0,20})-([0-9]{0,20})")


def parse_range(spec: str, size: int) -> tuple[int, int] | None:
    """Inclusive (start, end) for a single byte range; None to serve the whole object."""
    match = _RANGE_RE.fullmatch(spec.strip())
    if match is None:
        return None  # multiple or unknown ranges: S3 serves the whole object
    first, last = match.groups()
    if not first and not last:
        return None
    if size == 0:  # no byte of an empty object can be selected (RFC 9110 14.1.1)
        raise _invalid_range(size)
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
        limits: Limits = DEFAULT_LIMITS,
        bucket_policies: BucketPolicyPrincipals | None = None,
    ) -> None:
        self.objects = objects
        self._bucket_policies = bucket_policies
        self.region = region
        self.partition = partition
        self.limits = limits
        self._authorize = authorize
        self.multipart = s3_multipart.MultipartOps(MultipartStore(objects))
        simple: dict[str, Callable[[dict[str, Any]], S3Reply]] = {
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
        self._ops: dict[str, Handler] = {
            **{name: _params_only(handler) for name, handler in simple.items()},
            **self.multipart.handlers(),
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
        reply = handler(params, caller)
        if reply.root is None:
            reply.root = _ROOTS.get(operation)
        return reply

    def action_for(self, operation: str, params: dict[str, Any]) -> tuple[str, str]:
        """The IAM action and resource ARN an S3 operation needs."""
        bucket = params.get("Bucket")
        key = params.get("Key")
        arn = f"arn:{self.partition}:s3:::"
        if operation in _VERSIONED_ACTIONS:
            plain, versioned = _VERSIONED_ACTIONS[operation]
            action = versioned if params.get("VersionId") is not None else plain
        else:
            action = _ACTIONS.get(operation, f"s3:{operation}")
        if bucket is None:
            return action, arn + "*"
        if key is None:
            return action, arn + bucket
        return action, f"{arn}{bucket}/{key}"

    # -- buckets

    def list_buckets(self, params: dict[str, Any]) -> S3Reply:
        """By name; `MaxBuckets` pages, the token is the last name of the page (opaque)."""
        limit = list_limit(params, "MaxBuckets", default=10000)
        after = decode_marker(params["ContinuationToken"]) if params.get("ContinuationToken") else ""
        prefix = params.get("Prefix") or ""
        names = sorted((b for b in self.objects.list_buckets()
                        if b.name.startswith(prefix) and b.name > after), key=lambda b: b.name)
        page = names[:limit]
        output: dict[str, Any] = {
            "Buckets": [{"Name": b.name, "CreationDate": timestamp(b.created_at), "BucketRegion": self.region}
                        for b in page],
            "Owner": OWNER,
        }
        if params.get("Prefix"):
            output["Prefix"] = params["Prefix"]
        if len(names) > limit:
            output["ContinuationToken"] = encode_marker(page[-1].name)
        return S3Reply(output)

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
            doc = wirejson.loads(policy.encode("utf-8"), limits=self.limits,
                                 max_bytes=self.limits.max_bucket_policy_bytes, what="Policy")
        except DecodeError as exc:
            raise ApiError("MalformedPolicy", exc.message, 400) from exc
        if not isinstance(doc, dict) or "Statement" not in doc:
            raise ApiError("MalformedPolicy", "Policy must be a JSON object with a Statement", 400)
        if self._bucket_policies is not None:
            try:
                policy = self._bucket_policies.bind(policy)
            except PeerInputError as exc:
                raise ApiError("MalformedPolicy", exc.message, 400) from None
        self.objects.set_bucket_policy(params["Bucket"], policy)
        return S3Reply(status=204)

    def get_bucket_policy(self, params: dict[str, Any]) -> S3Reply:
        policy = self.objects.get_bucket_policy(params["Bucket"])
        if policy is None:
            raise ApiError("NoSuchBucketPolicy", "The bucket policy does not exist", 404)
        if self._bucket_policies is not None:
            policy = self._bucket_policies.render(policy)
        return S3Reply({"Policy": policy})

    def delete_bucket_policy(self, params: dict[str, Any]) -> S3Reply:
        self.objects.set_bucket_policy(params["Bucket"], None)
        return S3Reply(status=204)

    # -- objects

    def put_object(self, params: dict[str, Any]) -> S3Reply:
        refuse_sse_c(params)
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
        for member in map(member_name, ALGORITHMS):
            if params.get(member):
                output[member] = params[member]
                output["ChecksumType"] = "FULL_OBJECT"
        return S3Reply(output)

    def _object_headers(self, obj: StoredObject) -> dict[str, Any]:
        return {
            "ETag": obj.etag,
            "LastModified": timestamp(obj.last_modified),
            "ContentType": obj.content_type,
            "ContentLength": obj.size,
            "VersionId": _version_header(obj),
            "Metadata": obj.metadata or None,
            "AcceptRanges": "bytes",
        }

    def get_object(self, params: dict[str, Any]) -> S3Reply:
        refuse_sse_c(params)
        obj = self.objects.head_object(params["Bucket"], params["Key"], params.get("VersionId"))
        _check_part_number(obj, params)
        try:
            check_preconditions(params, obj.etag, obj.last_modified)
        except NotModified:
            return _not_modified(obj)
        obj, data = self.objects.get_object(params["Bucket"], params["Key"], obj.version_id)
        output = self._object_headers(obj)
        apply_overrides(params, output)
        status = None
        spec = params.get("Range")
        window = parse_range(spec, obj.size) if spec else None
        if window is not None:
            start, end = window
            data = data[start : end + 1]
            output["ContentRange"] = f"bytes {start}-{end}/{obj.size}"
            output["ContentLength"] = len(data)
            status = 206
        output["Body"] = data
        return S3Reply(output, status=status)

    def head_object(self, params: dict[str, Any]) -> S3Reply:
        refuse_sse_c(params)
        obj = self.objects.head_object(params["Bucket"], params["Key"], params.get("VersionId"))
        _check_part_number(obj, params)
        try:
            check_preconditions(params, obj.etag, obj.last_modified)
        except NotModified:
            return _not_modified(obj)
        output = self._object_headers(obj)
        apply_overrides(params, output)
        return S3Reply(output)

    def delete_object(self, params: dict[str, Any]) -> S3Reply:
        result = self.objects.delete_object(params["Bucket"], params["Key"], params.get("VersionId"))
        output: dict[str, Any] = {}
        if result.delete_marker:
            output["DeleteMarker"] = True
        if result.version_id is not None:
            output["VersionId"] = result.version_id
        return S3Reply(output, status=204)

    def list_objects(self, params: dict[str, Any]) -> S3Reply:
        encode = url_encoder(params)
        max_keys = list_limit(params, "MaxKeys")
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
        encode = url_encoder(params)
        max_keys = list_limit(params, "MaxKeys")
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
            "LastModified": timestamp(obj.last_modified),
            "ETag": obj.etag,
            "Size": obj.size,
            "StorageClass": STORAGE_CLASS,
        }

    def list_object_versions(self, params: dict[str, Any]) -> S3Reply:
        encode = url_encoder(params)
        max_keys = list_limit(params, "MaxKeys")
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
                "LastModified": timestamp(obj.last_modified),
                "Owner": OWNER,
            }
            if obj.delete_marker:
                markers.append(common)
            else:
                versions.append({**common, "ETag": obj.etag, "Size": obj.size, "StorageClass": STORAGE_CLASS})
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


def _check_part_number(obj: StoredObject, params: dict[str, Any]) -> None:
    """GetObject/HeadObject by part: the whole object is part 1 of a single-part object;
    the part layout of a completed multipart upload is not kept."""
    number = params.get("PartNumber")
    if number is None:
        return
    if int(number) == 1 and "-" not in obj.etag:
        return
    raise ApiError(
        "NotImplemented", "Reading one part of a multipart object (partNumber) is not implemented by overair",
        501,
    )


def _not_modified(obj: StoredObject) -> S3Reply:
    """304 with no body, as S3 answers (botocore raises ClientError with code 304)."""
    return S3Reply({"ETag": obj.etag, "LastModified": timestamp(obj.last_modified)}, status=304, raw_body=b"")
