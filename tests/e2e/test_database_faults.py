"""A database that is corrupt, and a disk that is full, through the real server (issue 12
finding 13): every API call answers a clear 503 naming the cause, `/health` says the
database is down, and a write that fails leaves nothing half-written behind.

The full disk is real: the server runs as `overair serve` in its own mount namespace
(`unshare`, a user namespace too when not root) on a small tmpfs, and the test fills it
with uploads until the disk refuses one.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from overair.cli.client import ApiClients
from overair.server.app import ServerThread
from overair.server.bootstrap import initialize
from overair.server.settings import load_settings
from tests.server_harness import free_port, running_server


def _health(endpoint: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"{endpoint}/health", timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _corrupt_table_root(database: Path, table: str) -> None:
    """Overwrite the root page of `table` with garbage, as a bad sector or a torn write would."""
    with sqlite3.connect(database) as connection:
        page_size = connection.execute("PRAGMA page_size").fetchone()[0]
        root = connection.execute("SELECT rootpage FROM sqlite_master WHERE type = 'table' AND name = ?",
                                  (table,)).fetchone()[0]
    connection.close()
    assert not database.with_name(database.name + "-wal").exists() or \
        database.with_name(database.name + "-wal").stat().st_size == 0
    with database.open("r+b") as raw:
        raw.seek((root - 1) * page_size)
        raw.write(b"\xa5" * page_size)


def test_corrupt_database_answers_503_naming_it_and_health_says_so(tmp_path: Path) -> None:
    data_dir = tmp_path / "server"
    with running_server(data_dir) as srv:
        srv.client("iot").create_thing(thingName="before-the-corruption")
        assert _health(srv.endpoint)[0] == 200
    # Every request looks its access key up: with that table's root page unreadable,
    # every authenticated call meets the corruption.
    _corrupt_table_root(data_dir / "overair.db", "access_keys")
    thread = ServerThread(load_settings(data_dir))
    thread.start()
    try:
        clients = ApiClients.from_data_dir(data_dir)
        calls: tuple[Callable[[], object], ...] = (
                     lambda: clients.client("iot").list_things(),
                     lambda: clients.client("s3").list_buckets(),
                     lambda: clients.client("iam").list_users())
        for call in calls:
            with pytest.raises(ClientError) as refused:
                call()
            error = refused.value.response["Error"]
            assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
            assert error["Message"] == "the database is unavailable: database disk image is malformed"
        status, body = _health(clients.endpoint_url)
        assert status == 503
        assert body["status"] == "degraded"
        assert body["database"] == "down"
        assert "malformed" in body["database_error"]
    finally:
        thread.stop()


# ----------------------------------------------------------------------------- full disk


def _namespace_prefix() -> list[str]:
    """`unshare` for a private mount namespace (and, unless root, a user namespace in
    which the test may mount)."""
    unshare = shutil.which("unshare")
    assert unshare is not None, "util-linux's unshare is needed for the full-disk test"
    if os.geteuid() == 0:
        return [unshare, "--mount", "--propagation", "private"]
    return [unshare, "--user", "--map-root-user", "--mount", "--propagation", "private"]


@contextmanager
def _server_on_a_small_disk(tmp: Path, size_mib: int) -> Iterator[tuple[ApiClients, Path]]:
    """`overair serve` with its data directory on a `size_mib` tmpfs; yields its API
    clients and the data directory as the server sees it (through /proc/<pid>/root)."""
    seed, mount = tmp / "seed", tmp / "disk"
    mount.mkdir()
    initialize(seed, http_port=free_port(), mqtt_port=free_port(), download_port=free_port())
    script = (f"mount -t tmpfs -o size={size_mib}m overair-test {mount} && cp -a {seed}/. {mount}/ && "
              f"exec {Path(sys.executable).with_name('overair')} serve --data-dir {mount}")
    log = (tmp / "serve.log").open("wb")
    process = subprocess.Popen([*_namespace_prefix(), "sh", "-c", script], stdout=log,
                               stderr=subprocess.STDOUT)
    try:
        clients = ApiClients.from_data_dir(seed)
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (tmp / "serve.log").read_text()
            try:
                if _health(clients.endpoint_url)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, (tmp / "serve.log").read_text()
            time.sleep(0.2)
        yield clients, Path(f"/proc/{process.pid}/root") / mount.relative_to("/")
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _refusal(call: Any) -> tuple[int, str]:
    with pytest.raises(ClientError) as refused:
        call()
    response = refused.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Message"]


def test_full_disk_answers_503_naming_it_and_leaves_nothing_half_written(tmp_path: Path) -> None:
    blob = os.urandom(1024 * 1024)
    with _server_on_a_small_disk(tmp_path, size_mib=24) as (clients, data_dir):
        s3 = clients.client("s3")
        s3.create_bucket(Bucket="firmware")
        stored: list[str] = []
        for index in range(64):  # far more than fits
            key = f"image-{index}.bin"
            try:
                s3.put_object(Bucket="firmware", Key=key, Body=blob)
            except ClientError as exc:
                status = exc.response["ResponseMetadata"]["HTTPStatusCode"]
                message = exc.response["Error"]["Message"]
                break
            stored.append(key)
        else:
            raise AssertionError("the disk never filled")
        assert status == 503
        assert message in ("no space left on device while writing the object",
                           "the database is unavailable: database or disk is full")
        # Nothing of the refused write is visible or left on disk.
        with pytest.raises(ClientError) as missing:
            s3.head_object(Bucket="firmware", Key=key)
        assert missing.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
        assert list(data_dir.joinpath("objects", "tmp").iterdir()) == []

        # A multipart upload on the full disk: the part is refused whole, the upload stays usable.
        upload = s3.create_multipart_upload(Bucket="firmware", Key="assembled.bin")["UploadId"]
        part_status, part_message = _refusal(lambda: s3.upload_part(
            Bucket="firmware", Key="assembled.bin", UploadId=upload, PartNumber=1, Body=blob * 6))
        assert part_status == 503
        assert "no space left on device" in part_message or "disk is full" in part_message
        assert s3.list_parts(Bucket="firmware", Key="assembled.bin", UploadId=upload).get("Parts", []) == []
        assert list(data_dir.joinpath("objects", "tmp").iterdir()) == []

        # What was stored before is intact; freeing space makes writes work again.
        assert s3.get_object(Bucket="firmware", Key=stored[0])["Body"].read() == blob
        for old in stored[: len(stored) // 2 + 1]:
            s3.delete_object(Bucket="firmware", Key=old)
        s3.put_object(Bucket="firmware", Key=key, Body=blob)
        assert s3.get_object(Bucket="firmware", Key=key)["Body"].read() == blob
        s3.upload_part(Bucket="firmware", Key="assembled.bin", UploadId=upload, PartNumber=1, Body=b"tail")
