"""`overair backup` and `overair restore`: one file that holds an installation.

A backup is a gzip-compressed tar archive (mode 0600: it holds every secret of the
installation) with:

- `manifest.json`: format, when, the overair version, the schema revision, the kind of
  database;
- the data directory's settings, keys and PKI (`overair.toml`, `master.key`,
  `credentials`, `url-signing.key`, `pki/`) and the object store (`objects/`: firmware,
  signed images);
- the database: `database.sqlite`, a consistent copy taken with SQLite's online backup
  API while the server runs, or `database.pgdump`, PostgreSQL's own `pg_dump` (custom
  format) of the configured database.

The broker's files (`broker/`) are left out: `serve` writes them afresh from the
database. The database is copied before the objects, so every object the copied
database names was already written (objects are written before the rows that name
them); an object deleted in between is the only thing that can be missing, and
`restore` says so.

`restore` unpacks into a new, empty data directory only (never over an installation),
refuses archive members that are links, absolute or leave the directory (tarfile's
`data` filter), writes keys 0600 and the directory 0700, and for PostgreSQL loads the
dump into an empty database with `pg_restore`, then points `overair.toml` at it.
"""

from __future__ import annotations

import datetime as dt
import glob
import io
import json
import os
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
import tomllib
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import tomli_w

from overair.core.errors import MisuseError, UnavailableError
from overair.server.settings import CONFIG_NAME, DataDir, Settings, split_password

FORMAT = "overair-backup/1"
MANIFEST = "manifest.json"
SQLITE_MEMBER = "database.sqlite"
PGDUMP_MEMBER = "database.pgdump"
# What of the data directory goes into a backup (besides the database and objects).
SECRET_FILES = ("master.key", "credentials", "url-signing.key", "dashboard-session.key")
_PG_TIMEOUT = 3600.0


@dataclass(frozen=True, slots=True)
class BackupResult:
    path: Path
    database: str  # "sqlite" or "postgresql"
    objects: int
    bytes: int


def _overair_version() -> str:
    try:
        return version("overair")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without metadata
        return "unknown"


def _pg_tool(name: str) -> str:
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    )
    if found is None:
        raise MisuseError(
            f"{name} is not installed (Debian: apt install postgresql-client)", code="MissingTool"
        )
    return found


def libpq_url(sqlalchemy_url: str) -> str:
    """postgresql+psycopg://... (SQLAlchemy) to postgresql://... (libpq, pg_dump)."""
    scheme, sep, rest = sqlalchemy_url.partition("://")
    if not sep or not scheme.startswith("postgresql"):
        raise MisuseError(f"not a PostgreSQL URL: {scheme}://...", code="InvalidDatabaseUrl")
    return f"postgresql://{rest}"


def _run_pg(tool: str, args: list[str], url: str) -> None:
    """pg_dump or pg_restore against `url`; its password goes in PGPASSWORD, never on
    the command line (where every user of the host could read it)."""
    plain, password = split_password(libpq_url(url))
    env = {**os.environ, **({"PGPASSWORD": password} if password is not None else {})}
    try:
        done = subprocess.run([_pg_tool(tool), *args, f"--dbname={plain}"], capture_output=True, text=True,
                              timeout=_PG_TIMEOUT, check=False, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UnavailableError(f"{tool} failed: {exc}") from exc
    if done.returncode != 0:
        raise UnavailableError(f"{tool} failed: {done.stderr.strip()[-500:]}")


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes, mode: int = 0o600) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, int(dt.datetime.now(dt.UTC).timestamp())
    archive.addfile(info, io.BytesIO(data))


def create_backup(settings: Settings, out: Path, revision: str | None, now: dt.datetime) -> BackupResult:
    """Write the backup of the installation `settings` describes to `out` (a new file)."""
    paths = settings.paths
    if out.exists():
        raise MisuseError(f"{out} exists: a backup never overwrites a file", code="FileExists")
    postgres = bool(settings.database_url)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    objects = 0
    try:
        with (
            os.fdopen(fd, "wb") as raw,
            tarfile.open(fileobj=raw, mode="w:gz") as archive,
            tempfile.TemporaryDirectory(prefix="overair-backup-") as scratch,
        ):
            manifest = {
                "format": FORMAT,
                "createdAt": now.isoformat(),
                "overairVersion": _overair_version(),
                "schemaRevision": revision,
                "database": "postgresql" if postgres else "sqlite",
                "accountId": settings.account_id,
            }
            _add_bytes(archive, MANIFEST, json.dumps(manifest, indent=2).encode(), 0o644)
            # The database first (see the module docstring), then what it refers to.
            if postgres:
                dump = Path(scratch) / PGDUMP_MEMBER
                _run_pg("pg_dump", ["--format=custom", "--no-owner", f"--file={dump}"], settings.db_url)
                archive.add(dump, PGDUMP_MEMBER)
            else:
                copy = Path(scratch) / SQLITE_MEMBER
                source = sqlite3.connect(f"file:{paths.database}?mode=ro", uri=True)
                try:
                    target = sqlite3.connect(copy)
                    try:
                        source.backup(target)
                    finally:
                        target.close()
                finally:
                    source.close()
                archive.add(copy, SQLITE_MEMBER)
            archive.add(paths.config, CONFIG_NAME)
            for name in SECRET_FILES:
                if (paths.root / name).exists():
                    archive.add(paths.root / name, name)
            archive.add(paths.pki, "pki")
            if paths.objects.exists():
                archive.add(paths.objects, "objects")
                objects = sum(1 for p in paths.objects.rglob("*") if p.is_file())
    except BaseException:
        out.unlink(missing_ok=True)  # nothing half-written is left to be mistaken for a backup
        raise
    return BackupResult(out, "postgresql" if postgres else "sqlite", objects, out.stat().st_size)


def read_manifest(backup: Path) -> dict[str, Any]:
    try:
        with tarfile.open(backup, "r:gz") as archive:
            member = archive.extractfile(MANIFEST)
            if member is None:
                raise MisuseError(f"{backup} has no {MANIFEST}: not an overair backup", code="InvalidBackup")
            manifest: dict[str, Any] = json.loads(member.read(1 << 20))
    except (tarfile.TarError, OSError, KeyError, ValueError) as exc:
        raise MisuseError(f"{backup} is not an overair backup: {exc}", code="InvalidBackup") from None
    if manifest.get("format") != FORMAT:
        raise MisuseError(
            f"{backup}: unknown backup format {manifest.get('format')!r} (this overair reads {FORMAT})",
            code="InvalidBackup",
        )
    return manifest


def restore_backup(backup: Path, data_dir: Path, database_url: str = "") -> dict[str, Any]:
    """Unpack `backup` into the new data directory `data_dir`; a PostgreSQL backup is
    loaded into the empty database `database_url`. Returns the manifest."""
    manifest = read_manifest(backup)
    if data_dir.exists() and any(data_dir.iterdir()):
        raise MisuseError(f"{data_dir} is not empty: restore only into a new data directory", code="NotEmpty")
    postgres = manifest.get("database") == "postgresql"
    if postgres and not database_url:
        raise MisuseError(
            "this backup is of a PostgreSQL installation: give --database-url of an empty "
            "database to load it into",
            code="DatabaseUrlRequired",
        )
    if not postgres and database_url:
        raise MisuseError(
            "this backup is of an SQLite installation; leave --database-url out", code="InvalidOption"
        )
    created = not data_dir.exists()
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    try:
        with tarfile.open(backup, "r:gz") as archive:
            # Only plain files and directories with relative names inside the directory:
            # a crafted archive cannot write elsewhere (checked here whatever the Python;
            # tarfile's `data` filter, where present, also drops set-id bits).
            members = _checked_members(archive)
            if hasattr(tarfile, "data_filter"):
                archive.extractall(data_dir, members=members, filter="data")
            else:  # pragma: no cover - Python before 3.11.4
                archive.extractall(data_dir, members=members)  # noqa: S202 - members checked above
        paths = DataDir(data_dir)
        for name in SECRET_FILES:
            if (data_dir / name).exists():
                (data_dir / name).chmod(0o600)
        for key in paths.pki.glob("*.key"):
            key.chmod(0o600)
        (data_dir / MANIFEST).unlink()
        if postgres:
            from overair.server.bootstrap import keep_password_apart, require_empty_database

            require_empty_database(database_url)
            dump = data_dir / PGDUMP_MEMBER
            _run_pg("pg_restore", ["--no-owner", "--exit-on-error", str(dump)], database_url)
            dump.unlink()
            config = tomllib.loads(paths.config.read_text())
            config["database_url"], password_file = keep_password_apart(data_dir, database_url)
            config.pop("database_password_file", None)
            if password_file:
                config["database_password_file"] = password_file
            paths.config.write_text(
                "# overair server settings; restored from a backup.\n" + tomli_w.dumps(config)
            )
        else:
            (data_dir / SQLITE_MEMBER).rename(paths.database)
            paths.database.chmod(0o600)
    except BaseException:
        if created:
            shutil.rmtree(data_dir, ignore_errors=True)
        else:
            for entry in data_dir.iterdir():
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        raise
    return manifest


def _checked_members(archive: tarfile.TarFile) -> list[tarfile.TarInfo]:
    members = archive.getmembers()
    for member in members:
        parts = Path(member.name).parts
        if not (member.isfile() or member.isdir()) or member.name.startswith(("/", "\\")) or ".." in parts:
            raise MisuseError(
                f"the backup holds {member.name!r}, which is not a plain file inside the data "
                "directory: refused",
                code="InvalidBackup",
            )
        member.mode = (member.mode or 0) & 0o777
    return members
