"""Versioned object storage: bytes in a blob store, metadata in the database.

Each object version's bytes are stored under a name derived from its metadata row
(`data/<bucket>/<hh>/<sha256(key)>/<version_id>.<sha256(content)>`), so no path is
stored. Where the bytes live is a `BlobStore` (`blobs.py`): a local directory (the
default: a temporary file is fsync'ed, renamed into place and the directory fsync'ed)
or an S3 bucket shared by several server processes (`s3_blobs.py`). A write goes to a
local temporary file first, is installed durably in the blob store, and only then is
the row committed; an overwritten `null` version's old bytes are removed after the
commit. A crash therefore leaves at worst unreferenced bytes (`sweep_unreferenced`
removes them), never a row pointing at missing or half-written bytes.

The SHA-256 of every version is stored and re-checked on every read: bytes that do
not match are never returned (`CorruptObject`).

Buckets follow S3 semantics: unversioned buckets keep one `null` version per key,
versioning `Enabled` creates a new random version id per write and delete markers on
delete, `Suspended` writes the `null` version again while keeping older versions.

Mutations of rows and bytes run under one process-local lock; reads do not take it.
With a shared (S3) blob store several processes write at once: the database orders
their rows, and names carry the version id and content hash, so two writers never
install different bytes under one name.
Multipart uploads (`multipart.py`) assemble their parts into a temporary file and hand
it to `commit_file`, the same installation path a single PUT takes.

A full disk (ENOSPC, EDQUOT) while writing is an `UnavailableError` naming what was
being written ("no space left on device while writing the object"), and so is an S3
service that fails or cannot be reached; the API answers them with 503. By the order
above, nothing of the failed write is visible: the temporary file is removed, and no
row refers to bytes that were not installed.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from overair.core.limits import DEFAULT_LIMITS
from overair.server.api.contract import ApiError
from overair.server.storage.blobs import READ_BLOCK, BlobStore, LocalBlobs, disk_writes
from overair.server.storage.db import Database
from overair.server.storage.schema import Bucket, MultipartUpload, ObjectVersion

logger = logging.getLogger("overair.objects")

NULL_VERSION = "null"
MAX_KEY_BYTES = 1024
MAX_LIST_KEYS = 1000
DEFAULT_CONTENT_TYPE = "binary/octet-stream"
VERSIONING_STATES = ("Enabled", "Suspended")

# Matched whole (`fullmatch`: `^...$` with `match` accepts a trailing newline).
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IPV4_RE = re.compile(r"[0-9]{1,3}(\.[0-9]{1,3}){3}")
_STALE_TMP_SECONDS = 3600.0

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class StoredObject:
    """One version of one object (or a delete marker, with size 0 and no bytes)."""

    bucket: str
    key: str
    version_id: str
    size: int
    sha256: str  # hex
    etag: str  # quoted MD5 hex, as S3 returns it
    content_type: str
    last_modified: float  # epoch seconds
    metadata: dict[str, str] = field(default_factory=dict)
    delete_marker: bool = False


@dataclass(frozen=True, slots=True)
class BucketInfo:
    name: str
    created_at: float
    versioning: str | None  # None (never set), "Enabled" or "Suspended"


@dataclass(frozen=True, slots=True)
class VersionEntry:
    object: StoredObject
    is_latest: bool


@dataclass(frozen=True, slots=True)
class ObjectListing:
    objects: list[StoredObject]
    common_prefixes: list[str]
    is_truncated: bool
    # Pass back as `marker` to continue; a common prefix here skips everything under it.
    next_marker: str | None


@dataclass(frozen=True, slots=True)
class VersionListing:
    versions: list[VersionEntry]  # object versions and delete markers, key asc, newest first
    common_prefixes: list[str]
    is_truncated: bool
    next_key_marker: str | None
    next_version_id_marker: str | None


@dataclass(frozen=True, slots=True)
class DeleteResult:
    version_id: str | None  # the version removed, or of the delete marker created
    delete_marker: bool  # a delete marker was created or removed


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a key-ordered listing whose keys may roll up into common prefixes."""

    items: list[T]
    common_prefixes: list[str]
    is_truncated: bool
    # The last entry returned when truncated: a common prefix (then last_item is None) or
    # the key of last_item. The next page starts after it.
    next_key: str | None
    last_item: T | None


def page_by_key(
    rows: Iterable[T],
    key_of: Callable[[T], str],
    *,
    prefix: str,
    delimiter: str | None,
    marker: str | None,
    max_keys: int,
) -> Page[T]:
    """Up to `max_keys` entries (items plus common prefixes) from rows in key order.

    All rows under one common prefix count as a single entry. A `marker` that is itself a
    common prefix (the previous page ended on it) skips every row under it."""
    ends_on_prefix = bool(marker and delimiter and marker.endswith(delimiter) and marker.startswith(prefix))
    skip = marker if ends_on_prefix else None
    items: list[T] = []
    prefixes: list[str] = []
    next_key: str | None = None
    last_item: T | None = None
    for row in rows:
        key = key_of(row)
        if skip is not None and key.startswith(skip):
            continue
        common = _common_prefix(key, prefix, delimiter)
        if common is not None and prefixes and prefixes[-1] == common:
            continue
        if len(items) + len(prefixes) >= max_keys:
            return Page(items, prefixes, True, next_key, last_item)
        if common is not None:
            prefixes.append(common)
            next_key, last_item = common, None
        else:
            items.append(row)
            next_key, last_item = key, row
    return Page(items, prefixes, False, None, None)


def _common_prefix(key: str, prefix: str, delimiter: str | None) -> str | None:
    if not delimiter:
        return None
    idx = key.find(delimiter, len(prefix))
    if idx < 0:
        return None
    return key[: idx + len(delimiter)]


def entity_too_large(size: int, limit: int) -> ApiError:
    return ApiError(
        "EntityTooLarge",
        f"Your proposed upload ({size} bytes) exceeds the maximum allowed object size ({limit} bytes)",
        400,
    )


def no_such_bucket(name: str) -> ApiError:
    return ApiError("NoSuchBucket", f"The specified bucket does not exist: {name}", 404)


def validate_bucket_name(name: str) -> None:
    """S3 bucket naming rules (the DNS-compatible subset)."""
    if (
        not _BUCKET_RE.fullmatch(name)
        or ".." in name
        or ".-" in name
        or "-." in name
        or _IPV4_RE.fullmatch(name)
        or name.startswith("xn--")
    ):
        raise ApiError("InvalidBucketName", f"The specified bucket is not valid: {name!r}", 400)


def validate_key(key: str) -> None:
    if not key:
        raise ApiError("InvalidArgument", "Object key must not be empty", 400)
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise ApiError("KeyTooLongError", f"Object key is longer than {MAX_KEY_BYTES} bytes", 400)
    if "\x00" in key:
        raise ApiError("InvalidArgument", "Object key must not contain NUL", 400)


def _new_version_id() -> str:
    return secrets.token_urlsafe(24)


def _to_object(row: ObjectVersion) -> StoredObject:
    return StoredObject(
        bucket=row.bucket,
        key=row.key,
        version_id=row.version_id,
        size=row.size,
        sha256=row.sha256,
        etag=row.etag,
        content_type=row.content_type,
        last_modified=row.created_at,
        metadata={str(k): str(v) for k, v in (row.metadata_ or {}).items()},
        delete_marker=row.delete_marker,
    )


class ObjectStore:
    """Versioned buckets, bytes in a blob store; safe to call from several threads.

    `root` is a local directory for temporary files (and, without `blobs`, the bytes)."""

    def __init__(
        self,
        db: Database,
        root: Path,
        *,
        blobs: BlobStore | None = None,
        clock: Callable[[], float] = time.time,
        max_object_bytes: int = DEFAULT_LIMITS.max_object_bytes,
    ) -> None:
        self._db = db
        self._root = Path(root)
        self._tmp = self._root / "tmp"
        self.clock = clock
        self.max_object_bytes = max_object_bytes
        self._lock = threading.Lock()
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._blobs: BlobStore = blobs if blobs is not None else LocalBlobs(self._root)
        self._sweep_tmp()
        # Called after an object's stored bytes are deleted (bucket, key): caches of file
        # bytes (delivery) drop them, so a deleted artifact is no longer served.
        self.deletion_watchers: list[Callable[[str, str], None]] = []

    @property
    def db(self) -> Database:
        return self._db

    @property
    def root(self) -> Path:
        return self._root

    @property
    def blobs(self) -> BlobStore:
        return self._blobs

    # ---------------------------------------------------------------- buckets

    def create_bucket(self, name: str) -> BucketInfo:
        validate_bucket_name(name)
        with self._lock, self._db.session() as session:
            if session.get(Bucket, name) is not None:
                raise ApiError(
                    "BucketAlreadyOwnedByYou",
                    "Your previous request to create the named bucket succeeded and you already own it.",
                    409,
                )
            row = Bucket(name=name, versioning=None, policy=None, created_at=self.clock())
            session.add(row)
            return BucketInfo(name=name, created_at=row.created_at, versioning=None)

    def delete_bucket(self, name: str) -> None:
        with self._lock, self._db.session() as session:
            bucket = self._bucket(session, name)
            has_objects = session.scalar(
                select(ObjectVersion.id).where(ObjectVersion.bucket == name).limit(1)
            )
            # Pending multipart uploads hold stored parts: they must be aborted first.
            has_uploads = session.scalar(
                select(MultipartUpload.id).where(MultipartUpload.bucket == name).limit(1)
            )
            if has_objects is not None or has_uploads is not None:
                raise ApiError("BucketNotEmpty", "The bucket you tried to delete is not empty", 409)
            session.delete(bucket)

    def list_buckets(self) -> list[BucketInfo]:
        with self._db.reading() as session:
            rows = session.scalars(select(Bucket).order_by(Bucket.name)).all()
            return [BucketInfo(r.name, r.created_at, r.versioning) for r in rows]

    def bucket_exists(self, name: str) -> bool:
        with self._db.reading() as session:
            return session.get(Bucket, name) is not None

    def get_bucket(self, name: str) -> BucketInfo:
        with self._db.reading() as session:
            row = self._bucket(session, name)
            return BucketInfo(row.name, row.created_at, row.versioning)

    def set_versioning(self, bucket: str, status: str) -> None:
        if status not in VERSIONING_STATES:
            raise ApiError(
                "IllegalVersioningConfigurationException",
                f"Versioning status must be Enabled or Suspended, not {status!r}",
                400,
            )
        with self._lock, self._db.session() as session:
            self._bucket(session, bucket).versioning = status

    def get_versioning(self, bucket: str) -> str | None:
        with self._db.reading() as session:
            return self._bucket(session, bucket).versioning

    def set_bucket_policy(self, bucket: str, policy: str | None) -> None:
        with self._lock, self._db.session() as session:
            self._bucket(session, bucket).policy = policy

    def get_bucket_policy(self, bucket: str) -> str | None:
        # A read (it runs for every authorized S3 request): no write transaction.
        with self._db.reading() as session:
            return self._bucket(session, bucket).policy

    # ---------------------------------------------------------------- objects

    def put_object(
        self,
        bucket: str,
        key: str,
        data: bytes,
        content_type: str | None = DEFAULT_CONTENT_TYPE,
        metadata: dict[str, str] | None = None,
    ) -> StoredObject:
        validate_key(key)
        self.check_size(len(data))
        tmp = self.write_temp([data])
        return self.commit_file(  # removes tmp whatever happens
            bucket,
            key,
            tmp,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            etag='"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"',
            content_type=content_type,
            metadata=metadata,
        )

    def check_size(self, size: int) -> None:
        if size > self.max_object_bytes:
            raise entity_too_large(size, self.max_object_bytes)

    def write_temp(self, chunks: Iterable[bytes], *, what: str = "writing the object") -> Path:
        """Write `chunks` to a new file under the store's temporary directory and fsync
        it. If writing fails (or a chunk producer raises), nothing is left behind."""
        with disk_writes(what):
            fd, name = tempfile.mkstemp(dir=self._tmp, prefix="put-")
            try:
                with os.fdopen(fd, "wb") as fh:
                    for chunk in chunks:
                        fh.write(chunk)
                    fh.flush()
                    os.fsync(fh.fileno())
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(name)
                raise
        return Path(name)

    def commit_file(
        self,
        bucket: str,
        key: str,
        tmp: Path,
        *,
        size: int,
        sha256: str,
        etag: str,
        content_type: str | None = DEFAULT_CONTENT_TYPE,
        metadata: dict[str, str] | None = None,
        in_transaction: Callable[[Session], None] | None = None,
    ) -> StoredObject:
        """Install `tmp` (from `write_temp`, already verified) as the newest version of
        `key`, consuming it. `in_transaction` runs in the same database transaction
        before the new row is added and may raise to abandon the write; this is how a
        multipart completion removes its upload atomically with creating the object."""
        validate_key(key)
        name: str | None = None
        # Identical bytes re-written as the `null` version land on the name the old row
        # uses; such bytes must survive a failed commit.
        preexisting = False
        old_names: list[str] = []
        try:
            with self._lock, disk_writes("writing the object"):
                try:
                    with self._db.session() as session:
                        versioning = self._bucket(session, bucket, for_update=True).versioning
                        if in_transaction is not None:
                            in_transaction(session)
                        version_id = _new_version_id() if versioning == "Enabled" else NULL_VERSION
                        name = self._name(bucket, key, version_id, sha256)
                        preexisting = self._blobs.exists(name)
                        self._blobs.install(tmp, name)  # durable before the row commits
                        if version_id == NULL_VERSION:
                            old_names = self._drop_null(session, bucket, key)
                        row = ObjectVersion(
                            bucket=bucket,
                            key=key,
                            version_id=version_id,
                            size=size,
                            sha256=sha256,
                            etag=etag,
                            content_type=content_type or DEFAULT_CONTENT_TYPE,
                            metadata_=dict(metadata or {}),
                            delete_marker=False,
                            created_at=self.clock(),
                        )
                        session.add(row)
                        session.flush()
                        stored = _to_object(row)
                except BaseException:
                    # Not committed: the new bytes are unreferenced unless an old row uses them.
                    if name is not None and not preexisting:
                        self._blobs.delete(name)
                    raise
                for old in old_names:
                    if old != name:
                        self._blobs.delete(old)
        finally:
            if tmp.exists():
                with contextlib.suppress(OSError):
                    tmp.unlink()
        return stored

    def get_object(
        self, bucket: str, key: str, version_id: str | None = None
    ) -> tuple[StoredObject, bytes]:
        obj = self.head_object(bucket, key, version_id)
        return obj, self._read_verified(obj)

    def head_object(self, bucket: str, key: str, version_id: str | None = None) -> StoredObject:
        validate_key(key)
        with self._db.reading() as session:
            self._bucket(session, bucket)
            if version_id is not None:
                row = session.scalar(
                    select(ObjectVersion).where(
                        ObjectVersion.bucket == bucket,
                        ObjectVersion.key == key,
                        ObjectVersion.version_id == version_id,
                    )
                )
                if row is None:
                    raise ApiError("NoSuchVersion", "The specified version does not exist.", 404)
                if row.delete_marker:
                    raise ApiError(
                        "MethodNotAllowed",
                        "The specified method is not allowed against a delete marker.",
                        405,
                    )
            else:
                row = self._latest(session, bucket, key)
                if row is None or row.delete_marker:
                    raise ApiError("NoSuchKey", "The specified key does not exist.", 404)
            obj = _to_object(row)
        self._check_file(obj)
        return obj

    def delete_object(self, bucket: str, key: str, version_id: str | None = None) -> DeleteResult:
        validate_key(key)
        doomed: list[str] = []
        with self._lock:
            with self._db.session() as session:
                versioning = self._bucket(session, bucket, for_update=True).versioning
                if version_id is not None:
                    row = session.scalar(
                        select(ObjectVersion).where(
                            ObjectVersion.bucket == bucket,
                            ObjectVersion.key == key,
                            ObjectVersion.version_id == version_id,
                        )
                    )
                    if row is None:
                        return DeleteResult(version_id=version_id, delete_marker=False)
                    marker = row.delete_marker
                    if not marker:
                        doomed.append(self._name(bucket, key, row.version_id, row.sha256))
                    session.delete(row)
                    result = DeleteResult(version_id=version_id, delete_marker=marker)
                elif versioning is None:
                    doomed = self._drop_null(session, bucket, key)
                    result = DeleteResult(version_id=None, delete_marker=False)
                else:
                    marker_id = _new_version_id() if versioning == "Enabled" else NULL_VERSION
                    if marker_id == NULL_VERSION:
                        doomed = self._drop_null(session, bucket, key)
                    session.add(
                        ObjectVersion(
                            bucket=bucket,
                            key=key,
                            version_id=marker_id,
                            size=0,
                            sha256=hashlib.sha256(b"").hexdigest(),
                            etag='""',
                            content_type=DEFAULT_CONTENT_TYPE,
                            metadata_={},
                            delete_marker=True,
                            created_at=self.clock(),
                        )
                    )
                    result = DeleteResult(version_id=marker_id, delete_marker=True)
            for name in doomed:
                self._blobs.delete(name)
        if doomed:
            for watcher in self.deletion_watchers:
                watcher(bucket, key)
        return result

    def list_objects(
        self,
        bucket: str,
        prefix: str = "",
        *,
        delimiter: str | None = None,
        max_keys: int = MAX_LIST_KEYS,
        marker: str | None = None,
    ) -> ObjectListing:
        """Latest, non-deleted versions in key order, after `marker`."""
        max_keys = max(0, min(max_keys, MAX_LIST_KEYS))
        with self._db.reading() as session:
            self._bucket(session, bucket)
            latest = (
                select(func.max(ObjectVersion.id))
                .where(ObjectVersion.bucket == bucket, *self._prefix_filter(prefix))
                .group_by(ObjectVersion.key)
            )
            stmt = select(ObjectVersion).where(
                ObjectVersion.id.in_(latest), ObjectVersion.delete_marker.is_(False)
            )
            if marker:
                stmt = stmt.where(ObjectVersion.key > marker)
            stmt = stmt.order_by(ObjectVersion.key)
            page = page_by_key(
                session.scalars(stmt), lambda row: row.key,
                prefix=prefix, delimiter=delimiter, marker=marker, max_keys=max_keys,
            )
            return ObjectListing(
                [_to_object(row) for row in page.items], page.common_prefixes, page.is_truncated,
                page.next_key,
            )

    def list_object_versions(
        self,
        bucket: str,
        prefix: str = "",
        *,
        delimiter: str | None = None,
        max_keys: int = MAX_LIST_KEYS,
        key_marker: str | None = None,
        version_id_marker: str | None = None,
    ) -> VersionListing:
        """All versions and delete markers, key ascending then newest first."""
        max_keys = max(0, min(max_keys, MAX_LIST_KEYS))
        with self._db.reading() as session:
            self._bucket(session, bucket)
            latest_id = func.max(ObjectVersion.id).over(partition_by=ObjectVersion.key).label("latest_id")
            inner = (
                select(ObjectVersion.id.label("vid"), latest_id)
                .where(ObjectVersion.bucket == bucket, *self._prefix_filter(prefix))
                .subquery()
            )
            stmt = select(ObjectVersion, inner.c.latest_id).join(inner, inner.c.vid == ObjectVersion.id)
            if key_marker:
                after_key = ObjectVersion.key > key_marker
                marker_id = None
                if version_id_marker:
                    marker_id = session.scalar(
                        select(ObjectVersion.id).where(
                            ObjectVersion.bucket == bucket,
                            ObjectVersion.key == key_marker,
                            ObjectVersion.version_id == version_id_marker,
                        )
                    )
                if marker_id is not None:
                    stmt = stmt.where(
                        after_key | ((ObjectVersion.key == key_marker) & (ObjectVersion.id < marker_id))
                    )
                else:
                    stmt = stmt.where(after_key)
            stmt = stmt.order_by(ObjectVersion.key, ObjectVersion.id.desc())
            page = page_by_key(
                session.execute(stmt).tuples(), lambda pair: pair[0].key,
                prefix=prefix, delimiter=delimiter, marker=key_marker, max_keys=max_keys,
            )
            versions = [VersionEntry(_to_object(row), row.id == latest) for row, latest in page.items]
            next_version = page.last_item[0].version_id if page.last_item is not None else None
            return VersionListing(
                versions, page.common_prefixes, page.is_truncated, page.next_key, next_version
            )

    def iter_keys(self, bucket: str, prefix: str = "") -> Iterator[StoredObject]:
        """Every latest object under `prefix` (convenience for callers, pages internally)."""
        marker: str | None = None
        while True:
            page = self.list_objects(bucket, prefix, marker=marker)
            yield from page.objects
            if not page.is_truncated:
                return
            marker = page.next_marker

    # ---------------------------------------------------------------- internals

    @staticmethod
    def _bucket(session: Session, name: str, *, for_update: bool = False) -> Bucket:
        """`for_update`: writers of one bucket take its row in turn (PostgreSQL; SQLite's
        write transactions are serial anyway). The process lock orders one process's
        writers; this orders several processes', which would otherwise both replace a
        key's `null` version and collide on its unique (bucket, key, version) row."""
        row = session.get(Bucket, name, with_for_update=for_update)
        if row is None:
            raise no_such_bucket(name)
        return row

    @staticmethod
    def _latest(session: Session, bucket: str, key: str) -> ObjectVersion | None:
        return session.scalar(
            select(ObjectVersion)
            .where(ObjectVersion.bucket == bucket, ObjectVersion.key == key)
            .order_by(ObjectVersion.id.desc())
            .limit(1)
        )

    @staticmethod
    def _prefix_filter(prefix: str) -> list[Any]:
        if not prefix:
            return []
        # substr, not LIKE: LIKE is case-insensitive on SQLite and needs escaping.
        return [func.substr(ObjectVersion.key, 1, len(prefix)) == prefix]

    def _drop_null(self, session: Session, bucket: str, key: str) -> list[str]:
        """Delete the `null` version row of a key; return its bytes' name to remove after commit."""
        row = session.scalar(
            select(ObjectVersion).where(
                ObjectVersion.bucket == bucket,
                ObjectVersion.key == key,
                ObjectVersion.version_id == NULL_VERSION,
            )
        )
        if row is None:
            return []
        files = [] if row.delete_marker else [self._name(bucket, key, NULL_VERSION, row.sha256)]
        session.delete(row)
        session.flush()
        return files

    @staticmethod
    def _name(bucket: str, key: str, version_id: str, sha: str) -> str:
        key_hash = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
        return f"data/{bucket}/{key_hash[:2]}/{key_hash}/{version_id}.{sha}"

    def _check_file(self, obj: StoredObject) -> None:
        size = self._blobs.size(self._name(obj.bucket, obj.key, obj.version_id, obj.sha256))
        if size != obj.size:
            raise self._corrupt(obj, f"stored size {-1 if size is None else size} != {obj.size}")

    def _read_verified(self, obj: StoredObject) -> bytes:
        return b"".join(self.iter_verified(obj))

    def iter_verified(self, obj: StoredObject) -> Iterator[bytes]:
        """The bytes of `obj` in blocks, read from the blob store; the SHA-256 is checked
        at the end, so a consumer must not act on (or send) them before the iterator is
        exhausted without raising."""
        reader = self._blobs.open(self._name(obj.bucket, obj.key, obj.version_id, obj.sha256))
        if reader is None:
            raise self._corrupt(obj, "missing from " + self._blobs.description)
        digest = hashlib.sha256()
        size = 0
        try:
            while block := reader.read(READ_BLOCK):
                digest.update(block)
                size += len(block)
                yield block
        except OSError as exc:
            raise self._corrupt(obj, f"unreadable: {exc}") from exc
        finally:
            reader.close()
        if size != obj.size or digest.hexdigest() != obj.sha256:
            raise self._corrupt(obj, "SHA-256 mismatch")

    def read_range(self, obj: StoredObject, start: int, end: int) -> bytes:
        """Bytes [start, end) of `obj` as stored, NOT checked against its SHA-256 (only
        the whole can be): for a caller that verified the whole once (a cache keyed by
        the version) and re-reads parts. Missing bytes are `CorruptObject`."""
        reader = self._blobs.open(self._name(obj.bucket, obj.key, obj.version_id, obj.sha256), start, end)
        if reader is None:
            raise self._corrupt(obj, "missing from " + self._blobs.description)
        try:
            return reader.read()
        finally:
            reader.close()

    @staticmethod
    def _corrupt(obj: StoredObject, why: str) -> ApiError:
        logger.error(
            "corrupt object %s/%s version %s: %s", obj.bucket, obj.key, obj.version_id, why
        )
        return ApiError(
            "CorruptObject",
            f"The stored object {obj.bucket}/{obj.key} (version {obj.version_id}) failed its "
            "integrity check and is not served",
            500,
        )

    def _sweep_tmp(self) -> None:
        cutoff = time.time() - _STALE_TMP_SECONDS
        for entry in self._tmp.iterdir():
            with contextlib.suppress(OSError):
                if entry.is_file() and entry.stat().st_mtime < cutoff:
                    entry.unlink()

    def sweep_unreferenced(self, min_age: float = _STALE_TMP_SECONDS) -> int:
        """Remove stored bytes no row refers to (left by a crash between installing them
        and committing, or before removing an overwritten version's), if older than
        `min_age` seconds: a younger name may belong to a write still in flight, here
        or, with a shared blob store, in another process. Returns how many went."""
        cutoff = time.time() - min_age
        removed = 0
        for entry in self._blobs.list("data/"):
            if entry.modified >= cutoff or self._referenced(entry.name):
                continue
            logger.info("removing unreferenced object bytes %s", entry.name)
            self._blobs.delete(entry.name)
            removed += 1
        return removed

    def _referenced(self, name: str) -> bool:
        parts = name.split("/")
        if len(parts) != 5 or "." not in parts[4]:
            return True  # not a name this store makes: leave it alone
        _, bucket, _, key_hash, leaf = parts
        version_id, _, sha = leaf.rpartition(".")
        with self._db.reading() as session:
            keys = session.scalars(select(ObjectVersion.key).where(
                ObjectVersion.bucket == bucket, ObjectVersion.version_id == version_id,
                ObjectVersion.sha256 == sha, ObjectVersion.delete_marker.is_(False)))
            return any(hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest() == key_hash
                       for key in keys)


def encode_marker(value: str) -> str:
    """An opaque continuation token for a marker (used by ListObjectsV2)."""
    return base64.urlsafe_b64encode(value.encode("utf-8", "surrogatepass")).decode("ascii")


def decode_marker(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode("ascii")).decode("utf-8", "surrogatepass")
    except (ValueError, UnicodeError) as exc:
        raise ApiError("InvalidArgument", "The continuation token provided is incorrect", 400) from exc
