"""`overair bundle create`: an offline bundle (core/bundle.py) of an OTA update for one
thing, for a device without a network path (`overair-agent install BUNDLE`).

The server signs the bundle's deployment metadata (overair's CreateOfflineBundle,
server/ota/bundle.py); the files are read with S3 GetObject and checked against the
SHA-256 the metadata binds before anything is written. The bundle is written to a
temporary file and renamed, so a failed run leaves no half bundle behind.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from overair.cli.common import DataDirOption, api_clients, api_errors, out
from overair.core.bundle import write_bundle
from overair.core.errors import PeerInputError

bundle_app = typer.Typer(help="Offline bundles: an OTA update in one file, for devices without a network.",
                         no_args_is_help=True)
DEFAULT_VALID_HOURS = 72


def register(app: typer.Typer) -> None:
    app.add_typer(bundle_app, name="bundle")


@bundle_app.command("create")
def create(
    ota_update: Annotated[str, typer.Option("--ota-update",
                                            help="The OTA update whose signed image(s) it carries.")],
    thing: Annotated[str, typer.Option("--thing", help="The thing it is for (a target of the update).")],
    out_file: Annotated[Path, typer.Option("--out", help="The bundle file to write.")],
    valid_hours: Annotated[int, typer.Option("--valid-hours", min=1, max=8784,
                                             help="How long the device accepts it.")] = DEFAULT_VALID_HOURS,
    data_dir: DataDirOption = None,
) -> None:
    """Write one file with the update's signed image(s) and deployment metadata signed for
    THING, valid for --valid-hours; install it with `overair-agent install`."""
    with api_errors():
        clients = api_clients(data_dir)
        answer = clients.client("overair").create_offline_bundle(
            OtaUpdateId=ota_update, ThingName=thing, ValidHours=valid_hours)
        s3 = clients.client("s3")
        files = [_download(s3, entry) for entry in answer["Files"]]
        document = json.loads(answer["Document"])
        revocations = answer.get("RevocationList") or None
        trust_lists = answer.get("TrustLists") or None
        partial = out_file.with_name(f".{out_file.name}.partial")
        try:
            with partial.open("wb") as f:
                write_bundle(f, answer["ThingName"], answer["JobId"], int(answer["ExecutionNumber"]),
                             document, files, revocations, trust_lists)
                f.flush()
                os.fsync(f.fileno())
            partial.replace(out_file)
        finally:
            partial.unlink(missing_ok=True)
    expires = _expiry(document)
    out.print(f"wrote {out_file}: job {answer['JobId']} for {thing}, {len(files)} file(s), "
              f"{out_file.stat().st_size} bytes; valid until {expires} (epoch s)")


def _download(s3: Any, entry: dict[str, Any]) -> bytes:
    extra = {"VersionId": entry["VersionId"]} if entry.get("VersionId") else {}
    data: bytes = s3.get_object(Bucket=entry["Bucket"], Key=entry["Key"], **extra)["Body"].read()
    if len(data) != entry["Size"] or hashlib.sha256(data).hexdigest() != entry["Sha256"]:
        raise PeerInputError(f"s3://{entry['Bucket']}/{entry['Key']} is not the file the update signed "
                             "(size or SHA-256 differ)", code="FileChanged")
    return data


def _expiry(document: dict[str, Any]) -> int | None:
    envelope = document.get("overair", {}).get("deployment", {})
    try:
        payload = json.loads(base64.b64decode(envelope["payload"]))
        return int(payload["expires"])
    except (KeyError, ValueError, TypeError):
        return None
