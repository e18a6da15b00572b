"""Signing jobs per second through the signing service, against the limit of doing the
same cryptography directly in the same process.

    .venv/bin/python -m bench.signing [--images 50] [--size-mib 1]

The service path is the whole StartSigningJob: read the source object version from the
object store (SHA-256 checked on read), hash it, open the sealed key, sign, check the
signature, write the signed envelope to the destination bucket, record the job. The
limit is `hashlib.sha256` + ECDSA P-256 signing of the same images with `cryptography`
and a key already in memory. Both run one job at a time in this process, on a fresh
SQLite data directory; the ratio shows what the service's bookkeeping costs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from overair.core import codesign
from overair.server import pki
from overair.server.bootstrap import DEV_PROFILE, initialize
from overair.server.sealing import Sealer
from overair.server.settings import load_settings
from overair.server.signing.certstore import CertificateStore
from overair.server.signing.service import SigningService
from overair.server.storage.db import Database
from overair.server.storage.objects import ObjectStore


def _admit(action: str, resource: str) -> None:
    """The bench measures signing, not IAM: every read and write is admitted (bench.authz
    measures the policy decision on its own)."""


BUCKET = "bench-firmware"


def direct(images: list[bytes], key: ec.EllipticCurvePrivateKey) -> float:
    started = time.perf_counter()
    for image in images:
        codesign.sign_digest(key, codesign.sha256(image))
    return time.perf_counter() - started


def through_service(images: list[bytes], data_dir: Path) -> float:
    settings = load_settings(data_dir)
    paths = settings.paths
    db = Database(settings.db_url)
    objects = ObjectStore(db, paths.objects)
    roots = codesign.load_pem_certificates(paths.code_signing_root.read_bytes())
    certificates = CertificateStore(db, settings, Sealer.from_file(paths.master_key), time.time,
                                    lambda: roots)
    signing = SigningService(db, settings, certificates, objects, time.time)
    objects.create_bucket(BUCKET)
    objects.set_versioning(BUCKET, "Enabled")
    versions = [objects.put_object(BUCKET, f"in/{i}.bin", image).version_id for i, image in enumerate(images)]
    started = time.perf_counter()
    for i, version in enumerate(versions):
        job = signing.start_job(DEV_PROFILE, BUCKET, f"in/{i}.bin", version, BUCKET, "signed/",
                                authorize=_admit, client_request_token=f"bench-{i}")
        if job.status != "Succeeded":
            raise RuntimeError(f"signing job failed: {job.status_reason}")
    elapsed = time.perf_counter() - started
    db.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--size-mib", type=float, default=1.0)
    args = parser.parse_args()
    size = int(args.size_mib * 1024 * 1024)
    images = [os.urandom(size) for _ in range(args.images)]
    with tempfile.TemporaryDirectory(prefix="overair-bench-") as tmp:
        data_dir = Path(tmp) / "server"
        initialize(data_dir)
        service_seconds = through_service(images, data_dir)
    key = pki.make_root_ca("bench", dt.datetime.now(dt.UTC)).key
    direct_seconds = direct(images, key)
    service_rate, direct_rate = args.images / service_seconds, args.images / direct_seconds
    print(f"images: {args.images} x {size / 2**20:.2f} MiB, ECDSA P-256 / SHA-256, one at a time")
    print(f"direct (sha256 + sign, key in memory): {direct_rate:8.1f} signatures/s "
          f"({direct_seconds * 1000 / args.images:.2f} ms each)")
    print(f"signing service (StartSigningJob):     {service_rate:8.1f} jobs/s "
          f"({service_seconds * 1000 / args.images:.2f} ms each)")
    print(f"ratio service / direct: {service_rate / direct_rate:.2f}")


if __name__ == "__main__":
    main()
