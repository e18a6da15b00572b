"""The dashboard's defences over plain HTTP against a real server: sign-in with IAM keys
(long-term and STS), the signed session cookie, CSRF tokens, IAM authorization of every
page and action with audit entries, and escaping of hostile text. Threat ids from
shared/design/threat-model.md: O1 (unauthorized job operator)."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from pathlib import Path
from typing import Any

import boto3
import botocore.config
from botocore import UNSIGNED
from sqlalchemy import select

from overair.server.dashboard.routes import SESSION_KEY_FILE
from overair.server.dashboard.session import COOKIE_NAME, SessionCodec, load_session_key
from overair.server.sealing import Sealer
from overair.server.storage.schema import AuditEntry, Job
from tests.dashboard.conftest import Key, admin_key, make_user, policy, web
from tests.pki_helpers import make_ca, make_signer
from tests.server_harness import RunningServer

READ_ROLLOUTS = {"Effect": "Allow", "Resource": "*",
                 "Action": ["iot:ListJobs", "iot:DescribeJob", "iot:ListJobExecutionsForJob",
                            "iot:ListThings"]}
HOSTILE = '<img src=x onerror="document.title=\'pwned\'">'
SCRIPT = "<script>document.title='pwned'</script>"


def _job(srv: RunningServer, job_id: str, things: list[str], description: str = "a rollout") -> None:
    iot = srv.client("iot")
    arns = []
    for thing in things:
        iot.create_thing(thingName=thing)
        arns.append(iot.describe_thing(thingName=thing)["thingArn"])
    iot.create_job(jobId=job_id, targets=arns, document=json.dumps({"operation": "noop"}),
                   description=description)


def _job_status(srv: RunningServer, job_id: str) -> str:
    with srv.server.db.reading() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job.status


def _audit(srv: RunningServer, principal: str, action: str) -> list[str]:
    with srv.server.db.reading() as s:
        return list(s.scalars(select(AuditEntry.decision).where(AuditEntry.principal == principal,
                                                                 AuditEntry.action == action)))


def _codec(srv: RunningServer) -> SessionCodec:
    paths = srv.settings.paths
    return SessionCodec(load_session_key(paths.root / SESSION_KEY_FILE, Sealer.load(paths.master_key)))


def test_sign_in_with_an_access_key_sets_a_strict_http_only_session_cookie(srv: RunningServer) -> None:
    browser = web(srv)
    assert browser.get("/dashboard/fleet").status == 303  # not signed in: to the sign-in page
    reply = browser.sign_in(admin_key(srv))
    assert reply.status == 303
    assert reply.headers["location"] == "/dashboard/fleet"
    cookie = next(line for line in reply.set_cookies if line.startswith(COOKIE_NAME + "="))
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite", "path", "max-age"} <= attributes
    assert "samesite=strict" in cookie.lower()
    page = browser.get("/dashboard/fleet")
    assert page.status == 200
    assert "Fleet" in page.body
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp


def test_o1_wrong_secret_unknown_key_and_stray_token_are_refused_and_audited(srv: RunningServer) -> None:
    admin = admin_key(srv)
    for key in (Key(admin.access_key_id, admin.secret + "x"), Key("AKIANOSUCHKEY0000000", admin.secret),
                Key(admin.access_key_id, admin.secret, session_token="not-a-session")):
        browser = web(srv)
        reply = browser.sign_in(key)
        assert reply.status == 403
        assert "The access key, secret or session token is not valid" in reply.body
        assert COOKIE_NAME not in browser.cookies
        assert browser.get("/dashboard/fleet").status == 303
    assert _audit(srv, admin.access_key_id, "signin:ConsoleLogin").count("Refused") == 2


def test_o1_forged_altered_and_expired_session_cookies_are_refused(srv: RunningServer) -> None:
    admin = admin_key(srv)
    browser = web(srv)
    browser.sign_in(admin)
    good = browser.cookies[COOKIE_NAME]
    payload, mac = good.split(".")
    other_key = SessionCodec(b"k" * 32).issue(admin.access_key_id, time.time())[0]
    expired = _codec(srv).issue(admin.access_key_id, time.time() - 7200)[0]
    flipped = payload[:-1] + ("A" if payload[-1] != "A" else "B")
    for forged in (f"{flipped}.{mac}", other_key, expired, "garbage", f"{payload}.{mac[:-2]}"):
        intruder = web(srv)
        intruder.cookies[COOKIE_NAME] = forged
        reply = intruder.get("/dashboard/rollouts")
        assert reply.status == 303, forged
        assert reply.headers["location"].startswith("/dashboard/signin")
        assert intruder.post("/dashboard/signout", {"csrf": "x"}).status == 403
    # The same server key, the present time: accepted (so the refusals above are the forgery's).
    honest = web(srv)
    honest.cookies[COOKIE_NAME] = _codec(srv).issue(admin.access_key_id, time.time())[0]
    assert honest.get("/dashboard/rollouts").status == 200


def test_o1_post_without_or_with_another_sessions_csrf_token_is_refused(srv: RunningServer) -> None:
    _job(srv, "csrf-job", ["csrf-thing"])
    admin = admin_key(srv)
    browser, other = web(srv), web(srv)
    browser.sign_in(admin)
    other.sign_in(admin)
    foreign = other.csrf("/dashboard/rollouts/csrf-job")
    for form in ({}, {"csrf": ""}, {"csrf": foreign}, {"csrf": foreign[:-1]}):
        reply = browser.post("/dashboard/rollouts/csrf-job/cancel", form)
        assert reply.status == 403
        assert "CSRF token" in reply.body
        assert _job_status(srv, "csrf-job") == "IN_PROGRESS"
    reply = browser.post("/dashboard/rollouts/csrf-job/cancel", {"csrf": browser.csrf("/dashboard/rollouts")})
    assert reply.status == 303
    assert _job_status(srv, "csrf-job") == "CANCELED"


def test_o1_user_without_cancel_job_cannot_cancel_and_the_refusal_is_audited(srv: RunningServer) -> None:
    _job(srv, "guarded-job", ["guarded-thing"])
    viewer = make_user(srv, "rollout-viewer", policy(READ_ROLLOUTS))
    browser = web(srv)
    assert browser.sign_in(viewer).status == 303
    page = browser.get("/dashboard/rollouts/guarded-job")
    assert page.status == 200
    fleet = browser.get("/dashboard/fleet").body  # without iot:GetThingConnectivityData
    assert "Connectivity is hidden" in fleet
    assert 'id="online"' not in fleet
    reply = browser.post("/dashboard/rollouts/guarded-job/cancel",
                         {"csrf": browser.csrf("/dashboard/rollouts/guarded-job"), "force": "on"})
    assert reply.status == 403
    assert "iot:CancelJob" in reply.body
    assert _job_status(srv, "guarded-job") == "IN_PROGRESS"
    arn = srv.client("iam").get_user(UserName="rollout-viewer")["User"]["Arn"]
    assert "ImplicitDeny" in _audit(srv, arn, "iot:CancelJob")
    # An explicit allow of exactly that job lets the same kind of user cancel it.
    job_arn = srv.client("iot").describe_job(jobId="guarded-job")["job"]["jobArn"]
    canceler = make_user(srv, "rollout-canceler", policy(
        READ_ROLLOUTS, {"Effect": "Allow", "Action": "iot:CancelJob", "Resource": job_arn}))
    allowed = web(srv)
    allowed.sign_in(canceler)
    reply = allowed.post("/dashboard/rollouts/guarded-job/cancel",
                         {"csrf": allowed.csrf("/dashboard/rollouts/guarded-job")})
    assert reply.status == 303
    assert _job_status(srv, "guarded-job") == "CANCELED"


def test_o1_every_page_is_authorized_and_a_refusal_names_the_missing_action(srv: RunningServer) -> None:
    nobody = make_user(srv, "no-permissions", policy({"Effect": "Allow", "Action": "iot:DescribeEndpoint",
                                                      "Resource": "*"}))
    browser = web(srv)
    assert browser.sign_in(nobody).status == 303
    srv.client("iot").create_thing(thingName="authz-thing")
    expected = {"/dashboard/fleet": "iot:ListThings", "/dashboard/rollouts": "iot:ListJobs",
                "/dashboard/things/authz-thing": "iot:DescribeThing",
                "/dashboard/certificates": "acm:ListCertificates",
                "/dashboard/audit": "cloudtrail:LookupEvents"}
    arn = srv.client("iam").get_user(UserName="no-permissions")["User"]["Arn"]
    for path, action in expected.items():
        reply = browser.get(path)
        assert reply.status == 403, path
        assert f'<code id="missing-action">{action}</code>' in reply.body
        assert "ImplicitDeny" in _audit(srv, arn, action)


def test_o1_a_deactivated_key_ends_its_session(srv: RunningServer) -> None:
    key = make_user(srv, "short-lived", policy(READ_ROLLOUTS))
    browser = web(srv)
    browser.sign_in(key)
    assert browser.get("/dashboard/rollouts").status == 200
    srv.client("iam").update_access_key(UserName="short-lived", AccessKeyId=key.access_key_id,
                                        Status="Inactive")
    assert browser.get("/dashboard/rollouts").status == 303


def test_sign_in_with_role_session_credentials_needs_the_session_token(srv: RunningServer) -> None:
    iam = srv.client("iam")
    account = srv.settings.account_id
    admin_arn = f"arn:{srv.settings.partition}:iam::{account}:root"
    trust = policy({"Effect": "Allow", "Principal": {"AWS": admin_arn}, "Action": "sts:AssumeRole"})
    iam.create_role(RoleName="dashboard-reader", AssumeRolePolicyDocument=trust)
    iam.put_role_policy(RoleName="dashboard-reader", PolicyName="read", PolicyDocument=policy(READ_ROLLOUTS))
    role_arn = iam.get_role(RoleName="dashboard-reader")["Role"]["Arn"]
    creds = srv.client("sts").assume_role(RoleArn=role_arn, RoleSessionName="browser")["Credentials"]
    without_token = web(srv)
    assert without_token.sign_in(Key(creds["AccessKeyId"], creds["SecretAccessKey"])).status == 403
    browser = web(srv)
    reply = browser.sign_in(Key(creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"]))
    assert reply.status == 303
    page = browser.get("/dashboard/rollouts")
    assert page.status == 200
    assert "assumed-role/dashboard-reader/browser" in page.body


def _device_jobs(srv: RunningServer, bundle: Path) -> Any:
    config = botocore.config.Config(signature_version=UNSIGNED, retries={"max_attempts": 1},
                                    client_cert=(str(bundle / "device.crt"), str(bundle / "device.key")))
    return boto3.session.Session(region_name=srv.clients.region).client(
        "iot-jobs-data", endpoint_url=f"https://localhost:{srv.settings.download_port}",
        verify=str(srv.settings.paths.fleet_ca_cert), config=config)


def test_o1_hostile_text_from_devices_operators_and_sign_in_forms_is_escaped(
        srv: RunningServer, tmp_path: Path) -> None:
    bundle = srv.provision("hostile-device", tmp_path / "hostile-device")
    iot = srv.client("iot")
    iot.create_job(jobId="hostile-job", targets=[iot.describe_thing(thingName="hostile-device")["thingArn"]],
                   document=json.dumps({"operation": "noop"}), description=SCRIPT)
    jobs = _device_jobs(srv, bundle)
    jobs.start_next_pending_job_execution(thingName="hostile-device")
    jobs.update_job_execution(thingName="hostile-device", jobId="hostile-job", status="FAILED",
                              statusDetails={"reason": HOSTILE, "detail": SCRIPT})
    # An unauthenticated visitor writes the key id field into the audit log.
    assert web(srv).sign_in(Key(SCRIPT, "x")).status == 403
    browser = web(srv)
    browser.sign_in(admin_key(srv))
    pages = ["/dashboard/rollouts", "/dashboard/rollouts/hostile-job",
             "/dashboard/rollouts/hostile-job/progress", "/dashboard/things/hostile-device",
             "/dashboard/audit"]
    bodies = {path: browser.get(path).body for path in pages}
    for path, body in bodies.items():
        assert "<script>document" not in body, path
        assert "<img src=x" not in body, path
    escaped_script = "&lt;script&gt;document.title=&#39;pwned&#39;&lt;/script&gt;"
    assert escaped_script in bodies["/dashboard/rollouts/hostile-job"]
    assert "&lt;img src=x onerror=" in bodies["/dashboard/rollouts/hostile-job/progress"]
    assert "&lt;img src=x onerror=" in bodies["/dashboard/things/hostile-device"]
    assert "&lt;script&gt;" in bodies["/dashboard/audit"]


def test_sign_in_redirects_only_to_dashboard_paths(srv: RunningServer) -> None:
    admin = admin_key(srv)
    for target, expected in (("/dashboard/audit", "/dashboard/audit"),
                             ("https://evil.example/", "/dashboard/fleet"),
                             ("//evil.example/dashboard/", "/dashboard/fleet"),
                             ("/dashboard/\\evil", "/dashboard/fleet")):
        browser = web(srv)
        reply = browser.post("/dashboard/signin", {"access_key_id": admin.access_key_id,
                                                   "secret_access_key": admin.secret, "next": target})
        assert reply.headers["location"] == expected


def test_o1_the_read_only_policy_shows_every_page_and_allows_no_action(srv: RunningServer) -> None:
    _job(srv, "read-only-job", ["read-only-thing"])
    iam = srv.client("iam")
    iam.create_user(UserName="auditor")
    iam.attach_user_policy(UserName="auditor", PolicyArn="arn:aws:iam::aws:policy/OverairReadOnly")
    created = iam.create_access_key(UserName="auditor")["AccessKey"]
    browser = web(srv)
    assert browser.sign_in(Key(created["AccessKeyId"], created["SecretAccessKey"])).status == 303
    for path in ("/dashboard/fleet", "/dashboard/rollouts", "/dashboard/rollouts/read-only-job",
                 "/dashboard/things/read-only-thing", "/dashboard/certificates", "/dashboard/audit"):
        assert browser.get(path).status == 200, path
    assert 'id="online"' in browser.get("/dashboard/fleet").body  # iot:Get* covers connectivity
    reply = browser.post("/dashboard/rollouts/read-only-job/cancel",
                         {"csrf": browser.csrf("/dashboard/rollouts/read-only-job")})
    assert reply.status == 403
    assert _job_status(srv, "read-only-job") == "IN_PROGRESS"


def test_an_action_the_api_refuses_shows_its_error(srv: RunningServer) -> None:
    browser = web(srv)
    browser.sign_in(admin_key(srv))
    reply = browser.post("/dashboard/rollouts/no-such-job/cancel",
                         {"csrf": browser.csrf("/dashboard/rollouts")})
    assert reply.status == 404
    assert "job no-such-job does not exist" in reply.body
    assert browser.get("/dashboard/rollouts/no-such-job").status == 404
    assert browser.get("/dashboard/things/no-such-thing").status == 404


def test_certificates_expiring_within_30_days_are_highlighted(srv: RunningServer) -> None:
    root = make_ca("dashboard test root")
    roots = srv.settings.paths.code_signing_root
    roots.write_bytes(roots.read_bytes() + root.cert_pem)  # the operator trusts its root
    soon = make_signer(root, "signer expiring soon",
                       not_after=dt.datetime.now(dt.UTC) + dt.timedelta(days=10))
    acm = srv.client("acm")
    acm.import_certificate(Certificate=soon.cert_pem, PrivateKey=soon.key_pem)
    browser = web(srv)
    browser.sign_in(admin_key(srv))
    body = browser.get("/dashboard/certificates").body
    rows = re.findall(r'<tr class="([^"]*)">\s*<td>([^<]*)', body)
    assert ("expiring", "CN=signer expiring soon") in rows
    assert any(cls == "" and "DEVELOPMENT ONLY" in subject for cls, subject in rows)
