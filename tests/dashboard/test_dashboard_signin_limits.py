"""Sign-in from a browser of another site, and a flood of failed sign-ins: refused, and
the audit log grows by a bounded number of entries (its own server: the budget is per
source address, and every test here comes from 127.0.0.1). Threat id O1."""

from __future__ import annotations

from sqlalchemy import func, select

from overair.server.dashboard.session import COOKIE_NAME
from overair.server.dashboard.throttle import MAX_FAILURES
from overair.server.storage.schema import AuditEntry
from tests.dashboard.conftest import Key, admin_key, web
from tests.server_harness import RunningServer


def _sign_in_entries(srv: RunningServer) -> int:
    with srv.server.db.reading() as s:
        return int(s.scalar(select(func.count()).select_from(AuditEntry)
                            .where(AuditEntry.action == "signin:ConsoleLogin")) or 0)


def test_o1_a_sign_in_form_sent_from_another_site_is_refused(srv: RunningServer) -> None:
    admin = admin_key(srv)
    form = {"access_key_id": admin.access_key_id, "secret_access_key": admin.secret}
    for origin in ("https://evil.example", "null"):
        browser = web(srv)
        reply = browser.request("POST", "/dashboard/signin", form, headers={"Origin": origin})
        assert reply.status == 403
        assert COOKIE_NAME not in browser.cookies
    browser = web(srv)
    reply = browser.request("POST", "/dashboard/signin", form,
                            headers={"Origin": f"http://{browser.host}:{browser.port}"})
    assert reply.status == 303
    assert COOKIE_NAME in browser.cookies


def test_o1_failed_sign_ins_are_bounded_per_address_and_in_the_audit_log(srv: RunningServer) -> None:
    admin = admin_key(srv)
    before = _sign_in_entries(srv)
    for _ in range(MAX_FAILURES * 3):
        reply = web(srv).sign_in(Key(admin.access_key_id, "guess"))
        assert reply.status in (403, 429)
    assert _sign_in_entries(srv) - before == MAX_FAILURES
    # Over the budget even the right secret is not read until the window ends.
    browser = web(srv)
    assert browser.sign_in(admin).status == 429
    assert COOKIE_NAME not in browser.cookies
