"""Job templates (CreateJobTemplate, DescribeJobTemplate, ListJobTemplates,
DeleteJobTemplate) and what CreateJob takes from one (`jobTemplateArn`).

AWS (CreateJob, iot API reference): a job created from a template takes the template's
document and configuration; members given in the CreateJob request itself win. A
template's `maintenanceWindows` become the job's `schedulingConfig.maintenanceWindows`.
"""

from __future__ import annotations

import json
import re
from typing import Any

from sqlalchemy import select

from overair.server.api.contract import ApiError, invalid, not_found
from overair.server.clock import Clock
from overair.server.settings import Settings
from overair.server.storage.db import Database
from overair.server.storage.keyset import page_query, split
from overair.server.storage.schema import Job, JobTemplate

TEMPLATE_ID_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
# The configuration blocks a template carries (iot model, CreateJobTemplateRequest).
TEMPLATE_CONFIGS = ("presignedUrlConfig", "jobExecutionsRolloutConfig", "abortConfig", "timeoutConfig",
                    "jobExecutionsRetryConfig", "maintenanceWindows", "destinationPackageVersions")


class JobTemplates:
    def __init__(self, db: Database, settings: Settings, clock: Clock) -> None:
        self._db = db
        self._settings = settings
        self._clock = clock

    def arn(self, template_id: str) -> str:
        return self._settings.arn("iot", f"jobtemplate/{template_id}")

    def create(self, template_id: str, description: str, document: dict[str, Any] | None,
               document_source: str, config: dict[str, Any], job_id: str | None) -> JobTemplate:
        """A template from a document (inline or its S3 source, already read) or from an
        existing job (`jobArn`: its document and configuration)."""
        if TEMPLATE_ID_RE.fullmatch(template_id) is None:
            raise invalid("jobTemplateId must be 1-64 characters of [a-zA-Z0-9_-]")
        with self._db.session() as s:
            if s.get(JobTemplate, template_id) is not None:
                raise ApiError("ConflictException", f"job template {template_id} already exists", 409)
            if job_id is not None:
                job = s.get(Job, job_id)
                if job is None:
                    raise not_found(f"job {job_id}")
                document = job.document
                from_job = {k: v for k, v in job.config.items() if k in TEMPLATE_CONFIGS}
                windows = (job.config.get("schedulingConfig") or {}).get("maintenanceWindows")
                if windows:
                    from_job["maintenanceWindows"] = windows
                config = {**from_job, **config}
            if document is None:
                raise invalid("give one of jobArn, document and documentSource")
            template = JobTemplate(template_id=template_id, arn=self.arn(template_id),
                                   description=description, document=document,
                                   document_source=document_source, config=config, created_at=self._clock())
            s.add(template)
            return template

    def describe(self, template_id: str) -> JobTemplate:
        with self._db.reading() as s:
            template = s.get(JobTemplate, template_id)
            if template is None:
                raise not_found(f"job template {template_id}")
            return template

    def page(self, after: tuple[float, str] | None, size: int) -> tuple[list[JobTemplate], bool]:
        """ListJobTemplates: oldest first, after (creation time, id), over the
        creation-time index (0017)."""
        query = page_query(select(JobTemplate), [JobTemplate.created_at, JobTemplate.template_id],
                           after, size)
        with self._db.reading() as s:
            return split(list(s.scalars(query)), size)

    def delete(self, template_id: str) -> None:
        with self._db.session() as s:
            template = s.get(JobTemplate, template_id)
            if template is None:
                raise not_found(f"job template {template_id}")
            s.delete(template)


def job_from_template(template: JobTemplate,
                      request: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(document, configuration) of a job created from `template`; the request's own
    configuration members win over the template's."""
    config = {k: v for k, v in template.config.items() if k != "maintenanceWindows"}
    windows = template.config.get("maintenanceWindows")
    if windows and "schedulingConfig" not in request:
        config["schedulingConfig"] = {"maintenanceWindows": windows}
    return template.document, config


def template_view(template: JobTemplate) -> dict[str, Any]:
    out: dict[str, Any] = {"jobTemplateArn": template.arn, "jobTemplateId": template.template_id,
                           "description": template.description, "createdAt": template.created_at}
    if template.document_source:
        out["documentSource"] = template.document_source
    else:
        out["document"] = json.dumps(template.document, separators=(",", ":"))
    out.update({k: v for k, v in template.config.items() if k in TEMPLATE_CONFIGS})
    return out

