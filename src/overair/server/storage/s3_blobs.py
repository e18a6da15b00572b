"""The object store's bytes in an S3 bucket (AWS S3, Ceph RGW, MinIO, SeaweedFS).

Only the core S3 API is used: PutObject and multipart upload (through boto3's transfer
manager, above `MULTIPART_THRESHOLD`), GetObject with Range, HeadObject, DeleteObject and
ListObjectsV2. A PutObject or CompleteMultipartUpload that succeeded is durable (S3's
read-after-write consistency, which AWS S3 has had since December 2020 and Ceph RGW,
MinIO and SeaweedFS have always had), so `install` returning is the point after which
the caller may commit the row that refers to the bytes; a failed multipart transfer is
aborted by the transfer manager, so nothing is visible under the name.

Every failure of the service (unreachable, timing out, throttling, refusing the
credentials) becomes one `UnavailableError` (503 at the API) here, once; "no such key"
is an answer (None), which the object store turns into `CorruptObject` when a row
refers to the bytes.

boto3 (1.36 and later) adds CRC checksums to every upload by default, which older
S3-compatible stores reject; checksums are requested only where S3 requires them
(`request_checksum_calculation="when_required"`, boto3's documented setting for
third-party stores). The object store re-checks every object's SHA-256 itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import boto3
import boto3.exceptions
import botocore.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from overair.core.errors import UnavailableError
from overair.server.storage.blobs import BlobEntry, BlobReader

logger = logging.getLogger("overair.objects")

MIB = 1 << 20
MULTIPART_THRESHOLD = 64 * MIB  # larger bytes go up as a multipart upload ...
MULTIPART_CHUNK = 16 * MIB  # ... of parts this large (S3: at least 5 MiB, at most 10,000 parts)
_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class S3Location:
    """Where the bytes go and how to reach it; credentials None: boto3's usual chain
    (environment, shared credentials file, instance or container role)."""

    bucket: str
    endpoint_url: str | None = None
    region: str | None = None
    prefix: str = ""  # every name is stored under this key prefix
    path_style: bool = False  # https://host/bucket/key instead of https://bucket.host/key
    access_key_id: str | None = None
    secret_access_key: str | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    max_attempts: int = 3


def make_client(location: S3Location) -> Any:
    config = Config(
        s3={"addressing_style": "path" if location.path_style else "auto"},
        retries={"mode": "standard", "max_attempts": location.max_attempts},
        connect_timeout=location.connect_timeout,
        read_timeout=location.read_timeout,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    session = boto3.session.Session(
        aws_access_key_id=location.access_key_id,
        aws_secret_access_key=location.secret_access_key,
        region_name=location.region,
    )
    return session.client("s3", endpoint_url=location.endpoint_url, config=config)


class _Body:
    """A GetObject body whose transport failures are UnavailableError."""

    def __init__(self, body: Any, fail: Callable[[str, Exception], UnavailableError]) -> None:
        self._body = body
        self._fail = fail

    def read(self, size: int = -1, /) -> bytes:
        try:
            data: bytes = self._body.read(None if size < 0 else size)
        except (botocore.exceptions.BotoCoreError, OSError) as exc:
            raise self._fail("reading an object", exc) from exc
        return data

    def close(self) -> None:
        self._body.close()


class S3Blobs:
    """Bytes as objects of one S3 bucket, shared by every server process using it."""

    shared = True

    def __init__(self, location: S3Location, *, multipart_threshold: int = MULTIPART_THRESHOLD,
                 multipart_chunk: int = MULTIPART_CHUNK) -> None:
        self._location = location
        self._bucket = location.bucket
        self._prefix = location.prefix
        self._client = make_client(location)
        self._transfer = TransferConfig(multipart_threshold=multipart_threshold,
                                        multipart_chunksize=multipart_chunk, max_concurrency=4)
        where = f" at {location.endpoint_url}" if location.endpoint_url else ""
        self.description = f"S3 bucket {location.bucket}{where}"

    def _key(self, name: str) -> str:
        return self._prefix + name

    def _fail(self, what: str, exc: Exception) -> UnavailableError:
        detail = _describe(exc)
        logger.error("object store %s failed while %s: %s", self.description, what, detail)
        return UnavailableError(f"the object store ({self.description}) failed while {what}: {detail}",
                                code="ObjectStoreUnavailable")

    def _call(self, what: str, call: Callable[[], T]) -> T:
        try:
            return call()
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError,
                boto3.exceptions.Boto3Error, OSError) as exc:
            raise self._fail(what, exc) from exc

    def check(self) -> None:
        """Is the bucket there and may we use it? (At start: a wrong endpoint, bucket or
        credentials is said at once rather than at the first upload.)"""
        self._call("checking the bucket", lambda: self._client.head_bucket(Bucket=self._bucket))

    def install(self, tmp: Path, name: str) -> None:
        self._call("writing the object", lambda: self._client.upload_file(
            str(tmp), self._bucket, self._key(name), Config=self._transfer))

    def exists(self, name: str) -> bool:
        return self.size(name) is not None

    def size(self, name: str) -> int | None:
        try:
            reply = self._client.head_object(Bucket=self._bucket, Key=self._key(name))
        except botocore.exceptions.ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise self._fail("reading an object's size", exc) from exc
        except (botocore.exceptions.BotoCoreError, OSError) as exc:
            raise self._fail("reading an object's size", exc) from exc
        return int(reply["ContentLength"])

    def open(self, name: str, start: int = 0, end: int | None = None) -> BlobReader | None:
        extra: dict[str, str] = {}
        if end is not None and end <= start:
            # An empty range: S3 has no way to ask for zero bytes; check existence only.
            return _Empty() if self.exists(name) else None
        if start or end is not None:
            extra["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        try:
            reply = self._client.get_object(Bucket=self._bucket, Key=self._key(name), **extra)
        except botocore.exceptions.ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise self._fail("reading an object", exc) from exc
        except (botocore.exceptions.BotoCoreError, OSError) as exc:
            raise self._fail("reading an object", exc) from exc
        return _Body(reply["Body"], self._fail)

    def delete(self, name: str) -> None:
        try:
            self._client.delete_object(Bucket=self._bucket, Key=self._key(name))
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, OSError):
            # Unreferenced by now: at worst it stays until a sweep removes it.
            logger.warning("could not remove %s from %s", name, self.description, exc_info=True)

    def delete_prefix(self, prefix: str) -> None:
        try:
            entries = list(self.list(prefix))
        except UnavailableError:
            return  # logged; the sweep removes them later
        for entry in entries:
            self.delete(entry.name)

    def list(self, prefix: str) -> Iterator[BlobEntry]:
        paginator = self._client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self._bucket, Prefix=self._key(prefix))
        cut = len(self._prefix)
        try:
            for page in pages:
                for item in page.get("Contents", ()):
                    yield BlobEntry(item["Key"][cut:], item["LastModified"].timestamp())
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, OSError) as exc:
            raise self._fail("listing objects", exc) from exc


class _Empty:
    def read(self, size: int = -1, /) -> bytes:
        return b""

    def close(self) -> None:
        pass


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _describe(exc: Exception) -> str:
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', '?')}: {error.get('Message', '')}".strip()
    return f"{type(exc).__name__}: {exc}"
