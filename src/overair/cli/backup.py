"""`overair backup` and `overair restore` (server/storage/backup.py): one file that holds
an installation, taken while the server runs, restored into a new data directory."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from overair.cli.common import LocalDataDirOption, err, out, print_error
from overair.core.errors import OverairError


def backup(
    data_dir: LocalDataDirOption,
    out_file: Annotated[Path, typer.Option("--out", "-o", help="The backup file to write (new).")],
) -> None:
    """A consistent copy of the installation while it runs: database (SQLite online
    backup or pg_dump), settings, keys, PKI and firmware objects. The file holds every
    secret of the installation: it is written 0600; keep it like the master key."""
    from overair.server.settings import load_settings
    from overair.server.storage.backup import create_backup
    from overair.server.storage.db import Database
    from overair.server.storage.upgrade import schema_state

    try:
        settings = load_settings(data_dir)
        db = Database(settings.db_url)
        try:
            revision = schema_state(db.engine).current
        finally:
            db.close()
        result = create_backup(settings, out_file, revision, dt.datetime.now(dt.UTC))
    except OverairError as exc:
        print_error(err, exc.code, exc.message)
        raise typer.Exit(2) from None
    out.print(
        f"[green]backed up[/green] {escape(str(data_dir))} to {escape(str(result.path))}: "
        f"{result.database} database (schema {revision or 'empty'}), {result.objects} object file(s), "
        f"{result.bytes} bytes"
    )


def restore(
    backup_file: Annotated[
        Path, typer.Argument(help="A file written by `overair backup`.", exists=True, dir_okay=False)
    ],
    data_dir: LocalDataDirOption,
    database_url: Annotated[
        str, typer.Option(help="PostgreSQL backups: the empty database to load it into.")
    ] = "",
) -> None:
    """Restore a backup into a new data directory (and, for PostgreSQL, an empty
    database). Then `overair serve --data-dir` it; an older backup is upgraded on start."""
    from overair.server.storage.backup import restore_backup

    try:
        manifest = restore_backup(backup_file, data_dir, database_url)
    except OverairError as exc:
        print_error(err, exc.code, exc.message)
        raise typer.Exit(2) from None
    out.print(
        f"[green]restored[/green] the backup of {escape(str(manifest.get('createdAt')))} (overair "
        f"{escape(str(manifest.get('overairVersion')))}, "
        f"schema {escape(str(manifest.get('schemaRevision')))}) "
        f"into {escape(str(data_dir))}; start it with: overair serve --data-dir {escape(str(data_dir))}"
    )


def register(app: typer.Typer) -> None:
    app.command("backup")(backup)
    app.command("restore")(restore)
