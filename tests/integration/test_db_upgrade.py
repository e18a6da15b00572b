"""Schema upgrades an operator can see and undo (storage/upgrade.py): an installation
from an older overair is backed up, migrated and completed; a schema newer than this
overair is refused with a clear error, never an Alembic traceback."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text
from typer.testing import CliRunner

from overair.cli.main import app as overair_cli
from overair.server.bootstrap import DEFAULT_OTA_ROLE, initialize
from overair.server.settings import load_settings
from overair.server.storage.db import MIGRATIONS_DIR, Database
from tests.server_harness import free_port

OVERAIR = str(Path(sys.executable).parent / "overair")


def _installation(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    initialize(data, http_port=free_port(), mqtt_port=free_port(), download_port=free_port())
    return data


def _at_revision(data: Path, revision: str) -> None:
    """Take the database back to an older overair's schema (its migrations' downgrades)."""
    db = Database(load_settings(data).db_url)
    try:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        with db.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, revision)
    finally:
        db.close()


# Closed explicitly: a `with sqlite3.connect()` block only commits, and the connection
# stays open until it is collected. The full suite once found three files in backups/
# where one was expected, most likely the backup's -wal and -shm beside it, after the
# server's young-collection threshold (app.py) made the cyclic collector run later.
def _revision(path: Path) -> str:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return str(connection.execute("select version_num from alembic_version").fetchone()[0])


def _roles(data: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(load_settings(data).paths.database)) as connection:
        return [row[0] for row in connection.execute("select name from iam_roles")]


def test_an_older_installation_is_backed_up_migrated_and_given_what_init_makes_now(tmp_path: Path) -> None:
    data = _installation(tmp_path)
    _at_revision(data, "0005")  # before IAM: no roles table, so no OTA role
    runner = CliRunner()
    status = runner.invoke(overair_cli, ["db", "status", "--data-dir", str(data)])
    assert status.exit_code == 0, status.output
    assert "schema: 0005" in status.output
    assert "pending: 0006" in status.output

    upgraded = runner.invoke(overair_cli, ["db", "upgrade", "--data-dir", str(data)])
    assert upgraded.exit_code == 0, upgraded.output
    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()  # later migrations run too
    assert f"upgraded the schema from 0005 to {head}" in upgraded.output
    assert f"created the OTA service role {DEFAULT_OTA_ROLE}" in upgraded.output
    (backup,) = (data / "backups").iterdir()
    assert _revision(backup) == "0005"  # the copy is the database as it was
    assert backup.stat().st_mode & 0o077 == 0
    assert _revision(data / "overair.db") == head
    assert DEFAULT_OTA_ROLE in _roles(data)

    again = runner.invoke(overair_cli, ["db", "upgrade", "--data-dir", str(data)])
    assert "up to date" in again.output
    assert len(list((data / "backups").iterdir())) == 1  # nothing to back up when nothing changes


def test_a_schema_newer_than_this_overair_is_refused_by_name(tmp_path: Path) -> None:
    data = _installation(tmp_path)
    db = Database(load_settings(data).db_url)
    try:
        with db.engine.begin() as connection:
            connection.execute(text("update alembic_version set version_num = '0099'"))
    finally:
        db.close()
    status = CliRunner().invoke(overair_cli, ["db", "status", "--data-dir", str(data)])
    assert status.exit_code == 2
    assert "SchemaTooNew" in status.output
    assert "0099" in status.output
    served = subprocess.run([OVERAIR, "serve", "--data-dir", str(data)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert served.returncode == 2
    assert "SchemaTooNew" in served.stderr
    assert "Traceback" not in served.stderr
    assert _revision(data / "overair.db") == "0099"  # untouched
