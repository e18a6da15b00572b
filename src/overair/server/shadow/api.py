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


class ShadowOperations:
    """The four iot-data shadow operations on a request's parsed parameters: the one
    implementation behind the operators' API (SigV4 + IAM, `register`) and the devices'
    (mutual TLS, shadow/device_api.py)."""

    def __init__(self, shadows: ShadowService, publish: Publish, clock: Clock, limits: Any) -> None:
        self._shadows = shadows
        self._publish = publish
        self._clock = clock
        self._limits = limits

    def handlers(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
        return {"GetThingShadow": self.get, "UpdateThingShadow": self.update,
                "DeleteThingShadow": self.delete, "ListNamedShadowsForThing": self.list_named}

    @staticmethod
    def _name(params: dict[str, Any]) -> str:
        return str(params.get("shadowName") or CLASSIC)

    def get(self, params: dict[str, Any]) -> dict[str, Any]:
        try:
            return {"payload": doc.encode(self._shadows.get(params["thingName"], self._name(params), None))}
        except ShadowError as exc:
            raise _api_error(exc) from exc

    def update(self, params: dict[str, Any]) -> dict[str, Any]:
        thing, name = params["thingName"], self._name(params)
        try:
            request = doc.parse_request(bytes(params.get("payload") or b""), self._limits, what="document")
            published = self._shadows.update(thing, name, request)
        except ShadowError as exc:
            raise _api_error(exc) from exc
        self._publish(messages(thing, name, published))
        return {"payload": doc.encode(published[0].body)}  # the update/accepted document

    def delete(self, params: dict[str, Any]) -> dict[str, Any]:
        thing, name = params["thingName"], self._name(params)
        try:
            body = self._shadows.delete(thing, name, {})
        except ShadowError as exc:
            raise _api_error(exc) from exc
        self._publish(messages(thing, name, [Published("delete/accepted", body)]))
        return {"payload": doc.encode(body)}

    def list_named(self, params: dict[str, Any]) -> dict[str, Any]:
        try:
            (after,) = key_after(params) or (None,)
            page, more = self._shadows.page_named_shadows(params["thingName"], after,
                                                          page_size(params, limit_key="pageSize"))
        except ShadowError as exc:
            raise _api_error(exc) from exc
        token = key_token(page[-1]) if more else None
        out: dict[str, Any] = {"results": page, "timestamp": int(self._clock())}
        if token:
            out["nextToken"] = token
        return out


def _on_params(handler: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable[[ApiRequest], dict[str, Any]]:
    def handle(r: ApiRequest) -> dict[str, Any]:
        return handler(r.params)

    return handle


def register(table: OperationTable, operations: ShadowOperations) -> None:
    for name, handler in operations.handlers().items():
        table.register(SERVICE, name, _on_params(handler))
