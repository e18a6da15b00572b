"""The HTTP edge of the operator API: one Starlette app for every AWS-shaped service.

Per request: read the body (bounded), establish where it came from (the connection, or
a trusted proxy: `request_context.py`), verify SigV4 (region included), pick the service
by the signing name in the credential scope, route, parse and check the input against
the botocore model (`models.py`, `constraints.py`), run the handler in a worker thread,
and write the response in the service's protocol.

Whatever a request raises is translated once, here, by `faults.py`: client errors and
domain errors by fault become the service's AWS error (400s, 404s, 503 for a database
or disk that is down or full). Only a true bug is left over; it becomes a 500 whose
details stay in the log, and the fuzz suite (tests/fuzz) sends hostile requests to
prove no input reaches that path. Every request is logged at INFO on `overair.api`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from overair.core.asciinum import parse_uint
from overair.core.limits import DEFAULT_LIMITS, Limits
from overair.server import metrics
from overair.server.api import s3 as s3api
from overair.server.api.contract import ApiError, ApiRequest, Caller, CredentialLookup, OperationTable
from overair.server.api.faults import to_api_error
from overair.server.api.models import TABLE_NAMES, HttpRequest, HttpResponse, ServiceProtocol, load_services
from overair.server.api.request_context import RequestOrigin, TrustedProxies, request_origin
from overair.server.api.sigv4 import AuthResult, IncomingRequest, peek_service, verify_request
from overair.server.storage.objects import ObjectStore

logger = logging.getLogger("overair.api")

_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
# A body declared or found too large is read and discarded up to this size so the client
# sees the error response rather than a reset connection.
_DRAIN_LIMIT = 64 * 1024 * 1024


@dataclass(slots=True)
class _Log:
    service: str = "-"
    operation: str = "-"
    caller: str = "-"
    source: str = "-"


# (caller, service, operation, params, lower-cased headers) -> None, or raise ApiError
# (AccessDenied...). Headers count for the few overair extensions carried in them.
Authorize = Callable[[Caller, str, str, dict[str, Any], Mapping[str, str]], None]


class _BodyTooLarge(Exception):
    pass


class _Edge:
    def __init__(
        self,
        table: OperationTable,
        credentials: CredentialLookup,
        s3: s3api.S3Api,
        *,
        max_body_bytes: int,
        now: Callable[[], float],
        authorize: Authorize | None,
        region: str,
        partition: str,
        limits: Limits,
        trusted_proxies: TrustedProxies,
    ) -> None:
        self.authorize = authorize
        self.table = table
        self.credentials = credentials
        self.s3 = s3
        self.services = load_services()
        self.max_body_bytes = max_body_bytes
        self.now = now
        self.region = region
        self.partition = partition
        self.limits = limits
        self.trusted_proxies = trusted_proxies

    async def endpoint(self, request: Request) -> Response:
        request_id = str(uuid.uuid4())
        try:
            return await self._endpoint(request, request_id)
        except Exception:
            # A bug in the edge itself (everything a request can raise is handled below).
            logger.exception("request %s failed in the edge: %s %s", request_id, request.method,
                             request.url.path)
            return Response(b"", status_code=500, headers={"x-amzn-RequestId": request_id})

    async def _endpoint(self, request: Request, request_id: str) -> Response:
        started = time.perf_counter()
        log = _Log()
        head = request.method.upper() == "HEAD"
        incoming = IncomingRequest(
            method=request.method.upper(),
            scheme=request.url.scheme,
            raw_path=_raw_path(request),
            raw_query=request.scope.get("query_string", b"").decode("latin-1"),
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.scope["headers"]],
            body=b"",
        )
        protocol = self._protocol_for_errors(incoming)
        try:
            body = await self._read_body(request)
        except ClientDisconnect:
            logger.info("%s %s: client disconnected while sending the body",
                        incoming.method, incoming.raw_path)
            return Response(status_code=400)
        except _BodyTooLarge:
            too_large = "EntityTooLarge" if protocol.name == "s3" else "RequestEntityTooLargeException"
            error = ApiError(too_large, f"Request body exceeds the limit of {self.max_body_bytes} bytes", 413)
            response = protocol.render_error(error, request_id, head=head)
        else:
            # The connection says who is calling; proxy headers count only from trusted proxies.
            origin = request_origin(request.client.host if request.client else "",
                                    request.url.scheme == "https", incoming.headers, self.trusted_proxies)
            response = await run_in_threadpool(
                self._process, replace(incoming, body=body), origin, request_id, log
            )
        elapsed_ms = (time.perf_counter() - started) * 1000
        metrics.observe_request(log.service, log.operation, response.status, elapsed_ms / 1000)
        logger.info(
            "%s %s service=%s operation=%s caller=%s source=%s status=%d duration_ms=%.1f request_id=%s",
            incoming.method, incoming.raw_path, log.service, log.operation, log.caller, log.source,
            response.status, elapsed_ms, request_id,
            extra={
                "service": log.service, "operation": log.operation, "caller": log.caller,
                "source": log.source, "status": response.status, "duration_ms": round(elapsed_ms, 1),
                "request_id": request_id,
            },
        )
        return _to_starlette(response, head)

    # -- synchronous part (worker thread)

    def _process(self, incoming: IncomingRequest, origin: RequestOrigin, request_id: str,
                 log: _Log) -> HttpResponse:
        protocol = self._protocol_for_errors(incoming)
        head = incoming.method == "HEAD"
        log.source = f"{origin.client_ip} via {origin.proxy}" if origin.proxy else origin.client_ip
        try:
            auth = verify_request(incoming, self.credentials, self.now(), region=self.region,
                                  partition=self.partition)
            log.service = auth.service
            service = self.services.get(auth.service)
            if service is None:
                raise ApiError(
                    "UnknownOperationException", f"Service {auth.service!r} is not served by overair", 404
                )
            protocol = service
            caller = Caller(
                access_key_id=auth.credential.access_key_id,
                principal_arn=auth.credential.principal_arn,
                principal_name=auth.credential.principal_name,
                source_ip=origin.client_ip,
                principal_kind=auth.credential.principal_kind,
                secure_transport=origin.secure,
                proxy=origin.proxy,
            )
            log.caller = caller.principal_arn or caller.principal_name
            if auth.service == "s3":
                return self._s3(service, incoming, auth, caller, request_id, log)
            return self._aws(service, incoming, auth, caller, request_id, log)
        except Exception as exc:  # the one translation point (faults.py)
            error = to_api_error(exc, protocol.protocol, protocol.validation_code)
            if error is None:
                logger.exception(
                    "request %s failed: %s %s (%s %s)",
                    request_id, incoming.method, incoming.raw_path, log.service, log.operation,
                )
                code = "InternalError" if protocol.name == "s3" else "InternalFailure"
                error = ApiError(code, f"We encountered an internal error (request id {request_id})", 500)
            elif error.status >= 500:
                logger.error("request %s: %s %s (%s %s) answered %d: %s", request_id, incoming.method,
                             incoming.raw_path, log.service, log.operation, error.status, error.message,
                             exc_info=not isinstance(exc, ApiError))
            return protocol.render_error(error, request_id, head=head)

    def _aws(
        self,
        service: ServiceProtocol,
        incoming: IncomingRequest,
        auth: AuthResult,
        caller: Caller,
        request_id: str,
        log: _Log,
    ) -> HttpResponse:
        req = _http_request(incoming, incoming.body, _header_map(incoming))
        resolved = service.resolve(req)
        log.operation = resolved.name
        # The table is keyed by botocore's model name (boto3's client name), which differs
        # from the SigV4 signing name for iot-data ("iotdata").
        handler = self.table.get(TABLE_NAMES.get(auth.service, auth.service), resolved.name)
        if handler is None:
            raise ApiError(
                "NotImplementedException",
                f"{auth.service}:{resolved.name} is not implemented by overair",
                501,
            )
        params = service.parse(resolved, req, limits=self.limits)
        if self.authorize is not None:
            self.authorize(caller, auth.service, resolved.name, params, req.headers)
        result: Any = handler(ApiRequest(auth.service, resolved.name, params, caller,
                                         headers=req.headers))
        return service.serialize(resolved.operation, result or {}, request_id)

    def _s3(
        self,
        service: ServiceProtocol,
        incoming: IncomingRequest,
        auth: AuthResult,
        caller: Caller,
        request_id: str,
        log: _Log,
    ) -> HttpResponse:
        body, headers = s3api.decode_body(incoming, auth)
        req = _http_request(incoming, body, headers)
        resolved = service.resolve(req)
        log.operation = resolved.name
        known = resolved.name in self.s3.operations()
        params = service.parse(resolved, req, limits=self.limits) if known else {}
        reply = self.s3.call(resolved.name, params, caller)
        if reply.raw_body is not None:
            headers_out = [*service.request_id_headers(request_id), ("Content-Type", "application/xml")]
            return HttpResponse(reply.status or 200, headers_out, reply.raw_body)
        return service.serialize(
            resolved.operation, reply.output, request_id, status=reply.status, root=reply.root
        )

    # -- helpers

    def _protocol_for_errors(self, incoming: IncomingRequest) -> ServiceProtocol:
        """The protocol to answer in before (or without) a verified signature."""
        named = peek_service(incoming)
        if named is not None and named in self.services:
            return self.services[named]
        headers = _header_map(incoming)
        if "x-amz-target" in headers:
            return self.services["acm"]
        query = HttpRequest.parse_query(incoming.raw_query)
        if any(k == "Action" for k, _ in query) or headers.get("content-type", "").startswith(
            "application/x-www-form-urlencoded"
        ):
            return self.services["iam"]
        probe = HttpRequest(incoming.method, incoming.raw_path, query, headers, b"")
        for name in ("iot", "signer", "iot-jobs-data"):
            try:
                self.services[name].resolve(probe)
            except ApiError:
                continue
            return self.services[name]
        return self.services["s3"]

    async def _read_body(self, request: Request) -> bytes:
        declared = parse_uint(request.headers.get("content-length", ""))
        if declared is not None and declared > self.max_body_bytes:
            expects_continue = "100-continue" in request.headers.get("expect", "").lower()
            if not expects_continue and declared <= _DRAIN_LIMIT:
                async for _ in request.stream():
                    pass
            raise _BodyTooLarge
        body = bytearray()
        too_large = False
        async for chunk in request.stream():
            if too_large:
                continue
            body += chunk
            if len(body) > self.max_body_bytes:
                too_large = True
                body.clear()
        if too_large:
            raise _BodyTooLarge
        return bytes(body)


def _raw_path(request: Request) -> str:
    raw = request.scope.get("raw_path")
    if isinstance(raw, bytes) and raw:
        return raw.decode("latin-1").split("?", 1)[0]
    return quote(request.scope.get("path", "/"), safe="/~")


def _header_map(incoming: IncomingRequest) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in incoming.headers:
        lname = name.lower()
        out[lname] = f"{out[lname]},{value}" if lname in out else value
    return out


def _http_request(incoming: IncomingRequest, body: bytes, headers: dict[str, str]) -> HttpRequest:
    return HttpRequest(
        method=incoming.method,
        raw_path=incoming.raw_path,
        query=HttpRequest.parse_query(incoming.raw_query),
        headers=headers,
        body=body,
    )


def _header_bytes(value: str) -> bytes:
    clean = value.replace("\r", " ").replace("\n", " ")
    try:
        return clean.encode("latin-1")
    except UnicodeEncodeError:
        return clean.encode("latin-1", "replace")


def _to_starlette(response: HttpResponse, head: bool) -> Response:
    out = Response(content=b"" if head else response.body, status_code=response.status)
    raw: list[tuple[bytes, bytes]] = []
    declared_length: str | None = None
    for name, value in response.headers:
        lname = name.lower()
        if lname == "content-length":
            declared_length = value
            continue
        raw.append((lname.encode("latin-1"), _header_bytes(value)))
    if response.status >= 200 and response.status not in (204, 304):
        length = declared_length if head and declared_length is not None else str(len(response.body))
        raw.append((b"content-length", length.encode("latin-1")))
    out.raw_headers = raw
    return out


def build_api_app(
    table: OperationTable,
    credentials: CredentialLookup,
    objects: ObjectStore,
    *,
    region: str,
    max_body_bytes: int,
    extra_routes: list[BaseRoute] | None = None,
    now: Callable[[], float] = time.time,
    s3_authorizer: s3api.S3Authorizer | None = None,
    authorize: Authorize | None = None,
    partition: str = "aws",
    limits: Limits = DEFAULT_LIMITS,
    trusted_proxies: tuple[str, ...] = (),
    bucket_policies: s3api.BucketPolicyPrincipals | None = None,
) -> Starlette:
    """The operator API as an ASGI app, for a server in `region` of `partition`.

    `extra_routes` are matched first and are not SigV4-authenticated here (health,
    pre-signed downloads...). Everything else is an AWS request. `s3_authorizer`, if
    given, is called with (caller, IAM action, resource ARN) before each S3 operation
    and may raise `ApiError("AccessDenied", ..., 403)`; `authorize` likewise with
    (caller, service, operation, parsed params) before every other operation's handler.
    `trusted_proxies` (addresses, CIDRs) may set the client address and scheme through
    X-Forwarded-For/-Proto; serve the app with uvicorn's `proxy_headers=False`."""
    s3 = s3api.S3Api(objects, region=region, authorize=s3_authorizer, partition=partition, limits=limits,
                     bucket_policies=bucket_policies)
    edge = _Edge(table, credentials, s3, max_body_bytes=max_body_bytes, now=now, authorize=authorize,
                 region=region, partition=partition, limits=limits,
                 trusted_proxies=TrustedProxies(trusted_proxies))
    routes: list[BaseRoute] = [
        *(extra_routes or []),
        Route("/{path:path}", edge.endpoint, methods=_METHODS, include_in_schema=False),
    ]
    return Starlette(routes=routes)
