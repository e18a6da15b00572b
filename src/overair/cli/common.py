"""What the API-calling CLI commands share: the data-directory option, clients built
from its credentials, and one-line errors instead of tracebacks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from overair.core.errors import OverairError

out = Console(soft_wrap=True)  # ARNs, keys and signatures must stay copyable: never wrapped
err = Console(stderr=True)

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
        err.print(f"[red]error[/red] ({exc.code}): {exc.message}", soft_wrap=True)
        raise typer.Exit(2) from None
    except ClientError as exc:
        error = exc.response.get("Error", {})
        err.print(
            f"[red]error[/red] ({error.get('Code', 'ClientError')}): {error.get('Message', exc)}",
            soft_wrap=True,
        )
        raise typer.Exit(2) from None
    except BotoCoreError as exc:
        err.print(f"[red]error[/red] (Unavailable): {exc}; is `overair serve` running?", soft_wrap=True)
        raise typer.Exit(2) from None
    except OSError as exc:
        err.print(f"[red]error[/red] (FileError): {exc}", soft_wrap=True)
        raise typer.Exit(2) from None


def api_client(data_dir: Path, service: str) -> Any:
    """A boto3 client for `service`, with the data directory's administrator credentials."""
    from overair.cli.client import ApiClients

    return ApiClients.from_data_dir(data_dir).client(service)
