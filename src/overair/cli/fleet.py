"""`overair fleet list` and `overair thing show`: the registry as an operator reads it,
through the AWS API (any IAM user with iot:List*/Describe* rights, from any machine)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from overair.cli.common import DataDirOption, api_clients, api_errors, out
from overair.cli.rollout_view import failure_reason

fleet_app = typer.Typer(help="The fleet: every device, its profile and its last job.", no_args_is_help=True)
PROFILE_ATTRIBUTE = "overair:deviceProfile"


def _last_job(iot: Any, thing: str) -> dict[str, Any] | None:
    summaries = iot.list_job_executions_for_thing(thingName=thing, maxResults=1).get("executionSummaries", [])
    if not summaries:
        return None
    summary = summaries[0]
    return {"jobId": summary.get("jobId", ""), "status": summary["jobExecutionSummary"]["status"]}


@fleet_app.command("list")
def fleet_list(
    group: Annotated[str | None, typer.Option(help="Only the things of this thing group.")] = None,
    jobs: Annotated[bool, typer.Option(help="Also each thing's latest job (one call per thing).")] = False,
    limit: Annotated[int, typer.Option(help="At most this many things.")] = 1000,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON array.")] = False,
    data_dir: DataDirOption = None,
) -> None:
    """Things with their type, device profile and attributes (and latest job with --jobs)."""
    with api_errors():
        iot = api_clients(data_dir).client("iot")
        rows: list[dict[str, Any]] = []
        if group:
            names = [
                n
                for page in iot.get_paginator("list_things_in_thing_group").paginate(thingGroupName=group)
                for n in page["things"]
            ][:limit]
            things = [iot.describe_thing(thingName=n) for n in names]
        else:
            things = [
                t
                for page in iot.get_paginator("list_things").paginate(
                    PaginationConfig={"MaxItems": limit, "PageSize": min(limit, 250)}
                )
                for t in page["things"]
            ]
        for thing in things:
            attributes = dict(thing.get("attributes", {}))
            row = {
                "thing": thing["thingName"],
                "type": thing.get("thingTypeName", ""),
                "profile": attributes.pop(PROFILE_ATTRIBUTE, "(default)"),
                "attributes": attributes,
            }
            if jobs:
                row["lastJob"] = _last_job(iot, thing["thingName"])
            rows.append(row)
    if json_output:
        out.print_json(json.dumps(rows))
        return
    table = Table(
        "thing",
        "type",
        "profile",
        "attributes",
        *(["last job"] if jobs else []),
        title=f"{len(rows)} thing(s)",
    )
    for row in rows:
        last = row.get("lastJob")
        table.add_row(
            escape(row["thing"]),
            escape(row["type"]),
            escape(row["profile"]),
            escape(", ".join(f"{k}={v}" for k, v in sorted(row["attributes"].items()))),
            *([escape(f"{last['jobId']} {last['status']}" if last else "-")] if jobs else []),
        )
    out.print(table)


def thing_show(
    name: str,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
    data_dir: DataDirOption = None,
) -> None:
    """One device: registry entry, certificates, and its job executions with their details."""
    with api_errors():
        iot = api_clients(data_dir).client("iot")
        thing = iot.describe_thing(thingName=name)
        principals = [
            p
            for page in iot.get_paginator("list_thing_principals").paginate(thingName=name)
            for p in page["principals"]
        ]
        executions = []
        for page in iot.get_paginator("list_job_executions_for_thing").paginate(thingName=name):
            for summary in page["executionSummaries"]:
                job = summary["jobId"]
                execution = iot.describe_job_execution(jobId=job, thingName=name)["execution"]
                executions.append(
                    {
                        "jobId": job,
                        "status": execution["status"],
                        "executionNumber": execution.get("executionNumber"),
                        "details": dict(execution.get("statusDetails", {}).get("detailsMap", {})),
                    }
                )
    shown = {
        "thing": thing["thingName"],
        "arn": thing["thingArn"],
        "type": thing.get("thingTypeName", ""),
        "attributes": thing.get("attributes", {}),
        "version": thing.get("version"),
        "certificates": principals,
        "executions": executions,
    }
    if json_output:
        out.print_json(json.dumps(shown, default=str))
        return
    out.print(f"[bold]{escape(shown['thing'])}[/bold] {escape(shown['arn'])}")
    for key, value in sorted(shown["attributes"].items()):
        out.print(f"  {escape(key)} = {escape(str(value))}")
    for principal in principals:
        out.print(f"  certificate {escape(principal)}")
    table = Table("job", "#", "status", "details", title="job executions")
    for execution in executions:
        table.add_row(
            escape(execution["jobId"]),
            str(execution["executionNumber"] or ""),
            escape(execution["status"]),
            escape(failure_reason(execution["details"])),
        )
    out.print(table)


def register(app: typer.Typer, thing_app: typer.Typer) -> None:
    app.add_typer(fleet_app, name="fleet")
    thing_app.command("show")(thing_show)
