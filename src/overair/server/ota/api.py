"""iot operations of the OTA Update Manager."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from overair.server.api.contract import ApiRequest, OperationTable
from overair.server.api.paging import key_token, page_out, page_size, time_key_after
from overair.server.ota.manager import OtaManager, job_id_for
from overair.server.storage.schema import OtaUpdate


def _info(row: OtaUpdate, job_arn: Callable[[str], str]) -> dict[str, Any]:
    request = row.request
    info: dict[str, Any] = {
        "otaUpdateId": row.ota_update_id, "otaUpdateArn": row.arn, "creationDate": row.created_at,
        "lastModifiedDate": row.last_modified_at, "description": request.get("description", ""),
        "targets": request.get("targets", []), "protocols": request.get("protocols", ["MQTT"]),
        "targetSelection": request.get("targetSelection", "SNAPSHOT"),
        "otaUpdateFiles": request.get("files", []), "otaUpdateStatus": row.status,
        "additionalParameters": request.get("additionalParameters", {}),
    }
    if row.job_id:
        info["awsIotJobId"] = row.job_id
        info["awsIotJobArn"] = job_arn(row.job_id)
    if row.error_info:
        info["errorInfo"] = row.error_info
    return info


def register(table: OperationTable, manager: OtaManager, job_arn: Callable[[str], str],
             schedule: Callable[[str], None]) -> None:
    def create(r: ApiRequest) -> dict[str, Any]:
        row = manager.create(r.params)
        schedule(row.ota_update_id)
        job_id = job_id_for(row.ota_update_id)
        return {"otaUpdateId": row.ota_update_id, "otaUpdateArn": row.arn,
                "awsIotJobId": job_id, "awsIotJobArn": job_arn(job_id), "otaUpdateStatus": row.status}

    def get(r: ApiRequest) -> dict[str, Any]:
        return {"otaUpdateInfo": _info(manager.get(r.params["otaUpdateId"]), job_arn)}

    def list_(r: ApiRequest) -> dict[str, Any]:
        rows, more = manager.page_updates(r.params.get("otaUpdateStatus"), time_key_after(r.params),
                                          page_size(r.params))
        items = [{"otaUpdateId": row.ota_update_id, "otaUpdateArn": row.arn, "creationDate": row.created_at}
                 for row in rows]
        token = key_token(repr(rows[-1].created_at), rows[-1].ota_update_id) if more else None
        return page_out("otaUpdates", items, token)

    def delete(r: ApiRequest) -> dict[str, Any]:
        manager.delete(r.params["otaUpdateId"], bool(r.params.get("deleteStream", False)),
                       bool(r.params.get("forceDeleteAWSJob", False)))
        return {}

    for name, handler in {"CreateOTAUpdate": create, "GetOTAUpdate": get, "ListOTAUpdates": list_,
                          "DeleteOTAUpdate": delete}.items():
        table.register("iot", name, handler)
