"""`overair ota health` and `overair ota resume`: a health-gated rollout's decision, with
the figures behind it, and resuming it (overair's DescribeRolloutHealth and ResumeRollout,
docs/health-gates.md)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from overair.cli.common import DataDirOption, api_clients, api_errors, out

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
FIGURES = (("updated devices reporting", "updatedReporting"), ("updated devices crashed", "updatedCrashed"),
           ("updated crash rate", "updatedCrashRate"), ("control reporting", "controlReporting"),
           ("control crashed", "controlCrashed"), ("control crash rate", "controlCrashRate"),
           ("released / targets", ""))


def register(ota_app: typer.Typer) -> None:
    @ota_app.command("health")
    def health(ota_id: str, json_output: JsonOption = False, data_dir: DataDirOption = None) -> None:
        """The rollout's health gates: what they decided and why, and the current figures."""
        with api_errors():
            clients = api_clients(data_dir)
            job = _job_of(clients.client("iot"), ota_id)
            answer = clients.client("overair").describe_rollout_health(JobId=job)
        details = json.loads(answer["Details"])
        if json_output:
            out.print_json(json.dumps(details))
            return
        out.print(f"job {escape(job)} ({escape(answer['JobStatus'])}): health "
                  f"[bold]{escape(answer['Status'])}[/bold] - {escape(answer['Reason'])}")
        figures = details["decision"] or details["current"]["figures"]
        if figures:
            table = Table("figure", "value")
            for label, key in FIGURES:
                value = figures.get(key) if key else f"{figures.get('released')} / {figures.get('targets')}"
                table.add_row(label, escape(str(value)))
            for breach in figures.get("metricBreaches", []):
                table.add_row(f"metric {escape(breach['metric'])}",
                              f"worst {breach['worst']:g} > {breach['max']:g}")
            out.print(table)

    @ota_app.command("resume")
    def resume(ota_id: str, data_dir: DataDirOption = None) -> None:
        """Resume a rollout a health gate paused (its figures so far are accepted) or that
        waits for approval of its next cohort."""
        with api_errors():
            clients = api_clients(data_dir)
            job = _job_of(clients.client("iot"), ota_id)
            answer = clients.client("overair").resume_rollout(JobId=job)
        out.print(f"job {escape(job)} of {escape(ota_id)}: health {escape(answer['Status'])}")


def _job_of(iot: object, ota_id: str) -> str:
    from overair.cli.ota import _job_of as job_of  # one definition of the lookup

    return job_of(iot, ota_id)
