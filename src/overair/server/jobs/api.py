"""iot operations on jobs and job executions.

CreateJob takes the document inline or from `documentSource` (an S3 object URL), and pins
each pre-signed URL placeholder in it to the object's current version (jobs/documents.py);
devices get the placeholders replaced on every delivery (delivery/http_download.py),
while GetJobDocument returns the document as given, placeholders and all, as AWS does.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from overair.core import rollout
from overair.core.jobstates import ExecStatus
from overair.server.api.contract import ApiError, ApiRequest, OperationTable, invalid
from overair.server.api.paging import key_after, key_token, page_out, page_size
from overair.server.api.unsupported import refusing
from overair.server.jobs.deliveries import PRESIGNED_OBJECTS
from overair.server.jobs.documents import JobDocuments, ReadCheck
from overair.server.jobs.service import PACKAGE_VERSIONS, JobService
from overair.server.jobs.templates import JobTemplates, job_from_template
from overair.server.storage.objects import ObjectStore
from overair.server.storage.schema import Job, JobExecution

COUNT_KEYS = {
    ExecStatus.QUEUED: "numberOfQueuedThings", ExecStatus.IN_PROGRESS: "numberOfInProgressThings",
    ExecStatus.SUCCEEDED: "numberOfSucceededThings", ExecStatus.FAILED: "numberOfFailedThings",
    ExecStatus.REJECTED: "numberOfRejectedThings", ExecStatus.CANCELED: "numberOfCanceledThings",
    ExecStatus.TIMED_OUT: "numberOfTimedOutThings", ExecStatus.REMOVED: "numberOfRemovedThings",
}


def _summary(row: JobExecution) -> dict[str, Any]:
    out: dict[str, Any] = {"status": row.status, "queuedAt": row.queued_at,
                           "lastUpdatedAt": row.last_updated_at, "executionNumber": row.execution_number}
    if row.started_at is not None:
        out["startedAt"] = row.started_at
    return out


def _job_view(job: Job, counts: dict[str, int], rollouts: list[float]) -> dict[str, Any]:
    details = {key: counts.get(status.value, 0) for status, key in COUNT_KEYS.items()}
    view: dict[str, Any] = {
        "jobArn": job.arn, "jobId": job.job_id, "targetSelection": job.target_selection,
        "status": job.status, "forceCanceled": job.force_canceled, "targets": job.targets,
        "description": job.description, "createdAt": job.created_at,
        "lastUpdatedAt": job.last_updated_at, "jobProcessDetails": details,
    }
    if job.completed_at is not None:
        view["completedAt"] = job.completed_at
    if job.comment:
        view["comment"] = job.comment
    if job.reason_code:
        view["reasonCode"] = job.reason_code
    for key in ("jobExecutionsRolloutConfig", "abortConfig", "timeoutConfig", "presignedUrlConfig",
                "jobExecutionsRetryConfig", "schedulingConfig", "destinationPackageVersions"):
        if key in job.config:
            view[key] = job.config[key]
    if rollouts:
        view["scheduledJobRollouts"] = [{"startTime": rollout.format_time(t)} for t in rollouts]
    return view


# Members refused by name (docs/compatibility.md): no namespaces, document
# parameters or software packages; ListJobs filters groups by name only.
_REFUSED = {
    "CreateJob": ("namespaceId", "documentParameters"),
    "ListJobs": ("thingGroupId", "namespaceId"),
    "ListJobExecutionsForThing": ("namespaceId",),
}


def _job_input(r: ApiRequest, documents: JobDocuments, templates: JobTemplates,
               package_versions: Callable[[list[str]], list[tuple[str, str]]]) -> tuple[dict[str, Any],
                                                                                        dict[str, Any]]:
    """CreateJob's document and configuration: from `jobTemplateArn` if given, then the
    request's own members over it."""
    inline, source = r.params.get("document"), r.params.get("documentSource")
    template_arn = r.params.get("jobTemplateArn")
    keys = ("jobExecutionsRolloutConfig", "abortConfig", "timeoutConfig", "presignedUrlConfig",
            "jobExecutionsRetryConfig", "schedulingConfig")
    config: dict[str, Any] = {}
    document: dict[str, Any] | None = None
    if template_arn is not None:
        # The ARN was parsed strictly before authorization (iam/actions.py, O1).
        template = templates.describe(str(template_arn).rpartition("/")[2])
        document, config = job_from_template(template, r.params)
    if inline is not None and source is not None:
        raise invalid("give at most one of document and documentSource")
    if inline is not None or source is not None:
        document = (documents.inline(inline) if source is None
                    else documents.load_source(r.caller, str(source)))
    if document is None:
        raise invalid("give one of document, documentSource and jobTemplateArn")
    config.update({k: r.params[k] for k in keys if k in r.params})
    destinations = r.params.get("destinationPackageVersions", config.pop("destinationPackageVersions", None))
    if destinations:
        # Reported in the thing's $package shadow when its execution SUCCEEDS
        # (packages/shadow_sync.py); each must be PUBLISHED, as AWS deploys only those.
        try:
            config[PACKAGE_VERSIONS] = [list(pair) for pair in package_versions(list(destinations))]
        except ApiError as exc:
            raise invalid(exc.message) from exc
        config["destinationPackageVersions"] = list(destinations)
    return document, config


def register(table: OperationTable, jobs: JobService, thing_arn: Callable[[str], str],
             notify: Callable[[list[str]], None], objects: ObjectStore, max_document_bytes: int,
             may_read: ReadCheck, templates: JobTemplates,
             package_versions: Callable[[list[str]], list[tuple[str, str]]]) -> None:
    documents = JobDocuments(objects, max_document_bytes, may_read)

    def create_job(r: ApiRequest) -> dict[str, Any]:
        document, config = _job_input(r, documents, templates, package_versions)
        pinned = documents.resolve_placeholders(r.caller, document, config.get("presignedUrlConfig"))
        if pinned:
            config[PRESIGNED_OBJECTS] = pinned
        job, things = jobs.create_job(r.params["jobId"], r.params["targets"], document,
                                      description=r.params.get("description", ""),
                                      target_selection=r.params.get("targetSelection", "SNAPSHOT"),
                                      config=config)
        notify(things)
        return {"jobArn": job.arn, "jobId": job.job_id, "description": job.description}

    def describe_job(r: ApiRequest) -> dict[str, Any]:
        job, counts = jobs.describe_job(r.params["jobId"])
        return {"job": _job_view(job, counts, jobs.scheduled_rollouts(job))}

    def list_jobs(r: ApiRequest) -> dict[str, Any]:
        group = r.params.get("thingGroupName")
        after = key_after(r.params, parts=2)
        rows, more = jobs.page_jobs(
            r.params.get("status"), r.params.get("targetSelection"),
            lambda j: group is None or any(t.endswith(f":thinggroup/{group}") for t in j.targets),
            None if after is None else (_number(after[0]), after[1]), page_size(r.params))
        items = [{"jobArn": j.arn, "jobId": j.job_id, "targetSelection": j.target_selection,
                  "status": j.status, "createdAt": j.created_at, "lastUpdatedAt": j.last_updated_at,
                  **({"completedAt": j.completed_at} if j.completed_at is not None else {})} for j in rows]
        token = key_token(repr(rows[-1].created_at), rows[-1].job_id) if more else None
        return page_out("jobs", items, token)

    def get_job_document(r: ApiRequest) -> dict[str, Any]:
        return {"document": json.dumps(jobs.get_document(r.params["jobId"]), separators=(",", ":"))}

    def cancel_job(r: ApiRequest) -> dict[str, Any]:
        things = jobs.cancel_job(r.params["jobId"], force=bool(r.params.get("force", False)),
                                 comment=r.params.get("comment", ""),
                                 reason_code=r.params.get("reasonCode", ""))
        notify(things)
        job, _ = jobs.describe_job(r.params["jobId"])
        return {"jobArn": job.arn, "jobId": job.job_id, "description": job.description}

    def delete_job(r: ApiRequest) -> dict[str, Any]:
        jobs.delete_job(r.params["jobId"], force=bool(r.params.get("force", False)))
        return {}

    def executions_for_job(r: ApiRequest) -> dict[str, Any]:
        after = key_after(r.params, parts=2)
        rows, more = jobs.page_executions_for_job(
            r.params["jobId"], r.params.get("status"),
            None if after is None else (after[0], int(_number(after[1]))), page_size(r.params))
        items = [{"thingArn": thing_arn(row.thing_name), "jobExecutionSummary": _summary(row)}
                 for row in rows]
        token = key_token(rows[-1].thing_name, str(rows[-1].execution_number)) if more else None
        return page_out("executionSummaries", items, token)

    def executions_for_thing(r: ApiRequest) -> dict[str, Any]:
        after = key_after(r.params, parts=2)
        rows, more = jobs.page_executions_for_thing(
            r.params["thingName"], r.params.get("status"), r.params.get("jobId"),
            None if after is None else (_number(after[0]), int(_number(after[1]))), page_size(r.params))
        items = [{"jobId": row.job_id, "jobExecutionSummary": _summary(row)} for row in rows]
        token = key_token(repr(rows[-1].queued_at), str(rows[-1].id)) if more else None
        return page_out("executionSummaries", items, token)

    def cancel_execution(r: ApiRequest) -> dict[str, Any]:
        notify(jobs.cancel_execution(r.params["jobId"], r.params["thingName"],
                                     force=bool(r.params.get("force", False)),
                                     expected_version=r.params.get("expectedVersion"),
                                     status_details=r.params.get("statusDetails")))
        return {}

    def describe_execution(r: ApiRequest) -> dict[str, Any]:
        number = r.params.get("executionNumber")
        row = jobs.describe_execution(r.params["jobId"], r.params["thingName"],
                                      None if number is None else int(number))
        execution = {"jobId": row.job_id, "status": row.status, "thingArn": thing_arn(row.thing_name),
                     "statusDetails": {"detailsMap": dict(row.status_details)},
                     "queuedAt": row.queued_at, "lastUpdatedAt": row.last_updated_at,
                     "executionNumber": row.execution_number, "versionNumber": row.version_number,
                     "forceCanceled": False}
        if row.started_at is not None:
            execution["startedAt"] = row.started_at
        return {"execution": execution}

    for name, handler in {
        "CreateJob": create_job, "DescribeJob": describe_job, "ListJobs": list_jobs,
        "GetJobDocument": get_job_document, "CancelJob": cancel_job, "DeleteJob": delete_job,
        "ListJobExecutionsForJob": executions_for_job,
        "ListJobExecutionsForThing": executions_for_thing,
        "DescribeJobExecution": describe_execution, "CancelJobExecution": cancel_execution,
    }.items():
        table.register("iot", name, refusing(_REFUSED.get(name, ()), handler))


def _number(text: str) -> float:
    """A number from a page token (a float written with repr, or an integer)."""
    try:
        value = float(text)
    except ValueError:
        raise invalid("nextToken is not valid") from None
    if not math.isfinite(value):
        raise invalid("nextToken is not valid")
    return value
