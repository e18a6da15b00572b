"""`overair db status` and `overair db upgrade`: the schema, seen and upgraded on
purpose (storage/upgrade.py; `overair serve` upgrades the same way on start)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from overair.cli.common import LocalDataDirOption as DataDirOption
from overair.cli.common import err, out, print_error
from overair.core.errors import OverairError

db_app = typer.Typer(help="The database schema: status and upgrades.", no_args_is_help=True)
DatabaseUrlOption = Annotated[str | None, typer.Option(help="PostgreSQL URL (default: overair.toml's).")]


@db_app.command("status")
def status(data_dir: DataDirOption, database_url: DatabaseUrlOption = None) -> None:
    """The schema revision of the database, and the revisions an upgrade would apply."""
    from overair.server.settings import load_settings
    from overair.server.storage.db import Database
    from overair.server.storage.upgrade import schema_state

    try:
        settings = load_settings(data_dir, database_url=database_url)
        db = Database(settings.db_url)
        try:
            state = schema_state(db.engine)
        finally:
            db.close()
    except OverairError as exc:
        print_error(err, exc.code, exc.message)
        raise typer.Exit(2) from None
    out.print(f"schema: {state.current or 'empty'}  (this overair: {state.head})")
    if state.up_to_date:
        out.print("up to date")
    else:
        out.print(f"pending: {', '.join(state.pending)}  (run `overair db upgrade`)")


@db_app.command("upgrade")
def upgrade(data_dir: DataDirOption, database_url: DatabaseUrlOption = None) -> None:
    """Back the database up (SQLite; PostgreSQL: take a pg_dump first), apply pending
    migrations, and create what `overair init` makes since the installation's version."""
    import logging

    from overair.server.bootstrap import upgrade_installation
    from overair.server.clock import system_clock
    from overair.server.sealing import Sealer
    from overair.server.settings import load_settings
    from overair.server.storage.db import Database

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        settings = load_settings(data_dir, database_url=database_url)
        db = Database(settings.db_url)
        try:
            report = upgrade_installation(db, Sealer.load(settings.paths.master_key), settings, system_clock)
        finally:
            db.close()
    except OverairError as exc:
        print_error(err, exc.code, exc.message)
        raise typer.Exit(2) from None
    before = report.before
    if before.up_to_date:
        out.print(f"up to date (schema {before.head})")
        return
    out.print(f"upgraded the schema from {before.current or 'empty'} to {before.head}")
    if report.backup is not None:
        out.print(f"backup: {escape(str(report.backup))}")
    for what in report.completed:
        out.print(f"created {escape(what)}")


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")
