"""iot operations of bulk registration and RegisterThing (server/registry/bulk.py,
registration_tasks.py), in AWS's shapes."""

from __future__ import annotations

from typing import Any

from overair.core.limits import Limits
from overair.core.provtemplate import TemplateError, parse_template
from overair.server.api.contract import ApiError, ApiRequest, OperationTable, invalid
from overair.server.api.paging import key_after, key_token, page_out, page_size, paginate
from overair.server.registry.bulk import BulkRegistrar
from overair.server.registry.registration_tasks import RegistrationTasks


def register(table: OperationTable, tasks: RegistrationTasks, registrar: BulkRegistrar,
             limits: Limits) -> None:
    def start(r: ApiRequest) -> dict[str, Any]:
        p = r.params
        return {"taskId": tasks.start(p["templateBody"], p["inputFileBucket"], p["inputFileKey"],
                                      p["roleArn"])}

    def describe(r: ApiRequest) -> dict[str, Any]:
        row = tasks.describe(r.params["taskId"])
        out: dict[str, Any] = {
            "taskId": row.task_id, "creationDate": row.created_at, "lastModifiedDate": row.last_modified_at,
            "templateBody": row.template_body, "inputFileBucket": row.input_bucket,
            "inputFileKey": row.input_key, "roleArn": row.role_arn, "status": row.status,
            "successCount": row.success_count, "failureCount": row.failure_count,
            "percentageProgress": row.percentage}
        if row.message:
            out["message"] = row.message
        return out

    def list_tasks(r: ApiRequest) -> dict[str, Any]:
        after = key_after(r.params, parts=2)
        try:
            start = None if after is None else (float(after[0]), after[1])
        except ValueError:
            raise invalid("nextToken is not valid") from None
        rows, more = tasks.page_ids(r.params.get("status"), start, page_size(r.params))
        token = key_token(repr(rows[-1][0]), rows[-1][1]) if more else None
        return page_out("taskIds", [task_id for _, task_id in rows], token)

    def reports(r: ApiRequest) -> dict[str, Any]:
        report_type = r.params["reportType"]
        links = tasks.report_links(r.params["taskId"], report_type)
        page, token = paginate(links, r.params)
        return {**page_out("resourceLinks", page, token), "reportType": report_type}

    def stop(r: ApiRequest) -> dict[str, Any]:
        tasks.stop(r.params["taskId"])
        return {}

    def register_thing(r: ApiRequest) -> dict[str, Any]:
        try:
            template = parse_template(r.params["templateBody"], limits)
        except TemplateError as exc:
            raise invalid(f"templateBody: {exc.message}") from None
        values = r.params.get("parameters") or {}
        (result,) = registrar.register(template, [("0", dict(values))])
        if not result.ok:
            raise ApiError(result.error_code or "InvalidRequestException", result.error_message or "", 400)
        out: dict[str, Any] = {"resourceArns": result.resource_arns}
        if result.certificate_pem is not None:
            out["certificatePem"] = result.certificate_pem
        return out

    table.register("iot", "StartThingRegistrationTask", start)
    table.register("iot", "DescribeThingRegistrationTask", describe)
    table.register("iot", "ListThingRegistrationTasks", list_tasks)
    table.register("iot", "ListThingRegistrationTaskReports", reports)
    table.register("iot", "StopThingRegistrationTask", stop)
    table.register("iot", "RegisterThing", register_thing)
