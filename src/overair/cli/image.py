"""`overair image wrap|show`: turn a firmware binary into the image the overair agent
takes (core/image.py: a 16-byte `OVRI` header with version, security counter and
length, signed together with the payload), and read an image's header back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from overair.cli.common import err, out, print_error
from overair.core.errors import DecodeError
from overair.core.image import HEADER_SIZE, MAX_SECURITY_COUNTER, build_image, parse_header
from overair.core.versions import Version

image_app = typer.Typer(help="Firmware images: wrap a binary, show an image's header.", no_args_is_help=True)


@image_app.command("wrap")
def wrap(
    binary: Annotated[Path, typer.Argument(help="The firmware binary.", exists=True, dir_okay=False)],
    version: Annotated[str, typer.Option(help="MAJOR.MINOR.BUILD; devices refuse anything not newer.")],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="Where to write the image.")],
    security_counter: Annotated[
        int,
        typer.Option(
            help="Anti-rollback epoch: raise it with a security fix; devices never again run an image "
            f"with a lower one (0-{MAX_SECURITY_COUNTER})."
        ),
    ] = 0,
) -> None:
    """Put the overair header in front of a binary. Sign and send the result with
    `overair ota create --image OUT`."""
    try:
        parsed = Version.parse(version)
    except DecodeError as exc:
        print_error(err, "InvalidVersion", exc.message)
        raise typer.Exit(2) from None
    if not 0 <= security_counter <= MAX_SECURITY_COUNTER:
        print_error(err, "InvalidSecurityCounter", f"--security-counter must be 0 to {MAX_SECURITY_COUNTER}")
        raise typer.Exit(2)
    payload = binary.read_bytes()
    try:
        parse_header(payload)
    except DecodeError:
        pass
    else:
        print_error(err, "AlreadyWrapped", f"{binary} is already an overair image (`overair image show`)")
        raise typer.Exit(2)
    out_file.write_bytes(build_image(parsed, payload, security_counter))
    out.print(
        f"[green]wrote[/green] {escape(str(out_file))}: version {parsed}, security counter "
        f"{security_counter}, {len(payload)} bytes of firmware + {HEADER_SIZE}-byte header"
    )


@image_app.command("show")
def show(
    image: Annotated[Path, typer.Argument(help="An overair image.", exists=True, dir_okay=False)],
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """The version, security counter and length an image's header declares."""
    try:
        header = parse_header(image.read_bytes())
    except DecodeError as exc:
        print_error(err, exc.code, f"{image}: {exc.message}")
        raise typer.Exit(2) from None
    shown = {
        "version": str(header.version),
        "securityCounter": header.security_counter,
        "payloadBytes": header.payload_length,
    }
    if json_output:
        out.print_json(json.dumps(shown))
    else:
        out.print(
            f"version {shown['version']}, security counter {header.security_counter}, "
            f"{header.payload_length} bytes of firmware"
        )


def register(app: typer.Typer) -> None:
    app.add_typer(image_app, name="image")
