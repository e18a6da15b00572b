"""What the API-calling CLI commands share: the data-directory option, clients built
from its credentials, and one-line errors instead of tracebacks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from overair.core.errors import OverairError

if TYPE_CHECKING:
    from overair.cli.client import ApiClients

out = Console(soft_wrap=True)  # ARNs, keys and signatures must stay copyable: never wrapped
err = Console(stderr=True)

def print_error(console: Console, code: str, message: object, *, label: str = "error") -> None:
    """One error line: `error (Code): message`. The text is escaped, so brackets in a
    message (`[storage] factory_image: ...`, an ARN, a path) are printed, not taken for
    Rich markup and silently dropped."""
    console.print(f"[red]{label}[/red] ({escape(code)}): {escape(str(message))}", soft_wrap=True)


LocalDataDirOption = Annotated[
    Path, typer.Option("--data-dir", help="The server's data directory.", envvar="OVERAIR_DATA_DIR")
]
# Commands that only call the API run anywhere: with --data-dir (on the server host) as
# its administrator, else as the AWS profile the AWS CLI would use (cli/client.py).
DataDirOption = Annotated[
    Path | None,
    typer.Option("--data-dir", envvar="OVERAIR_DATA_DIR",
                 help="On the server host: act as its administrator. Leave it out to use an AWS profile "
                      "instead (`overair --profile P --endpoint-url URL ...`, or AWS_PROFILE, "
                      "AWS_ENDPOINT_URL and the AWS config files)."),
]


@dataclass
class Connection:
    """How API commands reach the server when no data directory is given: the global
    options of `overair` (its callback fills this in)."""

    profile: str | None = None
    endpoint_url: str | None = None
    region: str | None = None


connection = Connection()


@contextmanager
def api_errors() -> Iterator[None]:
    """Clear one-line errors (with the AWS error code) for the usual failures; exit 2."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except OverairError as exc:
        print_error(err, exc.code, exc.message)
        raise typer.Exit(2) from None
    except ClientError as exc:
        error = exc.response.get("Error", {})
        print_error(err, error.get("Code", "ClientError"), error.get("Message", exc))
        raise typer.Exit(2) from None
    except BotoCoreError as exc:
        print_error(err, "Unavailable", f"{exc}; is `overair serve` running?")
        raise typer.Exit(2) from None
    except OSError as exc:
        print_error(err, "FileError", exc)
        raise typer.Exit(2) from None


def api_clients(data_dir: Path | None) -> ApiClients:
    """The data directory's administrator credentials if one is given, else the AWS
    profile and endpoint (global options, environment, AWS config files)."""
    from overair.cli.client import ApiClients

    if data_dir is not None:
        return ApiClients.from_data_dir(data_dir)
    return ApiClients.from_profile(connection.profile, connection.endpoint_url, connection.region)


def api_client(data_dir: Path | None, service: str) -> Any:
    """A boto3 client for `service` (see `api_clients`)."""
    return api_clients(data_dir).client(service)
