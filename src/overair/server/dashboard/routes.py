"""The web dashboard: server-rendered pages under /dashboard/ on the API listener.

Who: a browser signs in with an IAM access key and secret (or a role session's
temporary key and token), checked against the same credential store as SigV4
(`signin.py`); the server then holds it by a signed, HttpOnly, SameSite=Strict cookie
(`session.py`), re-checking the key on every request.

What they may do: every page and the cancel and resume actions name the API operation they stand
for, and are decided by the one `Authorizer` with the checks `iam/actions.py` derives
for that operation, so an IAM policy means the same in the browser as for boto3, and
each decision is in the audit log like an API call's. A refusal is a 403 page naming
the missing action. The audit log has no AWS API of its own here; reading it is
`cloudtrail:LookupEvents`, AWS's action for reading the API activity log.

Safety: every POST carries the session's CSRF token; pages are Jinja2 templates with
autoescaping on (values from devices and operators are text, never markup), served
with a Content-Security-Policy that allows only this server's own script and style
(vendored in static/; no CDN).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, quote, urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from overair.core.asciinum import parse_uint
from overair.core.errors import UnavailableError
from overair.server.api.contract import ApiError, ApiRequest, Caller, CredentialLookup, OperationTable
from overair.server.api.faults import to_api_error
from overair.server.api.request_context import TrustedProxies, request_origin
from overair.server.audit.log import AuditLog
from overair.server.clock import Clock
from overair.server.dashboard import queries as q
from overair.server.dashboard.session import (
    COOKIE_NAME,
    SESSION_SECONDS,
    BadSession,
    Session,
    SessionCodec,
    load_session_key,
)
from overair.server.dashboard.signin import SIGN_IN_REFUSED, SignInRefused, sign_in, still_valid
from overair.server.dashboard.throttle import MAX_FAILURES, WINDOW_SECONDS, SignInThrottle
from overair.server.iam import actions
from overair.server.iam.actions import Check
from overair.server.iam.arns import Arns
from overair.server.iam.authorizer import Authorizer, Principal
from overair.server.iam.identity import IdentityStore
from overair.server.ota.manager import job_id_for
from overair.server.registry.service import Registry
from overair.server.sealing import Sealer
from overair.server.settings import Settings
from overair.server.storage.db import Database

log = logging.getLogger("overair.dashboard")

PREFIX = "/dashboard"
SESSION_KEY_FILE = "dashboard-session.key"  # sealed under the master key (session.py)
_HERE = Path(__file__).parent
MAX_FORM_BYTES = 16 * 1024  # the largest form (sign-in with a session token) is ~1.5 KiB
# CloudTrail records a console sign-in as ConsoleLogin from signin.amazonaws.com; the
# dashboard's sign-ins are audited under that name.
SIGN_IN_ACTION = "signin:ConsoleLogin"
CROSS_ORIGIN = "This form was sent from another site: open the dashboard and try again."
AUDIT_READ = Check("cloudtrail:LookupEvents", "*")
CONNECTIVITY_ALL = Check("iot:GetThingConnectivityData", "*")
# What a retry keeps of the OTA update it retries (the rest: a new id, the failed devices).
RETRY_KEEPS = ("description", "files", "protocols", "roleArn", "additionalParameters",
               "awsJobPresignedUrlConfig", "awsJobExecutionsRolloutConfig", "awsJobAbortConfig",
               "awsJobTimeoutConfig")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self'; connect-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}


class Refused(Exception):
    """The signed-in principal may not do what the page or action needs."""

    def __init__(self, check: Check, message: str) -> None:
        super().__init__(message)
        self.check = check
        self.message = message


class _FormTooLarge(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Viewer:
    caller: Caller
    session: Session
    csrf: str


def _local_next(target: str) -> str:
    """Where to go after signing in: a dashboard path only (no open redirect)."""
    if target.startswith(PREFIX + "/") and not target.startswith("//") and "\\" not in target:
        return target
    return PREFIX + "/fleet"


class Dashboard:
    def __init__(self, *, codec: SessionCodec, credentials: CredentialLookup, queries: q.DashboardQueries,
                 authorizer: Authorizer, arns: Arns, table: OperationTable, audit: AuditLog, clock: Clock,
                 trusted_proxies: tuple[str, ...], thing_arn: Callable[[str], str],
                 connections: Callable[[], int | None]) -> None:
        self.codec = codec
        self.credentials = credentials
        self.queries = queries
        self.authorizer = authorizer
        self.arns = arns
        self.table = table
        self.audit = audit
        self.clock = clock
        self.proxies = TrustedProxies(trusted_proxies)
        self.thing_arn = thing_arn
        self.connections = connections
        self.throttle = SignInThrottle()
        self.templates = Environment(loader=FileSystemLoader(_HERE / "templates"),
                                     autoescape=select_autoescape(default=True, default_for_string=True))
        self.templates.filters["iso"] = q.iso
        self.templates.globals["prefix"] = PREFIX
        self.templates.globals["qs"] = lambda **kw: urlencode({k: v for k, v in kw.items() if v})

    def routes(self) -> list[BaseRoute]:
        return [Mount(PREFIX, routes=[
            Route("/", self.index),
            Route("/signin", self.signin_page, methods=["GET"]),
            Route("/signin", self.signin, methods=["POST"]),
            Route("/signout", self.signout, methods=["POST"]),
            Route("/fleet", self.fleet),
            Route("/things/{name:path}", self.device),
            Route("/rollouts", self.rollouts),
            Route("/rollouts/{job_id}", self.rollout),
            Route("/rollouts/{job_id}/progress", self.progress),
            Route("/rollouts/{job_id}/cancel", self.cancel, methods=["POST"]),
            Route("/rollouts/{job_id}/retry-failed", self.retry_failed, methods=["POST"]),
            Route("/rollouts/{job_id}/resume", self.resume, methods=["POST"]),
            Route("/certificates", self.certificates),
            Route("/audit", self.audit_page),
            Mount("/static", StaticFiles(directory=_HERE / "static"), name="static"),
        ])]

    # Rendering -----------------------------------------------------------------------
    def _render(self, template: str, code: int = 200, viewer: Viewer | None = None,
                **context: Any) -> HTMLResponse:
        body = self.templates.get_template(template).render(viewer=viewer, **context)
        return HTMLResponse(body, status_code=code, headers=SECURITY_HEADERS)

    def _refused(self, viewer: Viewer, refused: Refused) -> HTMLResponse:
        return self._render("refused.html", 403, viewer, check=refused.check, message=refused.message)

    # Who is asking -------------------------------------------------------------------
    def _origin_caller(self, request: Request, access_key_id: str, principal_arn: str, name: str,
                       kind: str) -> Caller:
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.scope["headers"]]
        origin = request_origin(request.client.host if request.client else "", request.url.scheme == "https",
                                headers, self.proxies)
        return Caller(access_key_id=access_key_id, principal_arn=principal_arn, principal_name=name,
                      source_ip=origin.client_ip, principal_kind=kind, secure_transport=origin.secure,
                      proxy=origin.proxy)

    def _viewer(self, request: Request) -> Viewer | None:
        """The signed-in principal, or None (no, forged, expired cookie, or a key that the
        API would no longer accept). Runs in a worker thread (credential lookup)."""
        cookie = request.cookies.get(COOKIE_NAME)
        if not cookie:
            return None
        now = self.clock()
        try:
            session = self.codec.open(cookie, now)
            credential = self.credentials(session.access_key_id)
            if credential is None:
                return None
            still_valid(credential, now)
        except (BadSession, SignInRefused):
            return None
        caller = self._origin_caller(request, credential.access_key_id, credential.principal_arn,
                                     credential.principal_name, credential.principal_kind)
        return Viewer(caller, session, self.codec.csrf_token(session))

    def _permit(self, viewer: Viewer, service: str, operation: str, params: Mapping[str, Any]) -> None:
        """Authorize as the API would authorize `operation` with `params`."""
        self._require(viewer, actions.needs(service, operation, params, self.arns, viewer.caller).checks,
                      service)

    def _may(self, viewer: Viewer, service: str, operation: str, params: Mapping[str, Any]) -> bool:
        """For the optional parts of a page: would the API allow `operation`? (Decided and
        audited as a call would be; a refusal only leaves the part out.)"""
        principal = Principal.of(viewer.caller)
        return all(self.authorizer.decide(principal, check).allowed
                   for check in actions.needs(service, operation, params, self.arns, viewer.caller).checks)

    def _require(self, viewer: Viewer, checks: tuple[Check, ...] | list[Check], service: str) -> None:
        principal = Principal.of(viewer.caller)
        for check in checks:
            try:
                self.authorizer.require(principal, check, service)
            except ApiError as exc:
                if exc.status == 403:
                    raise Refused(check, exc.message) from exc
                raise

    async def _page(self, request: Request, work: Callable[[Viewer], Response]) -> Response:
        """A GET page: signed in (else to the sign-in page), then `work` in a worker thread."""
        def run(viewer: Viewer | None) -> Response:
            if viewer is None:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(f"{PREFIX}/signin?{urlencode({'next': target})}", 303,
                                        headers=SECURITY_HEADERS)
            return work(viewer)
        return await run_in_threadpool(self._guarded, request, run)

    def _guarded(self, request: Request, run: Callable[[Viewer | None], Response]) -> Response:
        """Who is asking, then `run`; whatever escapes is answered as the API would
        (api/faults.py: 403 for a refusal, 4xx for the caller's mistakes, 503 for a
        database that is down), never as an unhandled exception."""
        viewer: Viewer | None = None
        try:
            viewer = self._viewer(request)
            return run(viewer)
        except Refused as refused:
            assert viewer is not None  # refusals come from `_permit`, after sign-in
            return self._refused(viewer, refused)
        except Exception as exc:
            error = to_api_error(exc, "rest-json", "InvalidRequestException")
            if error is None:
                log.exception("dashboard: %s %s failed", request.method, request.url.path)
                return self._render("error.html", 500, viewer,
                                    message="An internal error occurred; the server's log has the details.")
            return self._render("error.html", error.status, viewer, message=error.message)

    async def _form(self, request: Request) -> dict[str, str]:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                raise _FormTooLarge
        try:
            text = bytes(body).decode("utf-8")
        except UnicodeDecodeError:
            return {}
        return dict(parse_qsl(text, keep_blank_values=True, max_num_fields=20))

    async def _action(self, request: Request, work: Callable[[Viewer, dict[str, str]], Response]) -> Response:
        """A POST: signed in and carrying this session's CSRF token, else refused."""
        if not _same_origin(request):
            return self._render("error.html", 403, None, message=CROSS_ORIGIN)
        try:
            form = await self._form(request)
        except _FormTooLarge:
            return self._render("error.html", 413, None, message="The form is too large.")
        except ValueError:  # more fields than any form of ours has
            return self._render("error.html", 400, None, message="The form is malformed.")

        def run(viewer: Viewer | None) -> Response:
            if viewer is None:
                return self._render("error.html", 403, None,
                                    message="You are not signed in (or your session has expired).")
            if not self.codec.check_csrf(viewer.session, form.get("csrf")):
                log.warning("dashboard: refused a POST to %s by %s without a valid CSRF token",
                            request.url.path, viewer.caller.principal_arn)
                return self._render("error.html", 403, viewer,
                                    message="The form's CSRF token is missing or wrong: reload the page.")
            return work(viewer, form)
        return await run_in_threadpool(self._guarded, request, run)

    # Sign-in -------------------------------------------------------------------------
    async def index(self, request: Request) -> Response:
        return RedirectResponse(f"{PREFIX}/fleet", 303, headers=SECURITY_HEADERS)

    async def signin_page(self, request: Request) -> Response:
        return self._render("signin.html", next=_local_next(request.query_params.get("next", "")))

    async def signin(self, request: Request) -> Response:
        if not _same_origin(request):
            return self._render("signin.html", 403, error=CROSS_ORIGIN, next=PREFIX + "/fleet")
        try:
            form = await self._form(request)
        except (_FormTooLarge, ValueError):
            return self._render("signin.html", 400, error="The form is malformed.", next=PREFIX + "/fleet")
        return await run_in_threadpool(self._guarded, request, lambda _viewer: self._signin(request, form))

    def _signin(self, request: Request, form: dict[str, str]) -> Response:
        key_id = form.get("access_key_id", "").strip()[:128]
        target = _local_next(form.get("next", ""))
        caller = self._origin_caller(request, key_id, "", "", "user")
        now = self.clock()
        if not self.throttle.allowed(caller.source_ip, now):
            return self._render("signin.html", 429, next=target,
                                error="Too many failed sign-ins from your address: wait a minute.")
        try:
            credential = sign_in(self.credentials, key_id, form.get("secret_access_key", ""),
                                 form.get("session_token", ""), now)
        except SignInRefused as refused:
            self._audit_sign_in(key_id or "-", key_id, "Refused", caller.audit_source, refused.reason)
            if self.throttle.failed(caller.source_ip, now):
                log.warning("dashboard: %s failed to sign in %d times; its sign-ins are refused unread for "
                            "%.0f s", caller.audit_source, MAX_FAILURES, WINDOW_SECONDS)
            return self._render("signin.html", 403, error=SIGN_IN_REFUSED, next=target)
        self._audit_sign_in(credential.principal_arn, key_id, "Allow", caller.audit_source, None)
        cookie, _ = self.codec.issue(credential.access_key_id, now, credential.expires_at)
        response = RedirectResponse(target, 303, headers=SECURITY_HEADERS)
        expires = credential.expires_at
        max_age = int(min(SESSION_SECONDS, expires - now)) if expires is not None else SESSION_SECONDS
        response.set_cookie(COOKIE_NAME, cookie, max_age=max_age, path=PREFIX + "/", httponly=True,
                            secure=request.url.scheme == "https", samesite="strict")
        return response

    def _audit_sign_in(self, principal: str, key_id: str, decision: str, source: str,
                       reason: str | None) -> None:
        try:
            self.audit.record(principal=principal, action=SIGN_IN_ACTION, resource=f"access-key/{key_id}",
                              decision=decision, source=source,
                              detail={"reason": reason} if reason else None)
        except UnavailableError as exc:
            log.error("could not audit a dashboard sign-in: %s", exc.message)

    async def signout(self, request: Request) -> Response:
        def done(_viewer: Viewer, _form: dict[str, str]) -> Response:
            response = RedirectResponse(f"{PREFIX}/signin", 303, headers=SECURITY_HEADERS)
            response.delete_cookie(COOKIE_NAME, path=PREFIX + "/", httponly=True,
                                   secure=request.url.scheme == "https", samesite="strict")
            return response
        return await self._action(request, done)

    # Pages ---------------------------------------------------------------------------
    async def fleet(self, request: Request) -> Response:
        after = request.query_params.get("after", "")[:128]
        name_prefix = request.query_params.get("prefix", "")[:128]

        def work(viewer: Viewer) -> Response:
            self._permit(viewer, "iot", "ListThings", {})
            # Connectivity of the whole fleet: GetThingConnectivityData on every thing.
            presence = self.authorizer.decide(Principal.of(viewer.caller), CONNECTIVITY_ALL).allowed
            return self._render("fleet.html", viewer=viewer, summary=self.queries.fleet_summary(),
                                presence_allowed=presence, presence_action=CONNECTIVITY_ALL.action,
                                page=self.queries.things(after, name_prefix), after=after,
                                name_prefix=name_prefix,
                                connections=self.connections())
        return await self._page(request, work)

    async def device(self, request: Request) -> Response:
        name = request.path_params["name"][:128]

        def work(viewer: Viewer) -> Response:
            self._permit(viewer, "iot", "DescribeThing", {"thingName": name})
            self._permit(viewer, "iot", "ListJobExecutionsForThing", {"thingName": name})
            device = self.queries.device(name, self.thing_arn(name))
            if device is None:
                return self._render("error.html", 404, viewer, message=f"There is no thing named {name}.")
            allowed = {
                "audit": self.authorizer.decide(Principal.of(viewer.caller), AUDIT_READ).allowed,
                "presence": self._may(viewer, "iot", "GetThingConnectivityData", {"thingName": name}),
                "shadow": self._may(viewer, "iot", "GetThingShadow", {"thingName": name}),
            }
            return self._render("device.html", viewer=viewer, device=device, allowed=allowed,
                                audit_action=AUDIT_READ.action)
        return await self._page(request, work)

    async def rollouts(self, request: Request) -> Response:
        offset = min(parse_uint(request.query_params.get("offset", "0"), max_digits=6) or 0, 10**6)

        def work(viewer: Viewer) -> Response:
            self._permit(viewer, "iot", "ListJobs", {})
            jobs, more = self.queries.jobs(offset)
            return self._render("rollouts.html", viewer=viewer, jobs=jobs, offset=offset, more=more,
                                page_size=q.PAGE_SIZE)
        return await self._page(request, work)

    def _rollout_context(self, viewer: Viewer, job_id: str, request: Request) -> dict[str, Any] | None:
        self._permit(viewer, "iot", "DescribeJob", {"jobId": job_id})
        self._permit(viewer, "iot", "ListJobExecutionsForJob", {"jobId": job_id})
        job = self.queries.job(job_id)
        if job is None:
            return None
        status = request.query_params.get("status", "")
        status = status if status in q.STATES else ""
        after = request.query_params.get("after", "")[:128]
        return {"job": job, "executions": self.queries.executions(job_id, status, after), "status": status,
                "after": after, "states": q.STATES}

    async def rollout(self, request: Request) -> Response:
        job_id = request.path_params["job_id"][:64]

        def work(viewer: Viewer) -> Response:
            context = self._rollout_context(viewer, job_id, request)
            if context is None:
                return self._render("error.html", 404, viewer, message=f"There is no job {job_id}.")
            params = request.query_params
            retry = params.get("retry", "")[:128]
            return self._render("rollout.html", viewer=viewer, notice=params.get("notice", ""),
                                retry=retry, retry_job=job_id_for(retry) if retry else "",
                                devices=params.get("devices", "")[:8], health=self._health(viewer, job_id),
                                **context)
        return await self._page(request, work)

    async def progress(self, request: Request) -> Response:
        """The live part of a rollout page, fetched again by static/dashboard.js."""
        job_id = request.path_params["job_id"][:64]

        def work(viewer: Viewer) -> Response:
            context = self._rollout_context(viewer, job_id, request)
            if context is None:
                return self._render("error.html", 404, viewer, message=f"There is no job {job_id}.")
            return self._render("progress.html", viewer=viewer, **context)
        return await self._page(request, work)

    async def cancel(self, request: Request) -> Response:
        job_id = request.path_params["job_id"][:64]

        def work(viewer: Viewer, form: dict[str, str]) -> Response:
            params: dict[str, Any] = {"jobId": job_id, "force": form.get("force") == "on",
                                      "comment": "canceled from the dashboard"}
            self._permit(viewer, "iot", "CancelJob", params)
            handler = self.table.get("iot", "CancelJob")
            if handler is None:  # registered by jobs/api.py at start
                raise UnavailableError("CancelJob is not available")
            handler(ApiRequest("iot", "CancelJob", params, viewer.caller))
            return RedirectResponse(f"{PREFIX}/rollouts/{quote(job_id)}?notice=canceled", 303,
                                    headers=SECURITY_HEADERS)
        return await self._action(request, work)

    def _health(self, viewer: Viewer, job_id: str) -> dict[str, Any] | None:
        """A health-gated rollout's decision (overair's DescribeRolloutHealth), for a viewer
        allowed it; None for a job without gates."""
        params = {"JobId": job_id}
        handler = self.table.get("overair", "DescribeRolloutHealth")
        if handler is None or not self._may(viewer, "overair", "DescribeRolloutHealth", params):
            return None
        health = handler(ApiRequest("overair", "DescribeRolloutHealth", params, viewer.caller))
        return None if health["Status"] == "NONE" else health

    async def resume(self, request: Request) -> Response:
        """overair's ResumeRollout: after a health gate paused the rollout, or to approve
        its next cohort (docs/health-gates.md), authorized as that call."""
        job_id = request.path_params["job_id"][:64]

        def work(viewer: Viewer, _form: dict[str, str]) -> Response:
            params = {"JobId": job_id}
            self._permit(viewer, "overair", "ResumeRollout", params)
            handler = self.table.get("overair", "ResumeRollout")
            if handler is None:  # registered by health/api.py at start
                raise UnavailableError("ResumeRollout is not available")
            handler(ApiRequest("overair", "ResumeRollout", params, viewer.caller))
            return RedirectResponse(f"{PREFIX}/rollouts/{quote(job_id)}?notice=resumed", 303,
                                    headers=SECURITY_HEADERS)
        return await self._action(request, work)

    async def retry_failed(self, request: Request) -> Response:
        """A new OTA update of the same files, role and job options to the devices whose
        execution failed (as `overair ota retry-failed`; AWS has no retry operation, a
        retry is a new CreateOTAUpdate), authorized and created exactly as that call."""
        job_id = request.path_params["job_id"][:64]

        def work(viewer: Viewer, _form: dict[str, str]) -> Response:
            job = self.queries.job(job_id)
            stored = self.queries.ota_request(job.ota_update_id) if job and job.ota_update_id else None
            if job is None or stored is None:
                return self._render("error.html", 404, viewer,
                                    message=f"{job_id} is not the job of an OTA update: nothing to retry.")
            self._permit(viewer, "iot", "GetOTAUpdate", {"otaUpdateId": job.ota_update_id})
            failed = self.queries.failed_things(job_id)
            if not failed:
                return self._render("error.html", 409, viewer, message=f"No device failed {job_id}.")
            params = {key: stored[key] for key in RETRY_KEEPS if key in stored}
            params |= {"otaUpdateId": self.queries.free_retry_id(job.ota_update_id),
                       "targets": [self.thing_arn(thing) for thing in failed], "targetSelection": "SNAPSHOT"}
            self._permit(viewer, "iot", "CreateOTAUpdate", params)
            handler = self.table.get("iot", "CreateOTAUpdate")
            if handler is None:  # registered by ota/api.py at start
                raise UnavailableError("CreateOTAUpdate is not available")
            handler(ApiRequest("iot", "CreateOTAUpdate", params, viewer.caller))
            query = urlencode({"notice": "retried", "retry": params["otaUpdateId"], "devices": len(failed)})
            return RedirectResponse(f"{PREFIX}/rollouts/{quote(job_id)}?{query}", 303,
                                    headers=SECURITY_HEADERS)
        return await self._action(request, work)

    async def certificates(self, request: Request) -> Response:
        def work(viewer: Viewer) -> Response:
            self._permit(viewer, "acm", "ListCertificates", {})
            return self._render("certificates.html", viewer=viewer,
                                certificates=self.queries.certificates(self.clock()),
                                warning_days=q.EXPIRY_WARNING_DAYS)
        return await self._page(request, work)

    async def audit_page(self, request: Request) -> Response:
        params = request.query_params
        wanted = q.AuditFilter(
            principal=params.get("principal", "")[:256] or None,
            action=params.get("action", "")[:128] or None,
            decision=params.get("decision", "")[:16] or None,
            since=_day_or_time(params.get("since", "")), until=_day_or_time(params.get("until", "")))
        before = parse_uint(params.get("before", ""), max_digits=19)

        def work(viewer: Viewer) -> Response:
            self._require(viewer, [AUDIT_READ], "cloudtrail")
            return self._render("audit.html", viewer=viewer, page=self.queries.audit(wanted, before),
                                form={k: params.get(k, "") for k in ("principal", "action", "decision",
                                                                     "since", "until")})
        return await self._page(request, work)


def _same_origin(request: Request) -> bool:
    """A browser's POST names the page it came from in Origin: refuse forms sent from
    other sites (login CSRF; the CSRF token already covers the signed-in actions).
    Clients that send no Origin are judged by the CSRF token alone."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    # Behind a proxy that rewrites Host, X-Forwarded-Host names the browser's host (a
    # page of another site cannot add that header to a form it sends).
    hosts = {request.headers.get("host", ""), request.headers.get("x-forwarded-host", "")} - {""}
    return origin != "null" and origin.partition("://")[2] in hosts


def _day_or_time(text: str) -> float | None:
    """`2026-12-05` or `2026-12-05T21:00` (UTC), as the audit page's filter fields send."""
    text = text.strip()[:32]
    if not text:
        return None
    for layout in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d"):
        try:
            return dt.datetime.strptime(text, layout).replace(tzinfo=dt.UTC).timestamp()
        except ValueError:
            continue
    return None


class _ServerParts(Protocol):
    """What the dashboard takes from the composition root (server/app.py `Server`)."""

    settings: Settings
    sealer: Sealer
    db: Database
    identity: IdentityStore
    authorizer: Authorizer
    arns: Arns
    table: OperationTable
    audit: AuditLog
    clock: Clock
    registry: Registry


def build_dashboard(server: _ServerParts, connections: Callable[[], int | None]) -> list[BaseRoute]:
    key = load_session_key(server.settings.paths.root / SESSION_KEY_FILE, server.sealer)
    dashboard = Dashboard(codec=SessionCodec(key), credentials=server.identity.lookup,
                          queries=q.DashboardQueries(server.db), authorizer=server.authorizer,
                          arns=server.arns, table=server.table, audit=server.audit, clock=server.clock,
                          trusted_proxies=server.settings.trusted_proxies,
                          thing_arn=server.registry.thing_arn, connections=connections)
    return dashboard.routes()
