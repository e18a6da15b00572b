"""`overair ota ...`: a rollout from an image file, and watching and steering it, through
the same iot/s3/signer API that boto3 and the AWS CLI use (any IAM user with the rights,
from any machine: cli/common.py `api_clients`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from overair.cli import health as health_cli
from overair.cli.common import DataDirOption, api_clients, api_errors, out
from overair.cli.rollout_view import RolloutView, read_rollout
from overair.core.errors import DecodeError, MisuseError
from overair.core.image import parse_header

if TYPE_CHECKING:  # the server extra (boto3) is imported only when a command runs
    from overair.cli.client import ApiClients

ota_app = typer.Typer(
    help="Rollouts: create from an image file, watch, cancel, retry the failed devices.", no_args_is_help=True
)
DEFAULT_BUCKET = "firmware"  # the bucket the overair-ota role reads (overair init --firmware-bucket)
DEFAULT_ROLE = "overair-ota"  # the service role `overair init` creates
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _target_arns(clients: ApiClients, things: list[str], groups: list[str], arns: list[str]) -> list[str]:
    """Thing and group names to ARNs in the caller's account and region (no lookup: a name
    that does not exist is refused by CreateOTAUpdate itself)."""
    if not things and not groups and not arns:
        raise MisuseError("give at least one --thing, --group or --target", code="NoTargets")
    account = clients.client("sts").get_caller_identity()["Account"]
    prefix = f"arn:aws:iot:{clients.region}:{account}"
    return [*arns, *(f"{prefix}:thing/{t}" for t in things), *(f"{prefix}:thinggroup/{g}" for g in groups)]


def _ensure_bucket(s3: Any, bucket: str) -> None:
    try:
        s3.head_bucket(Bucket=bucket)
    except s3.exceptions.ClientError:
        s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})


def _version_of(image: bytes, given: str | None) -> str:
    try:
        header = parse_header(image)
    except DecodeError:
        if given is None:
            raise MisuseError(
                "the file is not an overair image (no OVRI header): give --version, or wrap it "
                "first with `overair image wrap`",
                code="BadImage",
            ) from None
        return given
    found = str(header.version)
    if given is not None and given != found:
        raise MisuseError(f"--version {given} but the image header says {found}", code="BadImage")
    return found


def _job_config(
    max_per_minute: int | None,
    abort_failed_percent: float | None,
    abort_min_executed: int,
    timeout_minutes: int | None,
) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if max_per_minute is not None:
        params["awsJobExecutionsRolloutConfig"] = {"maximumPerMinute": max_per_minute}
    if abort_failed_percent is not None:
        params["awsJobAbortConfig"] = {
            "abortCriteriaList": [
                {
                    "failureType": failure,
                    "action": "CANCEL",
                    "thresholdPercentage": abort_failed_percent,
                    "minNumberOfExecutedThings": abort_min_executed,
                }
                for failure in ("FAILED", "REJECTED", "TIMED_OUT")
            ]
        }
    if timeout_minutes is not None:
        params["awsJobTimeoutConfig"] = {"inProgressTimeoutInMinutes": timeout_minutes}
    return params


@ota_app.command("create")
def create(
    ota_id: Annotated[str, typer.Argument(help="Name of the update (letters, digits, - and _).")],
    image: Annotated[
        Path, typer.Option(help="The firmware image to sign and send.", exists=True, dir_okay=False)
    ],
    signing_profile: Annotated[str, typer.Option(help="The signing profile that signs the image.")],
    thing: Annotated[list[str] | None, typer.Option(help="A target thing (name); repeat for more.")] = None,
    group: Annotated[list[str] | None, typer.Option(help="A target thing group (name); repeat.")] = None,
    target: Annotated[list[str] | None, typer.Option(help="A target thing or group ARN; repeat.")] = None,
    version: Annotated[
        str | None, typer.Option(help="The image's version (default: its OVRI header's).")
    ] = None,
    bucket: Annotated[
        str, typer.Option(help="Where the image is uploaded (created if missing).")
    ] = DEFAULT_BUCKET,
    file_name: Annotated[str, typer.Option(help="The file's name on the device.")] = "/firmware/app.bin",
    protocol: Annotated[list[str] | None, typer.Option(help="MQTT and/or HTTP (default MQTT).")] = None,
    continuous: Annotated[bool, typer.Option(help="Also things that join a target group later.")] = False,
    max_per_minute: Annotated[
        int | None, typer.Option(help="Staged rollout: devices released a minute.")
    ] = None,
    abort_failed_percent: Annotated[
        float | None,
        typer.Option(
            help="Cancel the rollout when this % of executed devices failed, rejected or timed out."
        ),
    ] = None,
    abort_min_executed: Annotated[int, typer.Option(help="...once at least this many devices ran it.")] = 10,
    timeout_minutes: Annotated[
        int | None, typer.Option(help="A device IN_PROGRESS longer times out.")
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(help="An additionalParameters entry KEY=VALUE (e.g. overair:healthWindowSeconds=600); "
                          "repeat."),
    ] = None,
    role_arn: Annotated[
        str | None, typer.Option(help="Service role (default: the account's overair-ota).")
    ] = None,
    wait: Annotated[bool, typer.Option(help="Wait until the update is created (signed, job out).")] = True,
    json_output: JsonOption = False,
    data_dir: DataDirOption = None,
) -> None:
    """Upload an image, sign it and roll it out: one CreateOTAUpdate."""
    with api_errors():
        clients = api_clients(data_dir)
        iot, s3 = clients.client("iot"), clients.client("s3")
        data = image.read_bytes()
        file_version = _version_of(data, version)
        arns = _target_arns(clients, thing or [], group or [], target or [])
        _ensure_bucket(s3, bucket)
        key = f"images/{ota_id}/{image.name}"
        put = s3.put_object(Bucket=bucket, Key=key, Body=data)
        if role_arn is None:
            account = clients.client("sts").get_caller_identity()["Account"]
            role_arn = f"arn:aws:iam::{account}:role/{DEFAULT_ROLE}"
        location: dict[str, Any] = {"bucket": bucket, "key": key}
        if put.get("VersionId"):
            location["version"] = put["VersionId"]
        answer = iot.create_ota_update(
            otaUpdateId=ota_id,
            targets=arns,
            protocols=protocol or ["MQTT"],
            targetSelection="CONTINUOUS" if continuous else "SNAPSHOT",
            roleArn=role_arn,
            files=[
                {
                    "fileName": file_name,
                    "fileVersion": file_version,
                    "fileLocation": {"s3Location": location},
                    "codeSigning": {
                        "startSigningJobParameter": {
                            "signingProfileName": signing_profile,
                            "destination": {
                                "s3Destination": {"bucket": bucket, "prefix": f"signed/{ota_id}/"}
                            },
                        }
                    },
                }
            ],
            **_job_config(max_per_minute, abort_failed_percent, abort_min_executed, timeout_minutes),
            **({"additionalParameters": _parameters(param)} if param else {}),
        )
        status = answer["otaUpdateStatus"]
        info: dict[str, Any] = {}
        while wait and status in ("CREATE_PENDING", "CREATE_IN_PROGRESS"):
            time.sleep(0.5)
            info = iot.get_ota_update(otaUpdateId=ota_id)["otaUpdateInfo"]
            status = info["otaUpdateStatus"]
    result = {
        "otaUpdateId": ota_id,
        "status": status,
        "jobId": answer["awsIotJobId"],
        "version": file_version,
        "targets": arns,
    }
    if info.get("errorInfo"):
        result["error"] = info["errorInfo"]
    if json_output:
        out.print_json(json.dumps(result))
    elif status == "CREATE_FAILED":
        error = info.get("errorInfo", {})
        out.print(
            f"[red]failed[/red]: {escape(str(error.get('code', '')))} {escape(str(error.get('message', '')))}"
        )
    else:
        out.print(
            f"[green]{escape(status)}[/green] {escape(ota_id)}: version {escape(file_version)} to "
            f"{len(arns)} target(s), job {escape(answer['awsIotJobId'])}; follow it with "
            f"`overair ota watch {escape(ota_id)}`"
        )
    if status == "CREATE_FAILED":
        raise typer.Exit(1)


@ota_app.command("list")
def list_updates(json_output: JsonOption = False, data_dir: DataDirOption = None) -> None:
    """Every OTA update with its status."""
    with api_errors():
        iot = api_clients(data_dir).client("iot")
        updates = [u for page in iot.get_paginator("list_ota_updates").paginate() for u in page["otaUpdates"]]
        statuses = {
            u["otaUpdateId"]: iot.get_ota_update(otaUpdateId=u["otaUpdateId"])["otaUpdateInfo"][
                "otaUpdateStatus"
            ]
            for u in updates
        }
    if json_output:
        out.print_json(json.dumps([{"otaUpdateId": k, "status": v} for k, v in statuses.items()]))
        return
    table = Table("OTA update", "status")
    for ota_id, status in statuses.items():
        table.add_row(escape(ota_id), escape(status))
    out.print(table)


def _render(view: RolloutView) -> Group:
    counts = Table("state", "devices", title=f"{escape(view.ota_id)} ({escape(view.status)})")
    for state, count in view.counts.items():
        if count:
            counts.add_row(state, str(count))
    devices = Table("thing", "state", "detail")
    for row in view.devices:
        devices.add_row(escape(row.thing), escape(row.status), escape(row.detail))
    parts: list[Any] = [counts, devices]
    if view.more:
        parts.append(f"... and {view.more} more device(s) (--json lists all states)")
    return Group(*parts)


@ota_app.command("status")
def status(ota_id: str, json_output: JsonOption = False, data_dir: DataDirOption = None) -> None:
    """Per-state counts, and each device's state with its progress or failure reason."""
    with api_errors():
        view = read_rollout(api_clients(data_dir).client("iot"), ota_id)
    if json_output:
        out.print_json(json.dumps(view.to_json()))
    else:
        out.print(_render(view))


@ota_app.command("watch")
def watch(
    ota_id: str,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.")] = 2.0,
    data_dir: DataDirOption = None,
) -> None:
    """`status`, refreshed until the rollout ends (Ctrl-C stops watching, not the rollout)."""
    with api_errors():
        iot = api_clients(data_dir).client("iot")
        view = read_rollout(iot, ota_id)
        with Live(_render(view), console=out, refresh_per_second=4) as live:
            while not view.finished:
                time.sleep(max(0.2, interval))
                view = read_rollout(iot, ota_id)
                live.update(_render(view))
    raise typer.Exit(0 if view.counts.get("SUCCEEDED", 0) == view.total else 1)


@ota_app.command("cancel")
def cancel(
    ota_id: str,
    force: Annotated[bool, typer.Option(help="Also stop devices already IN_PROGRESS.")] = False,
    comment: Annotated[str, typer.Option(help="Why (kept with the job).")] = "",
    data_dir: DataDirOption = None,
) -> None:
    """Cancel the rollout's job: queued devices never start it (with --force, running ones stop)."""
    with api_errors():
        iot = api_clients(data_dir).client("iot")
        job = _job_of(iot, ota_id)
        iot.cancel_job(jobId=job, force=force, **({"comment": comment} if comment else {}))
    out.print(f"[yellow]canceled[/yellow] job {escape(job)} of {escape(ota_id)}")


@ota_app.command("retry-failed")
def retry_failed(
    ota_id: str,
    new_id: Annotated[str | None, typer.Option(help="Name of the retry (default: ID-retry-N).")] = None,
    data_dir: DataDirOption = None,
) -> None:
    """A new OTA update of the same files to the devices whose execution FAILED, was
    REJECTED or TIMED_OUT (they do not run the version, so it is no downgrade)."""
    with api_errors():
        iot = api_clients(data_dir).client("iot")
        info = iot.get_ota_update(otaUpdateId=ota_id)["otaUpdateInfo"]
        view = read_rollout(iot, ota_id, all_devices=True)
        failed = [row.thing for row in view.devices if row.status in ("FAILED", "REJECTED", "TIMED_OUT")]
        if not failed:
            out.print(f"no failed device in {escape(ota_id)}: nothing to retry")
            return
        existing = {
            u["otaUpdateId"]
            for page in iot.get_paginator("list_ota_updates").paginate()
            for u in page["otaUpdates"]
        }
        name = new_id or next(
            f"{ota_id}-retry-{n}"
            for n in range(1, len(existing) + 2)
            if f"{ota_id}-retry-{n}" not in existing
        )
        prefix = info["otaUpdateArn"].rpartition(":otaupdate/")[0]
        arns = [f"{prefix}:thing/{thing}" for thing in failed]
        request: dict[str, Any] = {
            "otaUpdateId": name,
            "targets": arns,
            "protocols": info.get("protocols", ["MQTT"]),
            "targetSelection": "SNAPSHOT",
            "files": info["otaUpdateFiles"],
            "roleArn": _role_of(iot, info),
        }
        if info.get("additionalParameters"):
            request["additionalParameters"] = info["additionalParameters"]
        iot.create_ota_update(**request)
    out.print(
        f"[green]created[/green] {escape(name)} for {len(failed)} device(s): {escape(', '.join(failed[:10]))}"
        + (" ..." if len(failed) > 10 else "")
    )


def _parameters(given: list[str]) -> dict[str, str]:
    pairs = [p.partition("=") for p in given]
    bad = [key for key, eq, _ in pairs if not eq or not key]
    if bad:
        raise MisuseError(f"--param takes KEY=VALUE, not {bad[0]!r}", code="BadParameter")
    return {key: value for key, _, value in pairs}


def _job_of(iot: Any, ota_id: str) -> str:
    info = iot.get_ota_update(otaUpdateId=ota_id)["otaUpdateInfo"]
    job = info.get("awsIotJobId")
    if not job:
        raise MisuseError(f"{ota_id} has no job (status {info['otaUpdateStatus']})", code="NoJob")
    return str(job)


def _role_of(iot: Any, info: dict[str, Any]) -> str:
    role = info.get("roleArn")
    if role:
        return str(role)
    # GetOTAUpdate does not return the role (as AWS): the account's service role.
    account = info["otaUpdateArn"].split(":")[4]
    return f"arn:aws:iam::{account}:role/{DEFAULT_ROLE}"


def register(app: typer.Typer) -> None:
    health_cli.register(ota_app)  # `ota health`, `ota resume` (cli/health.py)
    app.add_typer(ota_app, name="ota")
