"""What CreateJob needs from the object store for a plain job document: the document
behind a `documentSource` S3 URL, and the object version each pre-signed URL
placeholder names (core/placeholders.py).

A placeholder is pinned to the object's version at creation: every URL a device gets
later is bound to that version (and to the thing), so replacing the object in the
bucket does not change what a running job delivers.

The caller must be allowed `s3:GetObject` on every object it names this way (threat
O1): otherwise iot:CreateJob alone would let an operator read any object, through
GetJobDocument or a URL delivered to a device of its own.

Documents, inline or stored, are decoded with `core/wirejson.py` (bounded size, depth
and numbers): a document nested a thousand deep is an InvalidRequestException, not a
RecursionError.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from overair.core import placeholders, wirejson
from overair.core.errors import DecodeError
from overair.server.api.contract import ApiError, Caller, invalid
from overair.server.storage.objects import ObjectStore, StoredObject

ROLE_ARN_CHARS = (20, 2048)  # the botocore model's RoleArn
# Raises ApiError (AccessDenied) unless the caller may read s3://bucket/key.
ReadCheck = Callable[[Caller, str, str], None]


class JobDocuments:
    def __init__(self, objects: ObjectStore, max_document_bytes: int, may_read: ReadCheck) -> None:
        self._objects = objects
        self._max_bytes = max_document_bytes
        self._may_read = may_read

    def inline(self, text: Any) -> dict[str, Any]:
        """CreateJob's `document` member."""
        if not isinstance(text, str):
            raise invalid("document must be a string of JSON")
        return self._decode(text.encode("utf-8"), "document")

    def _decode(self, data: bytes, what: str) -> dict[str, Any]:
        try:
            document = wirejson.loads(data, max_bytes=self._max_bytes, what=what)
        except DecodeError as exc:
            raise invalid(exc.message) from exc
        if not isinstance(document, dict):
            raise invalid(f"{what} must hold a JSON object")
        return document

    def load_source(self, caller: Caller, url: str) -> dict[str, Any]:
        """The JSON document stored at a `documentSource` S3 URL (its current version)."""
        try:
            reference = placeholders.parse_s3_url(url)
        except placeholders.PlaceholderError as exc:
            raise invalid(f"documentSource: {exc.message}") from exc
        self._may_read(caller, reference.bucket, reference.key)
        stored = self._head(reference, "documentSource")
        if stored.size > self._max_bytes:
            raise invalid(f"documentSource {url} is {stored.size} bytes; the limit is {self._max_bytes}")
        _, data = self._objects.get_object(reference.bucket, reference.key, stored.version_id)
        return self._decode(data, f"documentSource {url}")

    def resolve_placeholders(self, caller: Caller, document: dict[str, Any],
                             presigned_url_config: dict[str, Any] | None) -> list[dict[str, str]]:
        """Each placeholder with the object version it is pinned to; [] for none.
        As on AWS, a document with placeholders needs a presignedUrlConfig with a roleArn."""
        try:
            found = placeholders.find(document)
        except placeholders.PlaceholderError as exc:
            raise invalid(exc.message) from exc
        if not found:
            return []
        role = (presigned_url_config or {}).get("roleArn")
        low, high = ROLE_ARN_CHARS
        if not isinstance(role, str) or not low <= len(role) <= high or not role.startswith("arn:"):
            raise invalid("the job document has pre-signed URL placeholders: presignedUrlConfig "
                          "with a roleArn is required")
        resolved = []
        for reference in found.values():  # every permission before any lookup
            self._may_read(caller, reference.bucket, reference.key)
        for text, reference in found.items():
            stored = self._head(reference, f"placeholder {text}")
            resolved.append({"placeholder": text, "bucket": reference.bucket, "key": reference.key,
                             "version": stored.version_id})
        return resolved

    def _head(self, reference: placeholders.S3Reference, what: str) -> StoredObject:
        try:
            return self._objects.head_object(reference.bucket, reference.key)
        except ApiError as exc:
            if exc.status >= 500:
                raise
            # NoSuchBucket, NoSuchKey (or only a delete marker), an unusable key name.
            raise invalid(f"{what}: the object s3://{reference.bucket}/{reference.key} does not "
                          f"exist ({exc.code}: {exc.message})") from exc
