"""The iot-data operations on shadows (GetThingShadow, UpdateThingShadow,
DeleteThingShadow, ListNamedShadowsForThing), for operators: SigV4 and IAM like every
operation (actions `iot:GetThingShadow`, ... on the thing's ARN; iam/actions.py). An
accepted update or delete is also published on the shadow's MQTT topics, as AWS does
for its REST API, so devices see an operator's desired state at once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from overair.core import shadow as doc
from overair.core.shadow import ShadowError
from overair.server.api.contract import ApiError, ApiRequest, OperationTable
from overair.server.api.paging import key_after, key_token, page_size
from overair.server.clock import Clock
from overair.server.shadow.mqtt import messages
from overair.server.shadow.service import CLASSIC, Published, ShadowService

SERVICE = "iot-data"  # the model name (its SigV4 signing name is "iotdata"; api/models.py)
# AWS's shadow status codes -> the iot-data model's errors.
_CODES = {400: "InvalidRequestException", 404: "ResourceNotFoundException", 409: "ConflictException",
          413: "RequestEntityTooLargeException", 415: "UnsupportedDocumentEncodingException",
          429: "ThrottlingException", 500: "InternalFailureException"}
Publish = Callable[[list[tuple[str, bytes]]], None]


def _api_error(exc: ShadowError) -> ApiError:
    return ApiError(_CODES.get(exc.status, "InvalidRequestException"), exc.message, exc.status)


def register(table: OperationTable, shadows: ShadowService, publish: Publish, clock: Clock,
             limits: Any) -> None:
    def name_of(r: ApiRequest) -> str:
        return str(r.params.get("shadowName") or CLASSIC)

    def get_shadow(r: ApiRequest) -> dict[str, Any]:
        try:
            return {"payload": doc.encode(shadows.get(r.params["thingName"], name_of(r), None))}
        except ShadowError as exc:
            raise _api_error(exc) from exc

    def update_shadow(r: ApiRequest) -> dict[str, Any]:
        thing, name = r.params["thingName"], name_of(r)
        try:
            request = doc.parse_request(bytes(r.params.get("payload") or b""), limits, what="document")
            published = shadows.update(thing, name, request)
        except ShadowError as exc:
            raise _api_error(exc) from exc
        publish(messages(thing, name, published))
        return {"payload": doc.encode(published[0].body)}  # the update/accepted document

    def delete_shadow(r: ApiRequest) -> dict[str, Any]:
        thing, name = r.params["thingName"], name_of(r)
        try:
            body = shadows.delete(thing, name, {})
        except ShadowError as exc:
            raise _api_error(exc) from exc
        publish(messages(thing, name, [Published("delete/accepted", body)]))
        return {"payload": doc.encode(body)}

    def list_named(r: ApiRequest) -> dict[str, Any]:
        try:
            (after,) = key_after(r.params) or (None,)
            page, more = shadows.page_named_shadows(r.params["thingName"], after,
                                                    page_size(r.params, limit_key="pageSize"))
        except ShadowError as exc:
            raise _api_error(exc) from exc
        token = key_token(page[-1]) if more else None
        out: dict[str, Any] = {"results": page, "timestamp": int(clock())}
        if token:
            out["nextToken"] = token
        return out

    for name, handler in {"GetThingShadow": get_shadow, "UpdateThingShadow": update_shadow,
                          "DeleteThingShadow": delete_shadow, "ListNamedShadowsForThing": list_named}.items():
        table.register(SERVICE, name, handler)
