"""The dashboard in a real browser: Playwright driving Debian's chromium against a real
server, with devices that report through the Jobs HTTPS API. Sign-in, the fleet,
device, rollout (live progress without reloading), certificate and audit pages, cancel,
a refused action, hostile text that must stay text (O1), and sign-out."""

from __future__ import annotations

import json
import re
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.dashboard.conftest import Key, admin_key, chromium_path, make_user, policy
from tests.dashboard.test_dashboard_security import HOSTILE, READ_ROLLOUTS, SCRIPT, _device_jobs
from tests.e2e.ota_helpers import wait_for
from tests.mqtt_peer import MqttPeer
from tests.server_harness import RunningServer

SIGN_IN_URL = re.compile(r".*/dashboard/signin.*")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        # --no-sandbox: CI and the dev machines run as root, where chromium's sandbox cannot start.
        launched = playwright.chromium.launch(executable_path=chromium_path(), headless=True,
                                              args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser, srv: RunningServer) -> Iterator[Page]:
    context = browser.new_context(base_url=srv.endpoint)
    opened = context.new_page()
    foreign: list[str] = []
    opened.on("request", lambda request: None if request.url.startswith(srv.endpoint)
              else foreign.append(request.url))
    try:
        yield opened
    finally:
        context.close()
    assert foreign == [], "the dashboard fetched from another origin (no CDN allowed)"


def _sign_in(page: Page, key: Key) -> None:
    page.goto("/dashboard/")
    expect(page).to_have_url(SIGN_IN_URL)
    page.fill("#access_key_id", key.access_key_id)
    page.fill("#secret_access_key", key.secret)
    page.click("#signin")


def _fleet(srv: RunningServer, tmp_path: Path, job_id: str, names: list[str],
           description: str = "browser rollout") -> list[Any]:
    """Things with real device certificates and a job for them; their Jobs HTTPS clients."""
    iot = srv.client("iot")
    clients = [_device_jobs(srv, srv.provision(name, tmp_path / name)) for name in names]
    iot.create_job(jobId=job_id, targets=[iot.describe_thing(thingName=n)["thingArn"] for n in names],
                   document=json.dumps({"operation": "noop"}), description=description)
    return clients


def test_operator_signs_in_watches_a_rollout_live_and_cancels_it(
        srv: RunningServer, page: Page, tmp_path: Path) -> None:
    names = ["web-a", "web-b", "web-c"]
    devices = _fleet(srv, tmp_path, "web-job", names)
    devices[0].start_next_pending_job_execution(thingName="web-a")
    devices[0].update_job_execution(thingName="web-a", jobId="web-job", status="FAILED",
                                    statusDetails={"reason": "0x2000000a: signature check failed"})
    devices[1].start_next_pending_job_execution(thingName="web-b", statusDetails={"progress": "10%"})

    _sign_in(page, admin_key(srv))
    expect(page.locator("h1")).to_have_text("Fleet")
    assert int(page.inner_text("#thing-count")) >= 3
    expect(page.locator("#things")).to_contain_text("web-a")

    page.click("text=Rollouts")
    page.click("#jobs >> text=web-job")
    expect(page.locator("#job-status")).to_have_text("IN_PROGRESS")
    expect(page.locator("[data-state=FAILED]")).to_have_text("1")
    expect(page.locator("#executions")).to_contain_text("0x2000000a: signature check failed")
    expect(page.locator("[data-state=IN_PROGRESS]")).to_have_text("1")

    # A device finishes while the page is open: the progress block updates by itself.
    devices[1].update_job_execution(thingName="web-b", jobId="web-job", status="SUCCEEDED")
    expect(page.locator("[data-state=SUCCEEDED]")).to_have_text("1", timeout=15_000)
    assert page.get_attribute("#progress", "data-refreshed") is not None

    page.click("#cancel")
    expect(page.locator("#notice")).to_be_visible()
    expect(page.locator("#job-status")).to_have_text("CANCELED")
    assert srv.client("iot").describe_job(jobId="web-job")["job"]["status"] == "CANCELED"

    page.click("#executions >> text=web-a")
    expect(page.locator("#thing-name")).to_have_text("web-a")
    expect(page.locator("#executions")).to_contain_text("FAILED")
    expect(page.locator("#device-audit")).to_contain_text("iot:UpdateJobExecution")

    page.click("text=Signing certificates")
    expect(page.locator("#certificates")).to_contain_text("development only")
    page.click("text=Audit log")
    page.fill("input[name=action]", "iot:CancelJob")
    page.click("#filter")
    expect(page.locator("#audit")).to_contain_text("iot:CancelJob")
    expect(page.locator("#audit")).not_to_contain_text("iot:ListJobs")

    page.click("text=Sign out")
    expect(page).to_have_url(SIGN_IN_URL)
    page.goto("/dashboard/fleet")
    expect(page.locator("#signin")).to_be_visible()


def test_o1_a_user_without_cancel_job_sees_a_403_page_naming_it(
        srv: RunningServer, page: Page, tmp_path: Path) -> None:
    _fleet(srv, tmp_path, "web-guarded", ["web-guarded-thing"])
    _sign_in(page, make_user(srv, "web-viewer", policy(READ_ROLLOUTS)))
    page.goto("/dashboard/rollouts/web-guarded")
    page.click("#cancel")
    expect(page.locator("#missing-action")).to_have_text("iot:CancelJob")
    assert srv.client("iot").describe_job(jobId="web-guarded")["job"]["status"] == "IN_PROGRESS"


def test_o1_hostile_status_details_and_descriptions_stay_text_in_the_browser(
        srv: RunningServer, page: Page, tmp_path: Path) -> None:
    (device,) = _fleet(srv, tmp_path, "web-hostile", ["web-hostile-thing"], description=SCRIPT)
    device.start_next_pending_job_execution(thingName="web-hostile-thing")
    device.update_job_execution(thingName="web-hostile-thing", jobId="web-hostile", status="FAILED",
                                statusDetails={"reason": HOSTILE, "detail": SCRIPT})
    _sign_in(page, admin_key(srv))
    for path in ("/dashboard/rollouts/web-hostile", "/dashboard/things/web-hostile-thing"):
        page.goto(path)
        expect(page.locator("#executions")).to_contain_text(HOSTILE)
        expect(page.locator("#executions")).to_contain_text(SCRIPT)
        assert page.locator("main img").count() == 0
        assert page.locator("main script").count() == 0
        assert page.title() != "pwned"


def _device_tls(bundle: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(bundle / "root-ca.pem"))
    context.load_cert_chain(str(bundle / "device.crt"), str(bundle / "device.key"))
    return context


def _presence_text(page: Page, thing: str) -> str:
    page.goto(f"/dashboard/fleet?prefix={thing}")
    return page.inner_text("#things td.presence")


def test_a_device_connecting_and_leaving_shows_online_then_offline(
        srv: RunningServer, page: Page, tmp_path: Path) -> None:
    bundle = srv.provision("web-online", tmp_path / "web-online")
    _sign_in(page, admin_key(srv))
    assert _presence_text(page, "web-online") == "never connected"
    peer = MqttPeer(_device_tls(bundle), srv.settings.mqtt_port, "web-online")
    try:
        wait_for(lambda: _presence_text(page, "web-online").startswith("online since"), 30, "online")
        page.click("#things >> text=web-online")
        expect(page.locator("#presence")).to_contain_text("online since")
    finally:
        peer.close()
    wait_for(lambda: _presence_text(page, "web-online").startswith("offline since"), 30, "offline")
    assert "DISCONNECT" in _presence_text(page, "web-online")
