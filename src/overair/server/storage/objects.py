"""Versioned object storage: bytes on local disk, metadata in the database.

Each object version is one file whose name is derived from its metadata row
(`data/<bucket>/<hh>/<sha256(key)>/<version_id>.<sha256(content)>`), so no path is
stored. A write goes to a temporary file, is fsync'ed, renamed into place (and the
directory fsync'ed), and only then is the row committed; an overwritten `null`
version's old file is removed after the commit. A crash therefore leaves at worst an
unreferenced file, never a row pointing at missing or half-written bytes.

The SHA-256 of every version is stored and re-checked on every read: bytes that do
not match are never returned (`CorruptObject`).

Buckets follow S3 semantics: unversioned buckets keep one `null` version per key,
versioning `Enabled` creates a new random version id per write and delete markers on
delete, `Suspended` writes the `null` version again while keeping older versions.

Mutations of rows and files run under one process-local lock; reads do not take it.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from overair.server.api.contract import ApiError
from overair.server.storage.db import Database
from overair.server.storage.schema import Bucket, ObjectVersion

logger = logging.getLogger("overair.objects")

NULL_VERSION = "null"
MAX_KEY_BYTES = 1024
MAX_LIST_KEYS = 1000
DEFAULT_CONTENT_TYPE = "binary/octet-stream"
VERSIONING_STATES = ("Enabled", "Suspended")

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IPV4_RE = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")
_STALE_TMP_SECONDS = 3600.0


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


def no_such_bucket(name: str) -> ApiError:
    return ApiError("NoSuchBucket", f"The specified bucket does not exist: {name}", 404)


def validate_bucket_name(name: str) -> None:
    """S3 bucket naming rules (the DNS-compatible subset)."""
    if (
        not _BUCKET_RE.match(name)
        or ".." in name
        or ".-" in name
        or "-." in name
        or _IPV4_RE.match(name)
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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ObjectStore:
    """Versioned buckets on local disk; safe to call from several threads."""

    def __init__(self, db: Database, root: Path, *, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._root = Path(root)
        self._data = self._root / "data"
        self._tmp = self._root / "tmp"
        self._clock = clock
        self._lock = threading.Lock()
        self._data.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._sweep_tmp()

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
            row = Bucket(name=name, versioning=None, policy=None, created_at=self._clock())
            session.add(row)
            return BucketInfo(name=name, created_at=row.created_at, versioning=None)

    def delete_bucket(self, name: str) -> None:
        with self._lock, self._db.session() as session:
            bucket = self._bucket(session, name)
            has_objects = session.scalar(
                select(ObjectVersion.id).where(ObjectVersion.bucket == name).limit(1)
            )
            if has_objects is not None:
                raise ApiError("BucketNotEmpty", "The bucket you tried to delete is not empty", 409)
            session.delete(bucket)

    def list_buckets(self) -> list[BucketInfo]:
        with self._db.session() as session:
            rows = session.scalars(select(Bucket).order_by(Bucket.name)).all()
            return [BucketInfo(r.name, r.created_at, r.versioning) for r in rows]

    def bucket_exists(self, name: str) -> bool:
        with self._db.session() as session:
            return session.get(Bucket, name) is not None

    def get_bucket(self, name: str) -> BucketInfo:
        with self._db.session() as session:
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
        with self._db.session() as session:
            return self._bucket(session, bucket).versioning

    def set_bucket_policy(self, bucket: str, policy: str | None) -> None:
        with self._lock, self._db.session() as session:
            self._bucket(session, bucket).policy = policy

    def get_bucket_policy(self, bucket: str) -> str | None:
        with self._db.session() as session:
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
        sha = hashlib.sha256(data).hexdigest()
        etag = '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"'
        tmp = self._write_temp(data)
        final: Path | None = None
        old_files: list[Path] = []
        try:
            with self._lock:
                try:
                    with self._db.session() as session:
                        versioning = self._bucket(session, bucket).versioning
                        version_id = _new_version_id() if versioning == "Enabled" else NULL_VERSION
                        final = self._path(bucket, key, version_id, sha)
                        final.parent.mkdir(parents=True, exist_ok=True)
                        os.replace(tmp, final)
                        _fsync_dir(final.parent)
                        if version_id == NULL_VERSION:
                            old_files = self._drop_null(session, bucket, key)
                        row = ObjectVersion(
                            bucket=bucket,
                            key=key,
                            version_id=version_id,
                            size=len(data),
                            sha256=sha,
                            etag=etag,
                            content_type=content_type or DEFAULT_CONTENT_TYPE,
                            metadata_=dict(metadata or {}),
                            delete_marker=False,
                            created_at=self._clock(),
                        )
                        session.add(row)
                        session.flush()
                        stored = _to_object(row)
                except BaseException:
                    # Not committed: the new file is unreferenced unless an old row uses it.
                    if final is not None and final.exists() and final not in old_files:
                        with contextlib.suppress(OSError):
                            final.unlink()
                    raise
                for old in old_files:
                    if old != final:
                        self._unlink(old)
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
        with self._db.session() as session:
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
        doomed: list[Path] = []
        with self._lock:
            with self._db.session() as session:
                versioning = self._bucket(session, bucket).versioning
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
                        doomed.append(self._path(bucket, key, row.version_id, row.sha256))
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
                            created_at=self._clock(),
                        )
                    )
                    result = DeleteResult(version_id=marker_id, delete_marker=True)
            for path in doomed:
                self._unlink(path)
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
        with self._db.session() as session:
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
            objects: list[StoredObject] = []
            prefixes: list[str] = []
            truncated = False
            next_marker: str | None = None
            skip = self._skip_prefix(marker, prefix, delimiter)
            for row in session.scalars(stmt):
                if skip is not None and row.key.startswith(skip):
                    continue
                common = self._common_prefix(row.key, prefix, delimiter)
                if common is not None and prefixes and prefixes[-1] == common:
                    continue
                if len(objects) + len(prefixes) >= max_keys:
                    truncated = True
                    break
                if common is not None:
                    prefixes.append(common)
                    next_marker = common
                else:
                    objects.append(_to_object(row))
                    next_marker = row.key
            return ObjectListing(objects, prefixes, truncated, next_marker if truncated else None)

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
        with self._db.session() as session:
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
            versions: list[VersionEntry] = []
            prefixes: list[str] = []
            truncated = False
            next_key: str | None = None
            next_version: str | None = None
            skip = self._skip_prefix(key_marker, prefix, delimiter)
            for row, latest in session.execute(stmt).tuples():
                if skip is not None and row.key.startswith(skip):
                    continue
                common = self._common_prefix(row.key, prefix, delimiter)
                if common is not None and prefixes and prefixes[-1] == common:
                    continue
                if len(versions) + len(prefixes) >= max_keys:
                    truncated = True
                    break
                if common is not None:
                    prefixes.append(common)
                    next_key, next_version = common, None
                else:
                    versions.append(VersionEntry(_to_object(row), row.id == latest))
                    next_key, next_version = row.key, row.version_id
            if not truncated:
                next_key = next_version = None
            return VersionListing(versions, prefixes, truncated, next_key, next_version)

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
    def _bucket(session: Session, name: str) -> Bucket:
        row = session.get(Bucket, name)
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

    @staticmethod
    def _common_prefix(key: str, prefix: str, delimiter: str | None) -> str | None:
        if not delimiter:
            return None
        idx = key.find(delimiter, len(prefix))
        if idx < 0:
            return None
        return key[: idx + len(delimiter)]

    @staticmethod
    def _skip_prefix(marker: str | None, prefix: str, delimiter: str | None) -> str | None:
        if marker and delimiter and marker.endswith(delimiter) and marker.startswith(prefix):
            return marker
        return None

    def _drop_null(self, session: Session, bucket: str, key: str) -> list[Path]:
        """Delete the `null` version row of a key; return its file to remove after commit."""
        row = session.scalar(
            select(ObjectVersion).where(
                ObjectVersion.bucket == bucket,
                ObjectVersion.key == key,
                ObjectVersion.version_id == NULL_VERSION,
            )
        )
        if row is None:
            return []
        files = [] if row.delete_marker else [self._path(bucket, key, NULL_VERSION, row.sha256)]
        session.delete(row)
        session.flush()
        return files

    def _path(self, bucket: str, key: str, version_id: str, sha: str) -> Path:
        key_hash = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
        return self._data / bucket / key_hash[:2] / key_hash / f"{version_id}.{sha}"

    def _write_temp(self, data: bytes) -> Path:
        fd, name = tempfile.mkstemp(dir=self._tmp, prefix="put-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(name)
            raise
        return Path(name)

    def _check_file(self, obj: StoredObject) -> None:
        path = self._path(obj.bucket, obj.key, obj.version_id, obj.sha256)
        try:
            size = path.stat().st_size
        except OSError:
            size = -1
        if size != obj.size:
            raise self._corrupt(obj, f"stored size {size} != {obj.size}")

    def _read_verified(self, obj: StoredObject) -> bytes:
        path = self._path(obj.bucket, obj.key, obj.version_id, obj.sha256)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise self._corrupt(obj, f"unreadable: {exc}") from exc
        if hashlib.sha256(data).hexdigest() != obj.sha256:
            raise self._corrupt(obj, "SHA-256 mismatch")
        return data

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

    @staticmethod
    def _unlink(path: Path) -> None:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError:
            logger.warning("could not remove %s", path, exc_info=True)

    def _sweep_tmp(self) -> None:
        cutoff = time.time() - _STALE_TMP_SECONDS
        for entry in self._tmp.iterdir():
            with contextlib.suppress(OSError):
                if entry.is_file() and entry.stat().st_mtime < cutoff:
                    entry.unlink()


def encode_marker(value: str) -> str:
    """An opaque continuation token for a marker (used by ListObjectsV2)."""
    return base64.urlsafe_b64encode(value.encode("utf-8", "surrogatepass")).decode("ascii")


def decode_marker(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode("ascii")).decode("utf-8", "surrogatepass")
    except (ValueError, UnicodeError) as exc:
        raise ApiError("InvalidArgument", "The continuation token provided is incorrect", 400) from exc
