"""`overair audit ...`: check and read the hash-chained audit log.

These commands read the database directly, not through the API: a verifier that asked
the server would trust the very process whose records it checks. They only read, so
they are safe to run while the server is serving.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from overair.cli.common import print_error
from overair.core.errors import MisuseError, OverairError

if TYPE_CHECKING:
    from overair.server.audit.chain import ChainEntry
    from overair.server.storage.db import Database

audit_app = typer.Typer(help="The tamper-evident audit log: verify it, save its head, list entries.",
                        no_args_is_help=True)
err = Console(stderr=True)

DataDirOption = Annotated[
    Path, typer.Option("--data-dir", help="The server's data directory.", envvar="OVERAIR_DATA_DIR")
]
DatabaseUrlOption = Annotated[
    str | None, typer.Option(help="PostgreSQL URL, if not the one in the data directory's settings.")
]
EXIT_TAMPERED = 1  # verification failed; 2 is for usage and setup errors, as elsewhere


def parse_time(text: str) -> float:
    """ISO 8601 (`2024-05-01`, `2024-05-01T12:00:00Z`, with an offset) to epoch seconds;
    without an offset the time is UTC."""
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise MisuseError(f"{text!r} is not an ISO 8601 time (e.g. 2024-05-01T12:00:00Z)",
                          code="InvalidTime") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def format_time(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@contextmanager
def _database(data_dir: Path, database_url: str | None) -> Iterator[Database]:
    from overair.server.settings import load_settings
    from overair.server.storage.db import Database

    try:
        settings = load_settings(data_dir, database_url=database_url)
        db = Database(settings.db_url)
        try:
            yield db
        finally:
            db.close()
    except OverairError as exc:
        print_error(err, exc.code, exc.message)
        raise typer.Exit(2) from None
    except Exception as exc:  # a database that cannot be opened or read: say what, no traceback
        from sqlalchemy.exc import SQLAlchemyError

        if not isinstance(exc, SQLAlchemyError | OSError):
            raise
        print_error(err, "DatabaseUnavailable", exc)
        raise typer.Exit(2) from None


@audit_app.command("verify")
def verify(
    data_dir: DataDirOption,
    expect_head: Annotated[str | None, typer.Option(
        help="A head saved earlier with `overair audit head` (SEQ:HASH): the log must still "
             "contain exactly that entry.")] = None,
    database_url: DatabaseUrlOption = None,
) -> None:
    """Walk the whole chain: every entry's hash, every link, the end against the head
    anchor. Exits 1 naming the first bad entry."""
    from overair.server.audit import chain
    from overair.server.audit.reader import verify_log

    expected: chain.Head | None = None
    if expect_head is not None:
        try:
            expected = chain.parse_head(expect_head)
        except ValueError as exc:
            print_error(err, "InvalidHead", exc)
            raise typer.Exit(2) from None
    with _database(data_dir, database_url) as db:
        report = verify_log(db, expected)
    if report.problem is not None:
        problem = report.problem
        print_error(err, problem.code, f"at seq {problem.seq}: {problem.message}", label="TAMPERED")
        raise typer.Exit(EXIT_TAMPERED)
    saved = f"; contains the saved head {expected}" if expected is not None else ""
    typer.echo(f"OK: {report.count} entries, head {report.head}{saved}")


@audit_app.command("head")
def head(data_dir: DataDirOption, database_url: DatabaseUrlOption = None) -> None:
    """Print the current head as SEQ:HASH. Keep it somewhere the server cannot write
    (and pass it to `verify --expect-head` later): whoever can write the whole database
    could otherwise rewrite the chain and its anchor together."""
    from overair.server.audit.reader import read_head

    with _database(data_dir, database_url) as db:
        current = read_head(db)
    typer.echo(str(current))


@audit_app.command("list")
def list_entries(
    data_dir: DataDirOption,
    principal: Annotated[str | None, typer.Option(help="Only this principal (* and ? allowed).")] = None,
    action: Annotated[str | None, typer.Option(help="Only this action, e.g. 'iot:*Job*'.")] = None,
    decision: Annotated[str | None, typer.Option(
        help="Only this decision: Allow, Deny (every denial), ImplicitDeny, ExplicitDeny, Refused, "
             "Rejected.")] = None,
    since: Annotated[str | None, typer.Option(help="From this time on (ISO 8601; UTC if no offset).")] = None,
    until: Annotated[str | None, typer.Option(help="Up to this time (ISO 8601).")] = None,
    limit: Annotated[int | None, typer.Option(min=0, help="Only the newest N matches.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    database_url: DatabaseUrlOption = None,
) -> None:
    """List entries, oldest first (newest last)."""
    from overair.server.audit.reader import Query
    from overair.server.audit.reader import list_entries as query_entries

    try:
        query = Query(principal=principal, action=action, decision=decision,
                      since=parse_time(since) if since is not None else None,
                      until=parse_time(until) if until is not None else None, limit=limit)
    except MisuseError as exc:
        print_error(err, exc.code, exc.message)
        raise typer.Exit(2) from None
    with _database(data_dir, database_url) as db:
        for entry in query_entries(db, query):
            typer.echo(_as_json(entry) if json_output else _as_line(entry))


def _as_json(entry: ChainEntry) -> str:
    f = entry.fields
    return json.dumps({"seq": entry.seq, "time": format_time(f.time), "principal": f.principal,
                       "action": f.action, "resource": f.resource, "decision": f.decision,
                       "statement": f.statement, "source": f.source, "detail": f.detail,
                       "prevHash": entry.prev_hash, "entryHash": entry.entry_hash}, sort_keys=True)


def _as_line(entry: ChainEntry) -> str:
    f = entry.fields
    parts = [f"{entry.seq:>6}", format_time(f.time), f"{f.decision:<8}", f.principal, f.action, f.resource]
    if f.statement:
        parts.append(f"by {f.statement}")
    if f.source:
        parts.append(f"from {f.source}")
    if f.detail:
        parts.append(json.dumps(f.detail, sort_keys=True))
    return "  ".join(parts)


def register(app: typer.Typer) -> None:
    app.add_typer(audit_app, name="audit")
