"""What `overair ota status|watch` show of a rollout, read through the AWS API: the OTA
update's status, its job's executions by state, and for the devices worth a look (those
in progress, then the failed ones) the progress or failure reason their statusDetails
carry. `summarize` is pure (tested alone); `read_rollout` does the API calls.

The execution list is paged in full (one call per 250 devices); details cost one call
per device shown, so at most `SHOWN` devices are described."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

STATES = ("QUEUED", "IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT", "CANCELED", "REMOVED")
ACTIVE = frozenset({"QUEUED", "IN_PROGRESS"})
FAILURES = frozenset({"FAILED", "REJECTED", "TIMED_OUT"})
SHOWN = 25  # devices described per refresh
PAGE = 250


@dataclass(frozen=True, slots=True)
class DeviceRow:
    thing: str
    status: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class RolloutView:
    ota_id: str
    status: (
        str  # the OTA update's (CREATE_COMPLETE, ...) and the job's, e.g. "CREATE_COMPLETE, job IN_PROGRESS"
    )
    job_status: str
    counts: dict[str, int]
    devices: tuple[DeviceRow, ...]
    more: int = 0  # devices not listed in `devices`
    error: dict[str, Any] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def finished(self) -> bool:
        """Nothing more will happen: the creation failed, or the job ended, or (a
        CONTINUOUS job stays open) no device has anything left to do."""
        if self.status == "CREATE_FAILED" or self.job_status in (
            "COMPLETED",
            "CANCELED",
            "DELETION_IN_PROGRESS",
        ):
            return True
        return (
            self.status == "CREATE_COMPLETE"
            and self.total > 0
            and not any(self.counts.get(state, 0) for state in ACTIVE)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "otaUpdateId": self.ota_id,
            "status": self.status,
            "jobStatus": self.job_status,
            "counts": self.counts,
            "devices": [{"thing": d.thing, "status": d.status, "detail": d.detail} for d in self.devices],
            "notListed": self.more,
            **({"error": self.error} if self.error else {}),
        }


def failure_reason(details: dict[str, str]) -> str:
    """A device's statusDetails as one line: `reason` and `detail` first (what the
    FreeRTOS library and the overair agent report), then the rest."""
    first = [details[k] for k in ("reason", "detail", "receive", "self_test") if k in details]
    rest = [
        f"{k}={v}"
        for k, v in sorted(details.items())
        if k not in ("reason", "detail", "receive", "self_test")
    ]
    text = "; ".join([*first, *rest])
    return text if len(text) <= 200 else text[:199] + "…"


def summarize(
    ota_id: str,
    status: str,
    job_status: str,
    executions: dict[str, str],
    details: dict[str, dict[str, str]],
    *,
    all_devices: bool = False,
    error: dict[str, Any] | None = None,
) -> RolloutView:
    """The view of `executions` (thing -> state); `details` holds the statusDetails of
    the devices described. Devices in progress come first, then failures, then the rest;
    unless `all_devices`, only those worth a look are listed."""
    counts = {state: 0 for state in STATES}
    for state in executions.values():
        counts[state] = counts.get(state, 0) + 1
    order = {"IN_PROGRESS": 0, "FAILED": 1, "REJECTED": 1, "TIMED_OUT": 1, "QUEUED": 2}
    ranked = sorted(executions.items(), key=lambda item: (order.get(item[1], 3), item[0]))
    if not all_devices:
        ranked = [item for item in ranked if item[1] == "IN_PROGRESS" or item[1] in FAILURES]
    listed = ranked if all_devices else ranked[:SHOWN]
    rows = tuple(DeviceRow(thing, state, failure_reason(details.get(thing, {}))) for thing, state in listed)
    return RolloutView(ota_id, status, job_status, counts, rows, len(ranked) - len(listed), error or {})


def read_rollout(iot: Any, ota_id: str, *, all_devices: bool = False) -> RolloutView:
    info = iot.get_ota_update(otaUpdateId=ota_id)["otaUpdateInfo"]
    status = info["otaUpdateStatus"]
    job = info.get("awsIotJobId")
    if status != "CREATE_COMPLETE" or not job:
        return summarize(ota_id, status, "", {}, {}, error=info.get("errorInfo"))
    job_status = iot.describe_job(jobId=job)["job"]["status"]
    executions: dict[str, str] = {}
    for page in iot.get_paginator("list_job_executions_for_job").paginate(
        jobId=job, PaginationConfig={"PageSize": PAGE}
    ):
        for summary in page["executionSummaries"]:
            executions[summary["thingArn"].rpartition("/")[2]] = summary["jobExecutionSummary"]["status"]
    view = summarize(ota_id, status, job_status, executions, {}, all_devices=all_devices)
    details: dict[str, dict[str, str]] = {}
    for row in view.devices[:SHOWN]:
        if row.status in ACTIVE or row.status in FAILURES:
            execution = iot.describe_job_execution(jobId=job, thingName=row.thing)["execution"]
            details[row.thing] = dict(execution.get("statusDetails", {}).get("detailsMap", {}))
    return summarize(ota_id, status, job_status, executions, details, all_devices=all_devices)
