"""iot operations on streams."""

from __future__ import annotations

from typing import Any

from overair.server.api.contract import ApiRequest, OperationTable
from overair.server.api.paging import key_token, page_out, page_size, time_key_after
from overair.server.streams.service import StreamService


def register(table: OperationTable, streams: StreamService) -> None:
    def create(r: ApiRequest) -> dict[str, Any]:
        stream = streams.create_stream(r.params["streamId"], r.params["files"],
                                       r.params.get("description", ""), r.params.get("roleArn", ""))
        return {"streamId": stream.stream_id, "streamArn": stream.arn,
                "description": stream.description, "streamVersion": stream.version}

    def describe(r: ApiRequest) -> dict[str, Any]:
        s = streams.describe_stream(r.params["streamId"])
        return {"streamInfo": {"streamId": s.stream_id, "streamArn": s.arn, "streamVersion": s.version,
                               "description": s.description, "files": s.files, "createdAt": s.created_at,
                               "lastUpdatedAt": s.updated_at, "roleArn": s.role_arn}}

    def list_(r: ApiRequest) -> dict[str, Any]:
        rows, more = streams.page_streams(time_key_after(r.params), page_size(r.params))
        items = [{"streamId": s.stream_id, "streamArn": s.arn, "streamVersion": s.version,
                  "description": s.description} for s in rows]
        token = key_token(repr(rows[-1].created_at), rows[-1].stream_id) if more else None
        return page_out("streams", items, token)

    def update(r: ApiRequest) -> dict[str, Any]:
        s = streams.update_stream(r.params["streamId"], r.params.get("files"),
                                  r.params.get("description"), r.params.get("roleArn"))
        return {"streamId": s.stream_id, "streamArn": s.arn, "description": s.description,
                "streamVersion": s.version}

    def delete(r: ApiRequest) -> dict[str, Any]:
        streams.delete_stream(r.params["streamId"])
        return {}

    for name, handler in {"CreateStream": create, "DescribeStream": describe, "ListStreams": list_,
                          "UpdateStream": update, "DeleteStream": delete}.items():
        table.register("iot", name, handler)
