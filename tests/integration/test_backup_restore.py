"""`overair backup` and `overair restore` (issue 16, item 4), as an operator runs them,
on SQLite and PostgreSQL: a backup taken while the server serves, restored into a new
data directory (and database), comes up with the same things, firmware objects, users,
keys and an intact audit chain; and what restore refuses."""

from __future__ import annotations

import io
import stat
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from overair.cli.client import ApiClients
from overair.server.app import ServerThread
from overair.server.settings import load_settings
from tests.server_harness import RunningServer, running_server

OVERAIR = str(Path(sys.executable).parent / "overair")


def overair(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([OVERAIR, *args], capture_output=True, text=True, timeout=300, check=False)


@contextmanager
def serving(data_dir: Path) -> Iterator[RunningServer]:
    settings = load_settings(data_dir)
    thread = ServerThread(settings)
    thread.start()
    try:
        yield RunningServer(settings, thread, ApiClients.from_data_dir(data_dir))
    finally:
        thread.stop()


def test_a_backup_taken_while_serving_restores_the_whole_installation(
    tmp_path: Path, database_url: str, request: pytest.FixtureRequest
) -> None:
    original, restored, backup = tmp_path / "original", tmp_path / "restored", tmp_path / "overair.backup"
    postgres = database_url.startswith("postgresql")
    firmware = b"firmware image \x00\x01" * 5000
    with running_server(original, database_url=database_url if postgres else "") as srv:
        iot, s3, iam = srv.client("iot"), srv.client("s3"), srv.client("iam")
        iot.create_thing(thingName="kept-1", attributePayload={"attributes": {"site": "north"}})
        s3.create_bucket(Bucket="firmware")
        put = s3.put_object(Bucket="firmware", Key="app.bin", Body=firmware)
        iam.create_user(UserName="ops")
        made = overair("backup", "--data-dir", str(original), "--out", str(backup))
        assert made.returncode == 0, made.stderr
        assert stat.S_IMODE(backup.stat().st_mode) == 0o600
        again = overair("backup", "--data-dir", str(original), "--out", str(backup))
        assert again.returncode == 2
        assert "FileExists" in again.stderr
    target_db = ""
    if postgres:
        target_db = request.getfixturevalue("postgres").new_database()
        missing = overair("restore", str(backup), "--data-dir", str(restored))
        assert missing.returncode == 2
        assert "DatabaseUrlRequired" in missing.stderr
        assert not restored.exists() or not any(restored.iterdir())
    done = overair("restore", str(backup), "--data-dir", str(restored), *(
        ["--database-url", target_db] if postgres else []))
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(restored.stat().st_mode) == 0o700
    assert stat.S_IMODE((restored / "master.key").stat().st_mode) == 0o600
    assert load_settings(restored).database_url == target_db
    with serving(restored) as copy:
        thing = copy.client("iot").describe_thing(thingName="kept-1")
        assert thing["attributes"] == {"site": "north"}
        body = copy.client("s3").get_object(Bucket="firmware", Key="app.bin")
        assert body["Body"].read() == firmware
        assert body.get("ETag") == put.get("ETag")
        assert "ops" in {u["UserName"] for u in copy.client("iam").list_users()["Users"]}
    verified = overair("audit", "verify", "--data-dir", str(restored))
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_restore_never_writes_over_an_installation_or_outside_the_directory(tmp_path: Path) -> None:
    backup = tmp_path / "b.backup"
    with running_server(tmp_path / "original"):
        made = overair("backup", "--data-dir", str(tmp_path / "original"), "--out", str(backup))
        assert made.returncode == 0, made.stderr
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    refused = overair("restore", str(backup), "--data-dir", str(occupied))
    assert refused.returncode == 2
    assert "NotEmpty" in refused.stderr
    assert [p.name for p in occupied.iterdir()] == ["keep.txt"]

    # A crafted archive: a valid manifest, then a member that climbs out.
    with tarfile.open(backup, "r:gz") as good:
        manifest = good.extractfile("manifest.json")
        assert manifest is not None
        manifest_bytes = manifest.read()
    crafted = tmp_path / "crafted.backup"
    with tarfile.open(crafted, "w:gz") as archive:
        for name, data in (("manifest.json", manifest_bytes), ("../escaped.txt", b"pwned")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("pki/evil")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(link)
    target = tmp_path / "target"
    attacked = overair("restore", str(crafted), "--data-dir", str(target))
    assert attacked.returncode == 2
    assert "InvalidBackup" in attacked.stderr
    assert not (tmp_path / "escaped.txt").exists()
    assert not target.exists()
    junk = tmp_path / "junk.backup"
    junk.write_bytes(b"not a tar")
    assert "InvalidBackup" in overair("restore", str(junk), "--data-dir", str(target)).stderr
