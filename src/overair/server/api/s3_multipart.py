"""S3 multipart upload operations over `MultipartStore`.

CreateMultipartUpload, UploadPart, CompleteMultipartUpload, AbortMultipartUpload,
ListParts and ListMultipartUploads, with S3's checksum rules: an upload created with a
checksum algorithm gets that algorithm's checksum on every part (the client's, already
verified against the bytes by `decode_body`, or computed here) and an object checksum
on completion, COMPOSITE (`<base64>-<parts>`) or FULL_OBJECT (CRCs only). Part
checksums listed in the completion request must match the stored ones (InvalidPart),
and an object checksum the client states is verified before the object is created
(BadDigest).

UploadPartCopy is not offered: reading its source would need a second authorization
(s3:GetObject on the source) that the one-action-per-operation model cannot express.
"""

from __future__ import annotations

import hmac
from typing import Any
from urllib.parse import quote

from overair.server.api.contract import ApiError, Caller
from overair.server.api.s3_checksums import (
    ALGORITHMS,
    FULL_OBJECT_ALGORITHMS,
    Checksummer,
    checksum_b64,
    composite_b64,
    member_name,
    sent_checksums,
)
from overair.server.api.s3_common import (
    OWNER,
    STORAGE_CLASS,
    S3Reply,
    list_limit,
    refuse_sse_c,
    timestamp,
    url_encoder,
)
from overair.server.storage.multipart import (
    Assembly,
    MultipartStore,
    PartInfo,
    RequestedPart,
    UploadInfo,
)

CHECKSUM_TYPES = ("COMPOSITE", "FULL_OBJECT")
# Checksum members the model has but S3 multipart uploads do not take (never ignored silently).
_OTHER_CHECKSUM_MEMBERS = ("ChecksumSHA512", "ChecksumMD5", "ChecksumXXHASH64", "ChecksumXXHASH3",
                           "ChecksumXXHASH128")

ROOTS = {
    "CreateMultipartUpload": "InitiateMultipartUploadResult",
    "CompleteMultipartUpload": "CompleteMultipartUploadResult",
    "ListParts": "ListPartsResult",
    "ListMultipartUploads": "ListMultipartUploadsResult",
}


def _invalid_request(message: str) -> ApiError:
    return ApiError("InvalidRequest", message, 400)


def upload_checksum_config(algorithm: str | None, checksum_type: str | None) -> tuple[str | None, str | None]:
    """The (algorithm, type) an upload will use, with S3's defaults and combinations."""
    if algorithm is None:
        if checksum_type is not None:
            raise _invalid_request("x-amz-checksum-type requires x-amz-checksum-algorithm")
        return None, None
    algorithm = algorithm.upper()
    if algorithm not in ALGORITHMS:
        raise _invalid_request(f"Checksum algorithm {algorithm} is not supported for multipart uploads")
    if checksum_type is None:
        checksum_type = "FULL_OBJECT" if algorithm == "CRC64NVME" else "COMPOSITE"
    if checksum_type not in CHECKSUM_TYPES:
        raise _invalid_request(f"Checksum type {checksum_type} is not COMPOSITE or FULL_OBJECT")
    if checksum_type == "FULL_OBJECT" and algorithm not in FULL_OBJECT_ALGORITHMS:
        raise _invalid_request(f"The FULL_OBJECT checksum type cannot be used with {algorithm}")
    if checksum_type == "COMPOSITE" and algorithm == "CRC64NVME":
        raise _invalid_request("The COMPOSITE checksum type cannot be used with CRC64NVME")
    return algorithm, checksum_type


def part_checksum(upload: UploadInfo, sent: dict[str, str], data: bytes) -> tuple[str | None, str | None]:
    """The (algorithm, base64) a part is stored with; `sent` has been verified already."""
    expected = upload.checksum_algorithm
    if expected is None:
        if len(sent) > 1:
            raise _invalid_request("Expecting a single x-amz-checksum- header")
        return next(iter(sent.items())) if sent else (None, None)
    other = sorted(set(sent) - {expected})
    if other:
        raise _invalid_request(
            f"Checksum Type mismatch occurred, expected checksum Type: {expected.lower()}, "
            f"actual checksum Type: {other[0].lower()}"
        )
    return expected, sent.get(expected) or checksum_b64(expected, data)


def _composite(algorithm: str, parts: list[PartInfo]) -> str:
    values = [p.checksum for p in parts if p.checksum_algorithm == algorithm and p.checksum]
    if len(values) != len(parts):
        raise _invalid_request(f"Not every part of the upload has a {algorithm} checksum")
    return composite_b64(algorithm, values)


def _requested_part(part: dict[str, Any]) -> RequestedPart:
    """One <Part> of a CompleteMultipartUpload body; the model leaves its members optional,
    S3 does not."""
    number = part.get("PartNumber")
    if number is None:
        raise ApiError("MalformedXML", "Every Part of CompleteMultipartUpload needs a PartNumber", 400)
    return RequestedPart(int(number), str(part.get("ETag") or ""), sent_checksums(part))


class MultipartOps:
    """The handlers; `S3Api` routes to them and authorizes each call first."""

    def __init__(self, uploads: MultipartStore) -> None:
        self.uploads = uploads

    def handlers(self) -> dict[str, Any]:
        return {
            "CreateMultipartUpload": self.create_multipart_upload,
            "UploadPart": self.upload_part,
            "CompleteMultipartUpload": self.complete_multipart_upload,
            "AbortMultipartUpload": self.abort_multipart_upload,
            "ListParts": self.list_parts,
            "ListMultipartUploads": self.list_multipart_uploads,
        }

    def create_multipart_upload(self, params: dict[str, Any], caller: Caller) -> S3Reply:
        refuse_sse_c(params)
        algorithm, checksum_type = upload_checksum_config(
            params.get("ChecksumAlgorithm"), params.get("ChecksumType")
        )
        upload = self.uploads.create(
            params["Bucket"],
            params["Key"],
            content_type=params.get("ContentType"),
            metadata=params.get("Metadata"),
            checksum_algorithm=algorithm,
            checksum_type=checksum_type,
            initiator=caller.principal_arn or caller.principal_name,
        )
        return S3Reply({
            "Bucket": upload.bucket,
            "Key": upload.key,
            "UploadId": upload.upload_id,
            "ChecksumAlgorithm": algorithm,
            "ChecksumType": checksum_type,
        })

    def upload_part(self, params: dict[str, Any], caller: Caller) -> S3Reply:
        refuse_sse_c(params)
        bucket, key, upload_id = params["Bucket"], params["Key"], params["UploadId"]
        data = params.get("Body") or b""
        upload = self.uploads.get_upload(bucket, key, upload_id)
        algorithm, value = part_checksum(upload, sent_checksums(params), data)
        part = self.uploads.upload_part(
            bucket, key, upload_id, int(params["PartNumber"]), data,
            checksum_algorithm=algorithm, checksum=value,
        )
        output: dict[str, Any] = {"ETag": part.etag}
        if algorithm is not None:
            output[member_name(algorithm)] = value
        return S3Reply(output)

    def complete_multipart_upload(self, params: dict[str, Any], caller: Caller) -> S3Reply:
        refuse_sse_c(params)
        if params.get("IfMatch") or params.get("IfNoneMatch"):
            raise ApiError(
                "NotImplemented", "Conditional CompleteMultipartUpload is not implemented by overair", 501
            )
        bucket, key, upload_id = params["Bucket"], params["Key"], params["UploadId"]
        requested = [_requested_part(p) for p in (params.get("MultipartUpload") or {}).get("Parts") or []]
        upload = self.uploads.get_upload(bucket, key, upload_id)
        claimed = sent_checksums(params)
        unsupported = [m for m in _OTHER_CHECKSUM_MEMBERS if params.get(m)]
        if unsupported:
            raise _invalid_request(f"{unsupported[0]} is not supported for multipart uploads")
        # Full-object checksums are computed while the parts stream into the object.
        summers = {a: Checksummer(a) for a, v in claimed.items() if "-" not in v}
        if upload.checksum_type == "FULL_OBJECT" and upload.checksum_algorithm is not None:
            summers.setdefault(upload.checksum_algorithm, Checksummer(upload.checksum_algorithm))

        def observe(block: bytes) -> None:
            for summer in summers.values():
                summer.update(block)

        with self.uploads.assemble(bucket, key, upload_id, requested,
                                   observe=observe if summers else None) as assembly:
            expected_size = params.get("MpuObjectSize")
            if expected_size is not None and int(expected_size) != assembly.size:
                raise _invalid_request(
                    f"x-amz-mp-object-size is {expected_size} but the parts add up to {assembly.size} bytes"
                )
            checksums = self._object_checksums(upload, assembly, summers)
            for algorithm, value in claimed.items():
                actual = _composite(algorithm, assembly.parts) if "-" in value else summers[algorithm].b64()
                if not hmac.compare_digest(actual.encode(), value.strip().encode("latin-1", "replace")):
                    raise ApiError(
                        "BadDigest",
                        f"The {algorithm} you specified did not match the calculated checksum.",
                        400,
                    )
            stored = self.uploads.commit(assembly)
        output: dict[str, Any] = {
            "Location": f"/{quote(bucket)}/{quote(key)}",
            "Bucket": bucket,
            "Key": key,
            "ETag": stored.etag,
            "VersionId": None if stored.version_id == "null" else stored.version_id,
        }
        if upload.checksum_algorithm is not None:
            output[member_name(upload.checksum_algorithm)] = checksums[upload.checksum_algorithm]
            output["ChecksumType"] = upload.checksum_type
        return S3Reply(output)

    @staticmethod
    def _object_checksums(
        upload: UploadInfo, assembly: Assembly, summers: dict[str, Checksummer]
    ) -> dict[str, str]:
        algorithm = upload.checksum_algorithm
        if algorithm is None:
            return {}
        if upload.checksum_type == "FULL_OBJECT":
            return {algorithm: summers[algorithm].b64()}
        return {algorithm: _composite(algorithm, assembly.parts)}

    def abort_multipart_upload(self, params: dict[str, Any], caller: Caller) -> S3Reply:
        if params.get("IfMatchInitiatedTime") is not None:
            raise ApiError(
                "NotImplemented", "Conditional AbortMultipartUpload is not implemented by overair", 501
            )
        self.uploads.abort(params["Bucket"], params["Key"], params["UploadId"])
        return S3Reply(status=204)

    def list_parts(self, params: dict[str, Any], caller: Caller) -> S3Reply:
        refuse_sse_c(params)
        max_parts = list_limit(params, "MaxParts")
        marker = int(params.get("PartNumberMarker") or 0)
        if marker < 0:
            raise ApiError("InvalidArgument", "PartNumberMarker must not be negative", 400)
        listing = self.uploads.list_parts(
            params["Bucket"], params["Key"], params["UploadId"],
            max_parts=max_parts, part_number_marker=marker,
        )
        upload = listing.upload
        parts = []
        for part in listing.parts:
            entry: dict[str, Any] = {
                "PartNumber": part.part_number,
                "LastModified": timestamp(part.last_modified),
                "ETag": part.etag,
                "Size": part.size,
            }
            if part.checksum_algorithm is not None:
                entry[member_name(part.checksum_algorithm)] = part.checksum
            parts.append(entry)
        return S3Reply({
            "Bucket": upload.bucket,
            "Key": upload.key,
            "UploadId": upload.upload_id,
            "PartNumberMarker": marker,
            "NextPartNumberMarker": listing.next_part_number_marker,
            "MaxParts": max_parts,
            "IsTruncated": listing.is_truncated,
            "Parts": parts or None,
            "Initiator": {"ID": upload.initiator, "DisplayName": upload.initiator},
            "Owner": OWNER,
            "StorageClass": STORAGE_CLASS,
            "ChecksumAlgorithm": upload.checksum_algorithm,
            "ChecksumType": upload.checksum_type,
        })

    def list_multipart_uploads(self, params: dict[str, Any], caller: Caller) -> S3Reply:
        encode = url_encoder(params)
        max_uploads = list_limit(params, "MaxUploads")
        listing = self.uploads.list_uploads(
            params["Bucket"],
            params.get("Prefix") or "",
            delimiter=params.get("Delimiter"),
            max_uploads=max_uploads,
            key_marker=params.get("KeyMarker"),
            upload_id_marker=params.get("UploadIdMarker"),
        )
        uploads = [
            {
                "UploadId": u.upload_id,
                "Key": encode(u.key),
                "Initiated": timestamp(u.initiated),
                "StorageClass": STORAGE_CLASS,
                "Owner": OWNER,
                "Initiator": {"ID": u.initiator, "DisplayName": u.initiator},
                "ChecksumAlgorithm": u.checksum_algorithm,
                "ChecksumType": u.checksum_type,
            }
            for u in listing.uploads
        ]
        return S3Reply({
            "Bucket": params["Bucket"],
            "KeyMarker": encode(params.get("KeyMarker") or ""),
            "UploadIdMarker": params.get("UploadIdMarker") or "",
            "NextKeyMarker": encode(listing.next_key_marker),
            "NextUploadIdMarker": listing.next_upload_id_marker,
            "Prefix": encode(params.get("Prefix") or ""),
            "Delimiter": encode(params.get("Delimiter")),
            "MaxUploads": max_uploads,
            "IsTruncated": listing.is_truncated,
            "Uploads": uploads or None,
            "CommonPrefixes": [{"Prefix": encode(p)} for p in listing.common_prefixes] or None,
            "EncodingType": params.get("EncodingType"),
        })
