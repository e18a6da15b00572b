"""The checked copies the nginx download front serves (delivery/front_files.py), over a
real object store (local directory and SeaweedFS S3): a file appears only once its
version's SHA-256 checked out, never for corrupted bytes; the disk bound holds; a
deleted object's files go; nothing from a previous run is served."""

from __future__ import annotations

import time
from pathlib import Path

from overair.server.delivery.front_files import RETRY_SECONDS, FrontFiles
from overair.server.delivery.nginx_front import FILE_PREFIX, object_token
from overair.server.storage.db import Database
from overair.server.storage.objects import ObjectStore
from tests.blob_helpers import read_stored, stored_names, write_stored
from tests.conftest import BlobFactory


def _store(db: Database, tmp_path: Path, blob_backend: BlobFactory) -> ObjectStore:
    objects = ObjectStore(db, tmp_path / "objects", blobs=blob_backend(tmp_path / "objects"))
    objects.create_bucket("firmware")
    objects.set_versioning("firmware", "Enabled")
    return objects


def _settled(files: FrontFiles, bucket: str, key: str, version: str, size: int) -> str | None:
    """Grant once, wait for the copy that started (it runs in the background), grant again."""
    if (name := files.name(bucket, key, version, size)) is not None:
        return name
    deadline = time.monotonic() + 30
    while not files.settled(bucket, key, version):
        assert time.monotonic() < deadline, "the copy did not end"
        time.sleep(0.02)
    return files.name(bucket, key, version, size)


def test_a_granted_version_is_served_from_its_checked_copy(db: Database, tmp_path: Path,
                                                           blob_backend: BlobFactory) -> None:
    objects = _store(db, tmp_path, blob_backend)
    image = bytes(range(256)) * 4096
    stored = objects.put_object("firmware", "app.bin", image)
    (tmp_path / "front").mkdir()
    (tmp_path / "front" / (FILE_PREFIX + "stale")).write_bytes(b"a previous run's")
    files = FrontFiles(tmp_path / "front", objects, max_bytes=10 * len(image))
    assert not (tmp_path / "front" / (FILE_PREFIX + "stale")).exists()
    assert files.name("firmware", "app.bin", stored.version_id, len(image)) is None  # copy starts
    name = _settled(files, "firmware", "app.bin", stored.version_id, len(image))
    assert name == object_token("firmware", "app.bin", stored.version_id)
    assert (tmp_path / "front" / (FILE_PREFIX + name)).read_bytes() == image
    assert files.bytes_held == len(image)
    assert sorted(p.name for p in (tmp_path / "front").iterdir()) == [FILE_PREFIX + name]  # no partial left
    files.forget("firmware", "app.bin")  # the object was deleted
    assert not (tmp_path / "front" / (FILE_PREFIX + name)).exists()
    assert files.bytes_held == 0
    files.close()


def test_corrupted_bytes_are_never_copied_for_serving(db: Database, tmp_path: Path,
                                                     blob_backend: BlobFactory) -> None:
    objects = _store(db, tmp_path, blob_backend)
    stored = objects.put_object("firmware", "app.bin", b"firmware image " * 1000)
    [blob] = [name for name in stored_names(objects.blobs, "data/")
              if read_stored(objects.blobs, name).startswith(b"firmware")]
    write_stored(objects.blobs, blob, b"firmwarE image " * 1000)  # bit rot or tampering in storage
    now = [0.0]
    files = FrontFiles(tmp_path / "front", objects, max_bytes=1 << 20, clock=lambda: now[0])
    assert _settled(files, "firmware", "app.bin", stored.version_id, 15_000) is None
    assert list((tmp_path / "front").iterdir()) == []  # the partial copy went too
    # Every grant would otherwise read the whole object from the store again.
    assert files.name("firmware", "app.bin", stored.version_id, 15_000) is None
    assert files.settled("firmware", "app.bin", stored.version_id)  # no copy started
    now[0] += RETRY_SECONDS
    assert files.name("firmware", "app.bin", stored.version_id, 15_000) is None
    assert not files.settled("firmware", "app.bin", stored.version_id)  # tried again
    assert _settled(files, "firmware", "app.bin", stored.version_id, 15_000) is None
    files.close()


def test_the_disk_bound_drops_the_least_recently_granted(db: Database, tmp_path: Path,
                                                        blob_backend: BlobFactory) -> None:
    objects = _store(db, tmp_path, blob_backend)
    versions = [objects.put_object("firmware", f"app-{i}.bin", bytes([i]) * 1000) for i in range(3)]
    files = FrontFiles(tmp_path / "front", objects, max_bytes=2500)
    first, second, third = ((v.key, v.version_id) for v in versions)
    assert _settled(files, "firmware", *first, 1000)
    assert _settled(files, "firmware", *second, 1000)
    assert files.name("firmware", *first, 1000)  # granted again: now the most recent
    assert _settled(files, "firmware", *third, 1000)
    held = {p.name for p in (tmp_path / "front").iterdir()}
    assert held == {FILE_PREFIX + object_token("firmware", *v) for v in (first, third)}
    assert files.bytes_held == 2000
    assert files.name("firmware", "big.bin", "v", 2501) is None  # larger than the bound: never copied
    assert files.settled("firmware", "big.bin", "v")
    files.close()
