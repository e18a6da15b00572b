"""Schema upgrades that an operator can see and undo: check, back up, migrate, complete.

`overair serve` and `overair db upgrade` both call `upgrade_database`:

1. The database's revision must be one this overair knows. A newer one (an older
   overair started after an upgrade) is refused with `SchemaTooNew`, naming both
   revisions, before anything touches it.
2. When migrations are pending on a database that holds data, a SQLite database is
   first copied with SQLite's online backup API into `DATA/backups/` (a consistent
   copy even while another process reads it); for PostgreSQL the log says to take a
   `pg_dump` first, since the server cannot know where the operator keeps dumps.
3. Each revision applied is logged, and the caller is told what happened.
4. What `overair init` creates and an older version did not is created on the way
   (`_COMPLETIONS`: today the OTA service role `overair-ota`, added with 0006), only
   when upgrading across the revision that brought it, so a role an operator deleted
   on purpose is not brought back at every start.
"""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from overair.core.errors import MisuseError
from overair.server.storage.db import MIGRATIONS_DIR, migrate

log = logging.getLogger("overair.storage")


class SchemaTooNew(MisuseError):
    code = "SchemaTooNew"


@dataclass(frozen=True, slots=True)
class SchemaState:
    current: str | None  # None: an empty database
    head: str
    pending: tuple[str, ...]  # revisions to apply, oldest first

    @property
    def up_to_date(self) -> bool:
        return not self.pending


@dataclass(frozen=True, slots=True)
class UpgradeReport:
    before: SchemaState
    backup: Path | None
    completed: tuple[str, ...]  # what was created on the way, for people


def _scripts() -> ScriptDirectory:
    return ScriptDirectory(str(MIGRATIONS_DIR))


def schema_state(engine: Engine) -> SchemaState:
    """Where the database stands against this overair's migrations; refuses a revision
    this overair does not know."""
    scripts = _scripts()
    head = scripts.get_current_head()
    assert head is not None  # the package ships its migrations
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    known = [script.revision for script in scripts.walk_revisions()]  # newest first
    if current is not None and current not in known:
        raise SchemaTooNew(f"the database's schema is at revision {current}, which this overair does not "
                           f"know (it knows up to {head}): it was upgraded by a newer overair. Run that "
                           "version, or restore the backup taken before the upgrade (DATA/backups/).")
    newer = known[:known.index(current)] if current is not None else known
    return SchemaState(current, head, tuple(reversed(newer)))


def backup_sqlite(database: Path, backups: Path, revision: str | None, now: dt.datetime) -> Path:
    """A consistent copy of a live SQLite database (online backup API), mode 0600."""
    backups.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = backups / f"overair-{revision or 'empty'}-{now.strftime('%Y%m%dT%H%M%SZ')}.db"
    source = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        copy = sqlite3.connect(target)
        try:
            source.backup(copy)
        finally:
            copy.close()
    finally:
        source.close()
    target.chmod(0o600)
    return target


# (revision that brought it, what to create): run when an upgrade crosses that revision.
Completion = tuple[str, str, Callable[[], None]]


def upgrade_database(engine: Engine, *, sqlite_file: Path | None, backups: Path,
                     completions: tuple[Completion, ...] = (),
                     now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> UpgradeReport:
    """Check, back up, migrate and complete (module docstring). `sqlite_file` is the
    database file when it is SQLite (else None)."""
    state = schema_state(engine)
    if state.up_to_date:
        return UpgradeReport(state, None, ())
    backup = None
    if state.current is not None:  # a database with data in it
        if sqlite_file is not None:
            backup = backup_sqlite(sqlite_file, backups, state.current, now())
            log.info("backed up the database (schema %s) to %s", state.current, backup)
        else:
            log.warning("upgrading a PostgreSQL database in place (schema %s): take a pg_dump first "
                        "if you may need to go back", state.current)
    log.info("migrating the database schema from %s to %s (%s)", state.current or "empty", state.head,
             ", ".join(state.pending))
    migrate(engine)
    done = []
    if state.current is not None:  # a fresh database is completed by `init` itself
        for revision, what, create in completions:
            if revision in state.pending:
                create()
                done.append(what)
                log.info("created %s (what `overair init` makes since schema %s)", what, revision)
    log.info("database schema is at %s", state.head)
    return UpgradeReport(state, backup, tuple(done))
