"""iot operations that steer jobs after creation and manage job templates (issue 15):
UpdateJob, AssociateTargetsWithJob, DeleteJobExecution, Create/Describe/List/
DeleteJobTemplate. IAM is checked before these run (iam/actions.py), as for every
operation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from overair.server.api.contract import ApiRequest, OperationTable, invalid
from overair.server.api.paging import key_token, page_out, page_size, time_key_after
from overair.server.api.unsupported import refusing
from overair.server.jobs.documents import JobDocuments
from overair.server.jobs.service import JobService
from overair.server.jobs.steering import UPDATABLE_CONFIGS, JobSteering
from overair.server.jobs.templates import TEMPLATE_CONFIGS, JobTemplates, template_view

# Members refused by name (docs/compatibility.md): no namespaces.
_REFUSED = {
    "UpdateJob": ("namespaceId",),
    "AssociateTargetsWithJob": ("namespaceId",),
    "DeleteJobExecution": ("namespaceId",),
}


def register(table: OperationTable, jobs: JobService, steering: JobSteering, templates: JobTemplates,
             documents: JobDocuments, notify: Callable[[list[str]], None]) -> None:
    def update_job(r: ApiRequest) -> dict[str, Any]:
        configs = {k: r.params[k] for k in UPDATABLE_CONFIGS if k in r.params}
        steering.update_job(r.params["jobId"], r.params.get("description"), configs)
        return {}

    def associate_targets(r: ApiRequest) -> dict[str, Any]:
        notify(steering.associate_targets(r.params["jobId"], list(r.params["targets"]),
                                          r.params.get("comment")))
        job, _ = jobs.describe_job(r.params["jobId"])
        return {"jobArn": job.arn, "jobId": job.job_id, "description": job.description}

    def delete_execution(r: ApiRequest) -> dict[str, Any]:
        notify(steering.delete_execution(r.params["jobId"], r.params["thingName"],
                                         int(r.params["executionNumber"]),
                                         bool(r.params.get("force", False))))
        return {}

    def create_template(r: ApiRequest) -> dict[str, Any]:
        inline, source, job_arn = (r.params.get(k) for k in ("document", "documentSource", "jobArn"))
        if sum(v is not None for v in (inline, source, job_arn)) != 1:
            raise invalid("give exactly one of jobArn, document and documentSource")
        document = (documents.inline(inline) if inline is not None
                    else documents.load_source(r.caller, str(source)) if source is not None else None)
        config = {k: r.params[k] for k in TEMPLATE_CONFIGS if k in r.params}
        # The ARN was parsed strictly before authorization (iam/actions.py, O1).
        job_id = None if job_arn is None else str(job_arn).rpartition("/")[2]
        template = templates.create(r.params["jobTemplateId"], r.params["description"], document,
                                    str(source or ""), config, job_id)
        return {"jobTemplateArn": template.arn, "jobTemplateId": template.template_id}

    def describe_template(r: ApiRequest) -> dict[str, Any]:
        return template_view(templates.describe(r.params["jobTemplateId"]))

    def list_templates(r: ApiRequest) -> dict[str, Any]:
        rows, more = templates.page(time_key_after(r.params), page_size(r.params))
        items = [{"jobTemplateArn": t.arn, "jobTemplateId": t.template_id, "description": t.description,
                  "createdAt": t.created_at} for t in rows]
        return page_out("jobTemplates", items,
                        key_token(repr(rows[-1].created_at), rows[-1].template_id) if more else None)

    def delete_template(r: ApiRequest) -> dict[str, Any]:
        templates.delete(r.params["jobTemplateId"])
        return {}

    for name, handler in {
        "UpdateJob": update_job, "AssociateTargetsWithJob": associate_targets,
        "DeleteJobExecution": delete_execution, "CreateJobTemplate": create_template,
        "DescribeJobTemplate": describe_template, "ListJobTemplates": list_templates,
        "DeleteJobTemplate": delete_template,
    }.items():
        table.register("iot", name, refusing(_REFUSED.get(name, ()), handler))
