"""S3 multipart uploads: parts in the object store's blob store, upload and part rows
in the database.

A part is written like an object version (temporary file, installed durably in the
blob store as `uploads/<upload id>/<part number>.<sha256>`) before its row is
committed, so a part uploaded through one server process can be completed through
another sharing the blob store; re-uploading a part number replaces it, and the old file is removed after
the commit. Completion checks the requested part list against the stored parts (S3's
InvalidPart, InvalidPartOrder and EntityTooSmall rules), then streams the parts into
one temporary file while re-checking every part's SHA-256, and hands that file to
`ObjectStore.commit_file`, whose transaction also deletes the upload's rows. So a crash
leaves either the upload (which can be completed again) or the whole object, never a
partial one; the part files of a finished upload are removed after the commit, and
anything a crash left behind is swept when the store starts.

Checksums are opaque here: the API layer decides which algorithm a part's checksum
uses and passes the base64 value in; completion compares what the client lists.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from overair.core.errors import UnavailableError
from overair.core.limits import MIB
from overair.server.api.contract import ApiError
from overair.server.storage.blobs import BlobReader, disk_writes
from overair.server.storage.objects import (
    DEFAULT_CONTENT_TYPE,
    MAX_LIST_KEYS,
    ObjectStore,
    StoredObject,
    no_such_bucket,
    page_by_key,
    validate_key,
)
from overair.server.storage.schema import Bucket, MultipartPart, MultipartUpload

logger = logging.getLogger("overair.objects")

MIN_PART_BYTES = 5 * MIB  # every part but the last (S3's rule)
MAX_PART_NUMBER = 10_000
_READ_BLOCK = 1 * MIB
# With a blob store shared by several processes, part bytes younger than this may belong
# to an upload_part in flight elsewhere (installed, row not yet committed): not swept.
SHARED_SWEEP_AGE = 3600.0


@dataclass(frozen=True, slots=True)
class UploadInfo:
    upload_id: str
    bucket: str
    key: str
    content_type: str
    metadata: dict[str, str]
    checksum_algorithm: str | None  # e.g. CRC32
    checksum_type: str | None  # COMPOSITE or FULL_OBJECT
    initiator: str
    initiated: float  # epoch seconds


@dataclass(frozen=True, slots=True)
class PartInfo:
    part_number: int
    size: int
    md5: str  # hex
    sha256: str  # hex
    checksum_algorithm: str | None
    checksum: str | None  # base64
    last_modified: float

    @property
    def etag(self) -> str:
        return f'"{self.md5}"'


@dataclass(frozen=True, slots=True)
class RequestedPart:
    """One entry of a CompleteMultipartUpload part list."""

    part_number: int
    etag: str
    checksums: dict[str, str] = field(default_factory=dict)  # algorithm -> base64, as listed


@dataclass(frozen=True, slots=True)
class PartListing:
    upload: UploadInfo
    parts: list[PartInfo]
    is_truncated: bool
    next_part_number_marker: int | None


@dataclass(frozen=True, slots=True)
class UploadListing:
    uploads: list[UploadInfo]
    common_prefixes: list[str]
    is_truncated: bool
    next_key_marker: str | None
    next_upload_id_marker: str | None


@dataclass(frozen=True, slots=True)
class Assembly:
    """A completed upload's bytes, verified and in a temporary file, not yet an object."""

    upload: UploadInfo
    parts: list[PartInfo]
    size: int
    sha256: str
    etag: str  # quoted, "<md5 of the parts' binary MD5s>-<part count>"
    tmp: Path


def no_such_upload() -> ApiError:
    return ApiError(
        "NoSuchUpload",
        "The specified multipart upload does not exist. The upload ID might not be valid, "
        "or the multipart upload might have been aborted or completed.",
        404,
    )


def invalid_part(why: str) -> ApiError:
    return ApiError(
        "InvalidPart",
        f"One or more of the specified parts could not be found or did not match: {why}",
        400,
    )


def check_part_number(part_number: int) -> None:
    if not 1 <= part_number <= MAX_PART_NUMBER:
        raise ApiError(
            "InvalidArgument", f"Part number must be an integer between 1 and {MAX_PART_NUMBER}, inclusive",
            400,
        )


def _to_upload(row: MultipartUpload) -> UploadInfo:
    return UploadInfo(
        upload_id=row.upload_id,
        bucket=row.bucket,
        key=row.key,
        content_type=row.content_type,
        metadata={str(k): str(v) for k, v in (row.metadata_ or {}).items()},
        checksum_algorithm=row.checksum_algorithm,
        checksum_type=row.checksum_type,
        initiator=row.initiator,
        initiated=row.created_at,
    )


def _to_part(row: MultipartPart) -> PartInfo:
    return PartInfo(
        part_number=row.part_number,
        size=row.size,
        md5=row.md5,
        sha256=row.sha256,
        checksum_algorithm=row.checksum_algorithm,
        checksum=row.checksum,
        last_modified=row.created_at,
    )


def _require_bucket(session: Session, name: str) -> None:
    if session.get(Bucket, name) is None:
        raise no_such_bucket(name)


class MultipartStore:
    """Multipart uploads into an `ObjectStore`; safe to call from several threads.

    Its lock is taken before the object store's (completion holds both)."""

    def __init__(self, objects: ObjectStore) -> None:
        self._objects = objects
        self._db = objects.db
        self._blobs = objects.blobs
        self._lock = threading.Lock()
        try:
            self._sweep()
        except UnavailableError as exc:  # the object store is down: serve anyway (503s), sweep next start
            logger.warning("leftover multipart parts not swept: %s", exc.message)

    # ----------------------------------------------------------------- uploads

    def create(
        self,
        bucket: str,
        key: str,
        *,
        content_type: str | None = None,
        metadata: dict[str, str] | None = None,
        checksum_algorithm: str | None = None,
        checksum_type: str | None = None,
        initiator: str = "",
    ) -> UploadInfo:
        validate_key(key)
        with self._lock, self._db.session() as session:
            _require_bucket(session, bucket)
            row = MultipartUpload(
                upload_id=secrets.token_urlsafe(32),
                bucket=bucket,
                key=key,
                content_type=content_type or DEFAULT_CONTENT_TYPE,
                metadata_=dict(metadata or {}),
                checksum_algorithm=checksum_algorithm,
                checksum_type=checksum_type,
                initiator=initiator,
                created_at=self._objects.clock(),
            )
            session.add(row)
            session.flush()
            return _to_upload(row)

    def get_upload(self, bucket: str, key: str, upload_id: str) -> UploadInfo:
        with self._db.reading() as session:
            return _to_upload(self._upload(session, bucket, key, upload_id))

    def abort(self, bucket: str, key: str, upload_id: str) -> None:
        with self._lock:
            with self._db.session() as session:
                row = self._upload(session, bucket, key, upload_id)
                session.execute(delete(MultipartPart).where(MultipartPart.upload_id == row.upload_id))
                session.delete(row)
            self._remove_parts(upload_id)

    def list_uploads(
        self,
        bucket: str,
        prefix: str = "",
        *,
        delimiter: str | None = None,
        max_uploads: int = MAX_LIST_KEYS,
        key_marker: str | None = None,
        upload_id_marker: str | None = None,
    ) -> UploadListing:
        """Uploads in progress, by key and then initiation; rolled up like ListObjects."""
        max_uploads = max(0, min(max_uploads, MAX_LIST_KEYS))
        with self._db.reading() as session:
            _require_bucket(session, bucket)
            stmt = select(MultipartUpload).where(MultipartUpload.bucket == bucket)
            if prefix:
                # substr, not LIKE: LIKE is case-insensitive on SQLite and needs escaping.
                stmt = stmt.where(func.substr(MultipartUpload.key, 1, len(prefix)) == prefix)
            if key_marker:
                after_key = MultipartUpload.key > key_marker
                marker_id = None
                if upload_id_marker:
                    marker_id = session.scalar(
                        select(MultipartUpload.id).where(
                            MultipartUpload.bucket == bucket,
                            MultipartUpload.key == key_marker,
                            MultipartUpload.upload_id == upload_id_marker,
                        )
                    )
                if marker_id is not None:
                    same_key_later = (MultipartUpload.key == key_marker) & (MultipartUpload.id > marker_id)
                    stmt = stmt.where(after_key | same_key_later)
                else:
                    stmt = stmt.where(after_key)
            stmt = stmt.order_by(MultipartUpload.key, MultipartUpload.id)
            page = page_by_key(
                session.scalars(stmt), lambda row: row.key,
                prefix=prefix, delimiter=delimiter, marker=key_marker, max_keys=max_uploads,
            )
            return UploadListing(
                uploads=[_to_upload(row) for row in page.items],
                common_prefixes=page.common_prefixes,
                is_truncated=page.is_truncated,
                next_key_marker=page.next_key,
                next_upload_id_marker=page.last_item.upload_id if page.last_item is not None else None,
            )

    # ------------------------------------------------------------------- parts

    def upload_part(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        part_number: int,
        data: bytes,
        *,
        checksum_algorithm: str | None = None,
        checksum: str | None = None,
    ) -> PartInfo:
        """Store (or replace) one part. The caller has verified `checksum` against `data`."""
        check_part_number(part_number)
        self._objects.check_size(len(data))
        sha = hashlib.sha256(data).hexdigest()
        md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
        tmp = self._objects.write_temp([data], what="writing the part")
        final: str | None = None
        preexisting = False
        replaced: str | None = None
        try:
            with self._lock, disk_writes("writing the part"):
                try:
                    with self._db.session() as session:
                        # Locked: parts of one upload sent through several processes at
                        # once take turns (one part row per number).
                        self._upload(session, bucket, key, upload_id, for_update=True)
                        final = self._part_name(upload_id, part_number, sha)
                        preexisting = self._blobs.exists(final)
                        self._blobs.install(tmp, final)  # durable before the row commits
                        row = session.get(MultipartPart, (upload_id, part_number))
                        if row is None:
                            row = MultipartPart(upload_id=upload_id, part_number=part_number)
                            session.add(row)
                        else:
                            replaced = self._part_name(upload_id, part_number, row.sha256)
                        row.size = len(data)
                        row.md5 = md5
                        row.sha256 = sha
                        row.checksum_algorithm = checksum_algorithm
                        row.checksum = checksum
                        row.created_at = self._objects.clock()
                        session.flush()
                        part = _to_part(row)
                except BaseException:
                    if final is not None and not preexisting:
                        self._blobs.delete(final)
                    raise
                if replaced is not None and replaced != final:
                    self._blobs.delete(replaced)
        finally:
            if tmp.exists():
                with contextlib.suppress(OSError):
                    tmp.unlink()
        return part

    def list_parts(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        *,
        max_parts: int = MAX_LIST_KEYS,
        part_number_marker: int = 0,
    ) -> PartListing:
        max_parts = max(0, min(max_parts, MAX_LIST_KEYS))
        with self._db.reading() as session:
            upload = _to_upload(self._upload(session, bucket, key, upload_id))
            rows = session.scalars(
                select(MultipartPart)
                .where(MultipartPart.upload_id == upload_id, MultipartPart.part_number > part_number_marker)
                .order_by(MultipartPart.part_number)
                .limit(max_parts + 1)
            ).all()
            parts = [_to_part(row) for row in rows[:max_parts]]
        truncated = len(rows) > max_parts
        return PartListing(upload, parts, truncated, parts[-1].part_number if parts else None)

    # -------------------------------------------------------------- completion

    @contextlib.contextmanager
    def assemble(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        requested: list[RequestedPart],
        *,
        observe: Callable[[bytes], None] | None = None,
    ) -> Iterator[Assembly]:
        """The object the requested parts make, in a temporary file that is removed when
        the block ends (pass it to `commit` inside the block). `observe` sees every byte
        in order (for object-level checksums)."""
        if not requested:
            raise ApiError(
                "MalformedXML", "CompleteMultipartUpload must list at least one part", 400
            )
        numbers = [p.part_number for p in requested]
        for number in numbers:
            check_part_number(number)
        if any(b <= a for a, b in itertools.pairwise(numbers)):
            raise ApiError(
                "InvalidPartOrder",
                "The list of parts was not in ascending order. Parts must be ordered by part number.",
                400,
            )
        with self._lock:
            # Open the chosen parts under the lock: a part re-uploaded meanwhile gets a new
            # name and the old one is removed, but what was opened stays readable (local
            # files; an S3 GET already answering goes on, at worst fails: 503, try again).
            upload, chosen = self._choose_parts(bucket, key, upload_id, requested)
            handles = self._open_parts(upload_id, chosen)
        try:
            whole = hashlib.sha256()
            tmp = self._objects.write_temp(self._stream(upload, chosen, handles, whole, observe),
                                           what="assembling the object")
        finally:
            for handle in handles:
                handle.close()
        md5s = b"".join(bytes.fromhex(p.md5) for p in chosen)
        etag = f'"{hashlib.md5(md5s, usedforsecurity=False).hexdigest()}-{len(chosen)}"'
        try:
            yield Assembly(upload, chosen, sum(p.size for p in chosen), whole.hexdigest(), etag, tmp)
        finally:
            if tmp.exists():
                with contextlib.suppress(OSError):
                    tmp.unlink()

    def commit(self, assembly: Assembly) -> StoredObject:
        """Make the assembled bytes the newest version of the key and end the upload, in
        one transaction; then remove the part files."""
        upload = assembly.upload

        def consume_upload(session: Session) -> None:
            row = session.scalar(select(MultipartUpload).where(MultipartUpload.upload_id == upload.upload_id))
            if row is None:  # aborted or completed by a concurrent request
                raise no_such_upload()
            session.execute(delete(MultipartPart).where(MultipartPart.upload_id == upload.upload_id))
            session.delete(row)

        with self._lock:
            stored = self._objects.commit_file(
                upload.bucket,
                upload.key,
                assembly.tmp,
                size=assembly.size,
                sha256=assembly.sha256,
                etag=assembly.etag,
                content_type=upload.content_type,
                metadata=upload.metadata,
                in_transaction=consume_upload,
            )
            self._remove_parts(upload.upload_id)
        return stored

    # --------------------------------------------------------------- internals

    def _choose_parts(
        self, bucket: str, key: str, upload_id: str, requested: list[RequestedPart]
    ) -> tuple[UploadInfo, list[PartInfo]]:
        with self._db.reading() as session:
            upload = _to_upload(self._upload(session, bucket, key, upload_id))
            stored = {
                row.part_number: _to_part(row)
                for row in session.scalars(select(MultipartPart).where(MultipartPart.upload_id == upload_id))
            }
        chosen: list[PartInfo] = []
        for want in requested:
            part = stored.get(want.part_number)
            if part is None:
                raise invalid_part(f"part {want.part_number} was not uploaded")
            if want.etag.strip().strip('"') != part.md5:
                raise invalid_part(f"the ETag of part {want.part_number} does not match")
            for algorithm, value in want.checksums.items():
                if part.checksum_algorithm != algorithm or part.checksum != value:
                    raise invalid_part(f"the {algorithm} checksum of part {want.part_number} does not match")
            chosen.append(part)
        for part in chosen[:-1]:
            if part.size < MIN_PART_BYTES:
                raise ApiError(
                    "EntityTooSmall",
                    f"Your proposed upload is smaller than the minimum allowed size: part "
                    f"{part.part_number} has {part.size} bytes, and every part but the last "
                    f"needs at least {MIN_PART_BYTES}",
                    400,
                )
        self._objects.check_size(sum(p.size for p in chosen))
        return upload, chosen

    def _open_parts(self, upload_id: str, parts: list[PartInfo]) -> list[BlobReader]:
        handles: list[BlobReader] = []
        try:
            for part in parts:
                handle = self._blobs.open(self._part_name(upload_id, part.part_number, part.sha256))
                if handle is None:
                    raise self._corrupt(upload_id, part, "missing from " + self._blobs.description)
                handles.append(handle)
        except BaseException:
            for handle in handles:
                handle.close()
            raise
        return handles

    def _stream(
        self,
        upload: UploadInfo,
        parts: list[PartInfo],
        handles: list[BlobReader],
        whole: hashlib._Hash,
        observe: Callable[[bytes], None] | None,
    ) -> Iterator[bytes]:
        for part, handle in zip(parts, handles, strict=True):
            digest = hashlib.sha256()
            while block := handle.read(_READ_BLOCK):
                digest.update(block)
                whole.update(block)
                if observe is not None:
                    observe(block)
                yield block
            if digest.hexdigest() != part.sha256:
                raise self._corrupt(upload.upload_id, part, "SHA-256 mismatch")

    @staticmethod
    def _corrupt(upload_id: str, part: PartInfo, why: str) -> ApiError:
        logger.error("corrupt part %d of multipart upload %s: %s", part.part_number, upload_id, why)
        return ApiError(
            "CorruptObject",
            f"Part {part.part_number} of the upload failed its integrity check; upload it again",
            500,
        )

    @staticmethod
    def _upload(session: Session, bucket: str, key: str, upload_id: str, *,
                for_update: bool = False) -> MultipartUpload:
        query = select(MultipartUpload).where(MultipartUpload.upload_id == upload_id)
        row = session.scalar(query.with_for_update() if for_update else query)
        # An upload id is bound to its bucket and key: a request naming another key (and so
        # authorized against another resource) must not reach it.
        if row is None or row.bucket != bucket or row.key != key:
            raise no_such_upload()
        return row

    @staticmethod
    def _part_name(upload_id: str, part_number: int, sha: str) -> str:
        return f"uploads/{upload_id}/{part_number:05d}.{sha}"

    def _remove_parts(self, upload_id: str) -> None:
        self._blobs.delete_prefix(f"uploads/{upload_id}/")

    def _sweep(self) -> None:
        """Remove part bytes no row refers to (left by a crash between installing them
        and the commit, or before a finished upload's cleanup). With a shared blob store
        only those older than SHARED_SWEEP_AGE: another process may be mid-upload."""
        cutoff = time.time() - SHARED_SWEEP_AGE if self._blobs.shared else float("inf")
        by_upload: dict[str, list[str]] = {}
        for entry in self._blobs.list("uploads/"):
            parts = entry.name.split("/")
            if len(parts) == 3 and entry.modified < cutoff:
                by_upload.setdefault(parts[1], []).append(parts[2])
        for upload_id, names in by_upload.items():
            with self._db.reading() as session:
                known = {
                    f"{row.part_number:05d}.{row.sha256}"
                    for row in session.scalars(
                        select(MultipartPart).where(MultipartPart.upload_id == upload_id)
                    )
                }
                live = session.scalar(
                    select(MultipartUpload.id).where(MultipartUpload.upload_id == upload_id)
                )
            if live is None:
                logger.info("removing the parts of finished multipart upload %s", upload_id)
                self._remove_parts(upload_id)
                continue
            for name in names:
                if name not in known:
                    self._blobs.delete(f"uploads/{upload_id}/{name}")
