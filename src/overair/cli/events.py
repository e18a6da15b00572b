"""`overair events`: the event configuration (iot Describe/UpdateEventConfigurations)
and the event readers, the identities that may read `$aws/events/#` (server/events/)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from overair.cli.common import DataDirOption, api_client, api_errors
from overair.server.files import write_atomic, write_private

events_app = typer.Typer(help="Event messages on $aws/events/ and who may read them.", no_args_is_help=True)
reader_app = typer.Typer(help="Event readers: certificates that may read $aws/events/# only.",
                         no_args_is_help=True)
events_app.add_typer(reader_app, name="reader")
out = Console()


@events_app.command("show")
def show(data_dir: DataDirOption = None) -> None:
    """Which event types are published (DescribeEventConfigurations)."""
    with api_errors():
        answer = api_client(data_dir, "iot").describe_event_configurations()
    for name, config in sorted(answer["eventConfigurations"].items()):
        out.print(f"{name}: {'on' if config.get('Enabled') else 'off'}")


@events_app.command("enable")
def enable(event_types: list[str], data_dir: DataDirOption = None) -> None:
    """Publish these event types (e.g. JOB JOB_EXECUTION THING)."""
    with api_errors():
        api_client(data_dir, "iot").update_event_configurations(
            eventConfigurations={name: {"Enabled": True} for name in event_types})
    out.print(f"enabled {' '.join(event_types)}")


@events_app.command("disable")
def disable(event_types: list[str], data_dir: DataDirOption = None) -> None:
    """Stop publishing these event types."""
    with api_errors():
        api_client(data_dir, "iot").update_event_configurations(
            eventConfigurations={name: {"Enabled": False} for name in event_types})
    out.print(f"disabled {' '.join(event_types)}")


@reader_app.command("create")
def reader_create(
    name: str,
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for reader.crt, reader.key, root-ca.pem "
                                                         "and client-id.")],
    data_dir: DataDirOption = None,
) -> None:
    """Create an event reader and write its certificate and key (the key exists only there)."""
    with api_errors():
        made = api_client(data_dir, "overair").create_event_reader(Name=name)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_private(out_dir / "reader.key", made["PrivateKeyPem"].encode())
        write_atomic(out_dir / "reader.crt", made["CertificatePem"].encode())
        write_atomic(out_dir / "root-ca.pem", made["RootCaPem"].encode())
        write_atomic(out_dir / "client-id", made["ClientId"].encode() + b"\n")
    out.print(f"event reader {escape(name)}: connect as client id {escape(made['ClientId'])} with "
              f"{escape(str(out_dir))}/reader.crt and subscribe to {escape(made['TopicFilter'])}")


@reader_app.command("revoke")
def reader_revoke(name: str, data_dir: DataDirOption = None) -> None:
    """Revoke an event reader: the broker refuses it from now on."""
    with api_errors():
        api_client(data_dir, "overair").revoke_event_reader(Name=name)
    out.print(f"event reader {escape(name)} revoked")


@reader_app.command("list")
def reader_list(data_dir: DataDirOption = None) -> None:
    """The event readers and their status."""
    with api_errors():
        readers = api_client(data_dir, "overair").list_event_readers()["EventReaders"]
    for reader in readers:
        out.print(f"{escape(reader['Name'])}\t{reader['Status']}\t{escape(reader['ClientId'])}")


def register(app: typer.Typer) -> None:
    app.add_typer(events_app, name="events")
