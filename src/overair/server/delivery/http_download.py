"""OTA file delivery over HTTPS with pre-signed URLs (device-protocol.md §4).

Two halves: `render` puts fresh pre-signed URLs into every delivery of a job document
(the job service calls it for each device): the `update_data_url` of an OTA job that
offers HTTP, and in place of each `${aws:iot:s3-presigned-url:...}` placeholder of a
plain job (core/placeholders.py). `app` is the HTTPS endpoint devices download from with
`Range` requests. A URL is
honoured only if its signature and expiry hold (core/presign.py) and the thing it names
still has a live execution of a job delivering exactly that object version (threat
N4); refusals are audited. Bytes come from the object store, whose SHA-256 check on read
means a corrupted file is never served.

The endpoint answers anyone who can open a TLS connection, so every failure is
translated here, once, to a client error: a malformed URL 400, a forged or expired one or
no live execution 403, an unknown object 404, a bad Range 416, a device over its
download budget 429 (delivery/budgets.py), a store that cannot be read 503. The fleet
download policy (delivery/policy.py) answers 429 (the device's own rate) or 503 (the
server's or the rollout's capacity) with `Retry-After` and its reason as a stable code
(body and `x-amzn-ErrorType`). The access
decision is cached (streams/access.py) and dropped as soon as the thing's executions
change; denials are audited a bounded number of times per device and interval.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from overair.core import placeholders, presign
from overair.core.errors import OverairError
from overair.core.limits import DEFAULT_LIMITS, Limits
from overair.server import metrics
from overair.server.api.contract import ApiError
from overair.server.audit.device_events import DeviceEventRecorder
from overair.server.audit.log import AuditLog
from overair.server.clock import Clock
from overair.server.delivery.budgets import DeviceBudgets, Kind
from overair.server.delivery.download_gate import DownloadGate
from overair.server.delivery.front_files import FrontFiles
from overair.server.delivery.nginx_front import (
    AUTH_PREFIX,
    FILE_HEADER,
    MESSAGE_HEADER,
    OBJECT_HEADER,
    STATUS_HEADER,
    decision_cache_control,
    object_token,
)
from overair.server.delivery.policy import Decision
from overair.server.delivery.ranged_files import RangedFiles
from overair.server.jobs.coalesced_reads import CoalescedReads
from overair.server.jobs.deliveries import HTTP_FILES, PRESIGNED_OBJECTS, THINGS_PER_READ, ObjectVersion
from overair.server.jobs.service import JobService
from overair.server.log_bounds import BoundedLog
from overair.server.storage.objects import ObjectStore, StoredObject
from overair.server.storage.schema import Job
from overair.server.streams.access import AccessCache
from overair.server.streams.service import FileCache

log = logging.getLogger("overair.delivery")
DOWNLOAD_ACTION = "iot:DownloadOtaFile"
# UrlRefused codes and their HTTP status; anything else a URL can be refused for is 403.
_REFUSAL_STATUS = {"MalformedUrl": 400, "InvalidRange": 416, "ThrottlingException": 429}
# overair's refusals also say when to come back to the millisecond (Retry-After has whole
# seconds: a device whose fair share allows it back in 1.2 s would wait 2).
RETRY_AFTER_MS = "x-overair-retry-after-ms"
DECISION_PREFIX = AUTH_PREFIX + presign.PATH_PREFIX
MAX_SIZES = 4096


class HttpDelivery:
    def __init__(self, secret: bytes, base_url: str, objects: ObjectStore, jobs: JobService, audit: AuditLog,
                 clock: Clock, cache_bytes: int = 256 * 1024 * 1024, limits: Limits = DEFAULT_LIMITS,
                 gate: DownloadGate | None = None) -> None:
        self._secret = secret
        self.base_url = base_url
        self._objects = objects
        self._jobs = jobs
        self._audit = audit
        self._clock = clock
        self._cache = FileCache(cache_bytes)
        self._ranged = RangedFiles(objects)
        self._sizes: dict[tuple[str, str, str], int] = {}  # object versions' sizes, for the front
        self._whole_file_bytes = limits.http_whole_file_bytes
        self._access = AccessCache(limits.device_access_cache_seconds, limits.device_access_cache_entries)
        # A rollout's first requests all miss the access cache at once: read them together.
        self._delivered = CoalescedReads(self._objects_delivered, THINGS_PER_READ)
        self._budgets = DeviceBudgets(limits)
        self.gate = gate
        # With the nginx download front: the granted versions it serves from its own disk.
        self.front_files: FrontFiles | None = None
        self.answered: Counter[int] = Counter()  # requests by the status answered (tests, bench)
        self.events = DeviceEventRecorder(audit, clock, limits)
        self._refusals_log = BoundedLog(log, limits)  # a stranger decides how many there are
        # N4: a URL stops working the moment its thing's execution ends.
        jobs.watch_executions(self._access.forget_things)

    # Job documents ----------------------------------------------------------------------
    def render(self, job: Job, thing: str) -> dict[str, Any]:
        """The job document as delivered to `thing` now, with fresh URLs bound to it."""
        document = job.document
        files = job.config.get(HTTP_FILES)
        if files and isinstance(document.get("afr_ota"), dict):
            document = self._with_file_urls(job, document, files, thing)
        pinned = job.config.get(PRESIGNED_OBJECTS)
        if pinned:
            document = self._with_placeholder_urls(job, document, pinned, thing)
        return document

    def object_url(self, job: Job, source: dict[str, Any], thing: str) -> str:
        """A fresh pre-signed URL for another object the job delivers (`source`: one of its
        HTTP files, e.g. a delta patch, server/ota/delta.py), as for the job's own files."""
        expires = int(self._clock()) + presign.expiry_seconds(job.config.get("presignedUrlConfig"))
        return self._url(source, thing, expires)

    def _url(self, source: dict[str, Any], thing: str, expires: int) -> str:
        grant = presign.Grant(source["bucket"], source["key"], source["version"], thing, expires)
        return presign.sign(self._secret, self.base_url, grant)

    def _with_file_urls(self, job: Job, document: dict[str, Any], files: list[dict[str, Any]],
                        thing: str) -> dict[str, Any]:
        expires = int(self._clock()) + presign.expiry_seconds(job.config.get("presignedUrlConfig"))
        rendered = copy.deepcopy(document)
        by_id = {f["fileId"]: f for f in files}
        for entry in rendered["afr_ota"].get("files", []):
            source = by_id.get(entry.get("fileid"))
            if source is not None:
                entry["update_data_url"] = self._url(source, thing, expires)
                entry["auth_scheme"] = "aws.s3.presigned"
        return rendered

    def _with_placeholder_urls(self, job: Job, document: dict[str, Any], pinned: list[dict[str, Any]],
                               thing: str) -> dict[str, Any]:
        expires = int(self._clock()) + presign.expiry_seconds(job.config.get("presignedUrlConfig"),
                                                              default=presign.JOB_DEFAULT_EXPIRY)
        urls = {entry["placeholder"]: self._url(entry, thing, expires) for entry in pinned}
        rendered: dict[str, Any] = placeholders.substitute(document, urls)
        return rendered

    # The HTTPS endpoint -------------------------------------------------------------------
    def routes(self) -> list[BaseRoute]:
        return [Route(presign.PATH_PREFIX + "{bucket}/{key:path}", self._download, methods=["GET", "HEAD"]),
                Route(DECISION_PREFIX + "{bucket}/{key:path}", self._decision,
                      methods=["GET", "HEAD"])]

    async def _decision(self, request: Request) -> Response:
        bucket, key = unquote(request.path_params["bucket"]), unquote(request.path_params["key"])
        answer = await run_in_threadpool(self.authorize, bucket, key, request.url.query)
        assert answer is not None  # not memory_only: always an answer
        return answer

    def authorize(self, bucket: str, key: str, query: str, *,
                  memory_only: bool = False) -> Response | None:
        """The download front's question (delivery/nginx_front.py): may this URL be
        served now? The same checks as a download, refusals audited alike; 204 yes.
        nginx's auth_request passes on only 401/403, so a refusal is a 403 whose headers
        carry the status, code, message and Retry-After the Python path would answer."""
        answer = self._answering(lambda: self._decide(bucket, key, query, memory_only))
        if answer is None or answer.status_code < 300:
            return answer
        code, _, message = bytes(answer.body).decode("utf-8", "replace").partition(": ")
        headers = {STATUS_HEADER: str(answer.status_code), "x-amzn-ErrorType": code,
                   MESSAGE_HEADER: "".join(c if " " <= c <= "~" else "?" for c in message.strip())[:200]}
        for name in ("retry-after", RETRY_AFTER_MS):
            if name in answer.headers:
                headers[name] = answer.headers[name]
        headers["Cache-Control"] = decision_cache_control(granted=False)
        return Response(b"", 403, headers=headers)

    def _decide(self, bucket: str, key: str, query: str, memory_only: bool) -> Response | None:
        grant = presign.verify(self._secret, bucket, key, presign.parse_query(query), self._clock())
        if memory_only and not (self._access.get(grant.thing, (grant.bucket, grant.key, grant.version),
                                                 self._clock()) and self._known_size(grant) is not None):
            return None  # the full path, in a worker thread: it needs the database
        self._check_access(grant)
        size = self._size(grant)
        if self.gate is not None:
            # The front reuses a decision for at most 2 s and serves the bytes itself:
            # the policy admits the device (its slot, until its lease runs out) here, and
            # its bytes are not counted per request (docs/scaling.md, "HTTPS delivery").
            decision = self.gate.for_object(grant.thing, grant.bucket, grant.key, grant.version, 0)
            if not decision.admitted:
                raise PolicyRefusal(decision)
        bucket, key, version = grant.bucket, grant.key, grant.version
        headers = {OBJECT_HEADER: object_token(bucket, key, version),
                   "Cache-Control": decision_cache_control(granted=True)}
        file = self.front_files.name(bucket, key, version, size) if self.front_files is not None else None
        if file is not None:
            headers[FILE_HEADER] = file
        return Response(b"", 204, headers=headers)

    def _size(self, grant: presign.Grant) -> int:
        size = self._known_size(grant)
        if size is None:
            size = self._objects.head_object(grant.bucket, grant.key, grant.version).size
            if len(self._sizes) >= MAX_SIZES:
                self._sizes.clear()  # versions never change size: forgetting only costs a read
            self._sizes[(grant.bucket, grant.key, grant.version)] = size
        return size

    def _known_size(self, grant: presign.Grant) -> int | None:
        item = (grant.bucket, grant.key, grant.version)
        cached = self._cache.get(("http", *item))
        return len(cached) if cached is not None else self._sizes.get(item)

    async def _download(self, request: Request) -> Response:
        bucket, key = unquote(request.path_params["bucket"]), unquote(request.path_params["key"])
        response = await run_in_threadpool(self.respond, request.method, bucket, key,
                                           request.url.query, request.headers.get("range"))
        assert response is not None  # not memory_only: always an answer
        self.answered[response.status_code] += 1  # on the event loop: no lock needed
        return response

    def fast_app(self, fallback: ASGIApp) -> ASGIApp:
        """The device endpoint's ASGI app: a download request whose grant, access decision
        and file are all in memory (nearly every one of a rollout: a device makes one per
        4 KiB block) is answered here, on the event loop, without Starlette's routing and
        middleware or a hop to a worker thread, which were most of its cost
        (bench/fleet.py --protocol HTTP). Everything else goes to `fallback`, the same
        route with every check, which answers the same."""

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            path = scope.get("path", "") if scope["type"] == "http" else ""
            decision = path.startswith(DECISION_PREFIX)
            if decision:
                path = path[len(AUTH_PREFIX):]
            if path.startswith(presign.PATH_PREFIX) and scope["method"] in ("GET", "HEAD"):
                bucket, slash, key = path[len(presign.PATH_PREFIX):].partition("/")
                if bucket and slash:
                    query = scope.get("query_string", b"").decode("latin-1")
                    if decision:
                        response = self.authorize(unquote(bucket), unquote(key), query, memory_only=True)
                    else:
                        range_header = next((v.decode("latin-1") for k, v in scope.get("headers", ())
                                             if k == b"range"), None)
                        response = self.respond(scope["method"], unquote(bucket), unquote(key), query,
                                                range_header, memory_only=True)
                    if response is not None:
                        self.answered[response.status_code] += 1
                        await response(scope, receive, send)
                        return
            await fallback(scope, receive, send)

        return app

    def respond(self, method: str, bucket: str, key: str, query: str, range_header: str | None,
                *, memory_only: bool = False) -> Response | None:
        """The answer to a download request, refusals included. `memory_only`: None
        instead if answering needs the database or the object store (nothing was
        consumed: the caller asks again without it)."""
        return self._answering(lambda: self._serve(method, bucket, key, query, range_header, memory_only))

    def _answering(self, serve: Callable[[], Response | None]) -> Response | None:
        """`serve`'s answer, or the client error its refusal or failure translates to."""
        try:
            return serve()
        except PolicyRefusal as exc:
            decision = exc.decision
            headers = {"Retry-After": str(decision.retry_after_seconds), "x-amzn-ErrorType": decision.code,
                       RETRY_AFTER_MS: str(decision.retry_after_ms)}
            return _text(429 if decision.own_rate else 503, decision.code, decision.message, headers)
        except presign.UrlRefused as exc:
            self._refusals_log.info("download refused", "download refused: %s %s", exc.code, exc.message)
            status = _REFUSAL_STATUS.get(exc.code, 403)
            # Over its budget a device may ask again as soon as its bucket refills (RFC 9110).
            return _text(status, exc.code, exc.message, {"Retry-After": "1"} if status == 429 else None)
        except ApiError as exc:
            if exc.status < 500:  # the object or version is gone: the device asks for the job again
                return _text(404, exc.code, exc.message)
            log.error("download failed: %s", exc.message)
            return _text(503, "ServiceUnavailable", "file unavailable, try again")
        except OverairError as exc:
            log.error("download failed: %s", exc.message)
            return _text(503, "ServiceUnavailable", "file unavailable, try again")

    def _serve(self, method: str, bucket: str, key: str, query: str,
               range_header: str | None, memory_only: bool = False) -> Response | None:
        grant = presign.verify(self._secret, bucket, key, presign.parse_query(query), self._clock())
        if memory_only and not self._in_memory(grant):
            return None  # before the budget is spent: the full path spends it once
        self._check_access(grant)
        source = self._file(grant)
        size = len(source) if isinstance(source, bytes) else source.size
        span = presign.parse_range(range_header, size)
        if self.gate is not None and method != "HEAD":
            final = span is None or span[1] == size - 1
            decision = self.gate.for_object(grant.thing, grant.bucket, grant.key, grant.version,
                                            size if span is None else span[1] - span[0] + 1, final=final)
            if not decision.admitted:
                raise PolicyRefusal(decision)
        headers = {"Accept-Ranges": "bytes", "Cache-Control": "no-store"}
        first, last = (0, size - 1) if span is None else span
        if span is not None:
            headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        headers["Content-Length"] = str(last + 1 - first)
        status = 200 if span is None else 206
        if method == "HEAD":
            return Response(b"", status, headers=headers, media_type="application/octet-stream")
        metrics.BYTES_SERVED_HTTPS.inc(last + 1 - first)
        if isinstance(source, bytes):
            body = source if span is None else source[first:last + 1]
            return Response(body, status, headers=headers, media_type="application/octet-stream")
        return StreamingResponse(iterate_in_threadpool(self._ranged.read(source, first, last)), status,
                                 headers=headers, media_type="application/octet-stream")

    def _check_access(self, grant: presign.Grant) -> None:
        """The device's budget, then N4. The thing is authenticated from here on (the
        URL's signature binds it)."""
        if not self._budgets.take(grant.thing, Kind.DOWNLOAD, self._clock()):
            self.events.throttled(principal=f"thing/{grant.thing}", action=DOWNLOAD_ACTION,
                                  resource=f"thing/{grant.thing}")
            raise presign.UrlRefused("download rate exceeds the device's budget", code="ThrottlingException")
        if not self._may_read(grant):
            self.events.refused(principal=f"thing/{grant.thing}", action=DOWNLOAD_ACTION,
                                resource=f"s3://{grant.bucket}/{grant.key}?versionId={grant.version}",
                                decision="DENY", reason="no live execution delivers this file")
            raise presign.UrlRefused("no live job of this thing delivers this file", code="AccessDenied")

    def _in_memory(self, grant: presign.Grant) -> bool:
        """Are this grant's access decision (allowed) and file bytes cached?"""
        item = (grant.bucket, grant.key, grant.version)
        return bool(self._access.get(grant.thing, item, self._clock())) and \
            self._cache.get(("http", grant.bucket, grant.key, grant.version)) is not None

    def _may_read(self, grant: presign.Grant) -> bool:
        """N4: cached (streams/access.py), dropped when the thing's executions change."""
        item = (grant.bucket, grant.key, grant.version)
        cached = self._access.get(grant.thing, item, self._clock())
        if cached is not None:
            return cached
        generation = self._access.generation(grant.thing)
        allowed = item in self._delivered.get(grant.thing)  # read after `generation` was noted
        self._access.put(grant.thing, item, allowed, self._clock(), generation)
        return allowed

    def _objects_delivered(self, things: list[str]) -> dict[str, frozenset[ObjectVersion]]:
        delivered = self._jobs.deliveries.of_things(things)
        return {thing: of_thing.objects for thing, of_thing in delivered.items()}

    def renew_access(self) -> int:
        """Decide again the access of the devices downloading now (streams/access.py
        `renew`): one read per 500 of them. Returns how many were renewed."""
        return self._access.renew(self._objects_delivered, self._clock)

    @property
    def cached_bytes(self) -> int:
        """Bytes of files held whole in memory (tests: large files never are)."""
        return self._cache.bytes_held

    def forget_access(self) -> None:
        self._access.clear()

    def forget_file(self, bucket: str, key: str) -> None:
        """An object's bytes were deleted: never serve them from the cache again."""
        self._cache.drop_where(lambda k: k[1:3] == (bucket, key))
        self._ranged.forget(bucket, key)
        if self.front_files is not None:
            self.front_files.forget(bucket, key)
        for item in [i for i in self._sizes if i[:2] == (bucket, key)]:
            self._sizes.pop(item, None)

    def _file(self, grant: presign.Grant) -> bytes | StoredObject:
        """The file's bytes (cached), or for a file above `http_whole_file_bytes` its
        verified version, to be read by range (delivery/ranged_files.py)."""
        cache_key = ("http", grant.bucket, grant.key, grant.version)
        data = self._cache.get(cache_key)
        if data is None:
            obj = self._objects.head_object(grant.bucket, grant.key, grant.version)
            if obj.size > self._whole_file_bytes:
                return self._ranged.verified(obj)
            _, data = self._objects.get_object(grant.bucket, grant.key, grant.version)
            self._cache.put(cache_key, data)
        return data


class PolicyRefusal(Exception):
    """The download policy refused a request (delivery/policy.py): answered 429/503."""

    def __init__(self, decision: Decision) -> None:
        super().__init__(decision.message)
        self.decision = decision


def _text(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(f"{code}: {message}\n", status, headers=headers, media_type="text/plain")
