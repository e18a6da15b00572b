"""The Device Shadow service's HTTPS API for devices (iot-data: GetThingShadow,
UpdateThingShadow, DeleteThingShadow, ListNamedShadowsForThing), authenticated by the
device's X.509 certificate (mutual TLS), as AWS IoT serves it to devices on its data
endpoint's port 8443:

    GET|POST|DELETE https://<endpoint>:8443/things/<thing>/shadow[?name=<shadow>]
    GET https://<endpoint>:8443/api/things/shadow/ListNamedShadowsForThing/<thing>

(AWS IoT developer guide, "Device Shadow REST API"). overair serves it on the device
HTTPS endpoint, next to the Jobs HTTPS API (delivery/device_jobs_api.py), with the same
checks in the same order: a client certificate, the certificate's request budget
(shared with the Jobs API: one device, one budget), a body of bounded size
(`Limits.max_shadow_request_bytes`), the thing name, then the certificate must be ACTIVE
and attached to the thing in the path (threat N4: a device reads and writes only its own
things' shadows, as the broker's access rules allow it only its own things' shadow
topics). The operations themselves are the operators' (shadow/api.py ShadowOperations
over shadow/service.py): same semantics, limits and errors as over MQTT, and an accepted
change is published on the shadow's MQTT topics. Failures are translated once, in
`_endpoint`, to the iot-data model's errors.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from cryptography import x509
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from overair.core import topics
from overair.core.limits import Limits
from overair.server.api.contract import ApiError
from overair.server.api.models import HttpRequest, HttpResponse, ServiceProtocol, load_services
from overair.server.audit.device_events import DeviceEventRecorder
from overair.server.clock import Clock
from overair.server.delivery.budgets import DeviceBudgets, Kind
from overair.server.delivery.device_jobs_api import (
    BodyTooLarge,
    bounded_body,
    device_certificate,
    error_reply,
    model_request,
)
from overair.server.registry.service import Registry
from overair.server.shadow.api import ShadowOperations

log = logging.getLogger("overair.devices")
INVALID = "InvalidRequestException"
SIGNING_NAME = "iotdata"  # iot-data's key in load_services() (api/models.py TABLE_NAMES)
THROTTLED_ACTION = "iot:*ThingShadow"  # throttling comes before the operation is known


class DeviceShadowApi:
    def __init__(self, operations: ShadowOperations, registry: Registry, budgets: DeviceBudgets,
                 events: DeviceEventRecorder, limits: Limits, clock: Clock) -> None:
        self._handlers = operations.handlers()
        self._registry = registry
        self._budgets = budgets
        self.events = events
        self._limits = limits
        self._clock = clock
        self._service: ServiceProtocol = load_services()[SIGNING_NAME]

    def routes(self) -> list[BaseRoute]:
        # Before the Jobs API's `/things/{rest:path}`; a thing name has no "/".
        return [Route("/things/{thing}/shadow", self._endpoint, methods=["GET", "POST", "DELETE"]),
                Route("/api/things/shadow/ListNamedShadowsForThing/{thing}", self._endpoint, methods=["GET"])]

    async def _endpoint(self, request: Request) -> Response:
        """The one translation point of this API: every failure becomes the model's error."""
        request_id = str(uuid.uuid4())
        try:
            cert, principal = device_certificate(request, "the Device Shadow HTTPS API")
            try:
                body = await bounded_body(request, self._limits.max_shadow_request_bytes)
            except BodyTooLarge:
                raise ApiError("RequestEntityTooLargeException",
                               "The payload exceeds the maximum size allowed", 413) from None
            if not self._budgets.take(principal, Kind.HTTPS_API, self._clock()):
                self.events.throttled(principal=principal, action=THROTTLED_ACTION, resource=principal)
                raise ApiError("ThrottlingException", "request rate exceeds the device's budget", 429)
            reply = await run_in_threadpool(self._handle, model_request(request, body), cert, principal,
                                            request_id)
        except Exception:
            reply = error_reply(self._service, request_id, "device shadow")
        return Response(reply.body, reply.status, headers=dict(reply.headers))

    def _handle(self, http: HttpRequest, cert: x509.Certificate, principal: str,
                request_id: str) -> HttpResponse:
        resolved = self._service.resolve(http)
        handler = self._handlers.get(resolved.name)
        if handler is None:  # the routes admit no other operation of the model
            raise ApiError("NotImplementedException", f"iot-data:{resolved.name} is not served here", 501)
        params = self._service.parse(resolved, http)
        thing = params.get("thingName")
        if not isinstance(thing, str) or not topics.is_thing_name(thing):
            raise ApiError(INVALID, "thingName must be 1-128 characters of [a-zA-Z0-9:_-]", 400)
        self._authorize(cert, principal, thing, resolved.name)
        result: dict[str, Any] = handler(params)
        return self._service.serialize(resolved.operation, result, request_id)

    def _authorize(self, cert: x509.Certificate, principal: str, thing: str, operation: str) -> None:
        if thing not in self._registry.things_of_certificate(cert):
            self.events.refused(principal=principal, action=f"iot:{operation}", resource=f"thing/{thing}",
                                decision="DENY", reason="certificate not ACTIVE or not attached to the thing")
            # The same answer as for a thing that does not exist: no existence oracle.
            raise ApiError("ResourceNotFoundException", "Thing not found", 404)
