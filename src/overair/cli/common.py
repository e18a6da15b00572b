"""What the API-calling CLI commands share: the data-directory option, clients built
from its credentials, and one-line errors instead of tracebacks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from overair.core.errors import OverairError

out = Console(soft_wrap=True)  # ARNs, keys and signatures must stay copyable: never wrapped
err = Console(stderr=True)

def print_error(console: Console, code: str, message: object, *, label: str = "error") -> None:
    """One error line: `error (Code): message`. The text is escaped, so brackets in a
    message (`[storage] factory_image: ...`, an ARN, a path) are printed, not taken for
    Rich markup and silently dropped."""
    console.print(f"[red]{label}[/red] ({escape(code)}): {escape(str(message))}", soft_wrap=True)


DataDirOption = Annotated[
    Path, typer.Option("--data-dir", help="The server's data directory.", envvar="OVERAIR_DATA_DIR")
]


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


def api_client(data_dir: Path, service: str) -> Any:
    """A boto3 client for `service`, with the data directory's administrator credentials."""
    from overair.cli.client import ApiClients

    return ApiClients.from_data_dir(data_dir).client(service)
