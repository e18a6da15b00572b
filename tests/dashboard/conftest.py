"""The dashboard modules share one real server (API, device service, Mosquitto) per
module, a plain HTTP client that keeps cookies and never follows redirects (for the
adversarial tests), IAM users made through the API, and for the browser tests
Playwright driving Debian's `chromium` (scripts/dev installs it; a missing browser
fails the tests rather than skipping them)."""

from __future__ import annotations

import configparser
import http.client
import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest

from tests.server_harness import RunningServer, running_server

CHROMIUM_NAMES = ("chromium", "chromium-browser")


@dataclass(frozen=True)
class Key:
    access_key_id: str
    secret: str
    session_token: str = ""


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: str
    set_cookies: list[str]


@dataclass
class WebClient:
    """A browser without JavaScript: cookies by name, no redirects followed."""

    host: str
    port: int
    cookies: dict[str, str] = field(default_factory=dict)

    def request(self, method: str, path: str, form: dict[str, str] | None = None,
                headers: dict[str, str] | None = None) -> Reply:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            sent = dict(headers or {})
            if self.cookies:
                sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
            body = None
            if form is not None:
                body = urlencode(form, errors="surrogatepass").encode()
                sent["Content-Type"] = "application/x-www-form-urlencoded"
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            raw = response.read().decode("utf-8", "replace")
            set_cookies = response.headers.get_all("set-cookie") or []
            for line in set_cookies:
                name, _, rest = line.partition("=")
                value = rest.split(";", 1)[0]
                if "max-age=0" in line.lower() or not value.strip('"'):
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = value
            return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, raw, set_cookies)
        finally:
            connection.close()

    def get(self, path: str) -> Reply:
        return self.request("GET", path)

    def post(self, path: str, form: dict[str, str]) -> Reply:
        return self.request("POST", path, form)

    def sign_in(self, key: Key) -> Reply:
        return self.post("/dashboard/signin", {"access_key_id": key.access_key_id,
                                               "secret_access_key": key.secret,
                                               "session_token": key.session_token,
                                               "next": "/dashboard/fleet"})

    def csrf(self, path: str) -> str:
        """The CSRF token of the signed-in session, as a page's forms carry it."""
        match = re.search(r'name="csrf" value="([^"]+)"', self.get(path).body)
        assert match is not None, "no CSRF token on " + path
        return match.group(1)


def admin_key(srv: RunningServer) -> Key:
    parser = configparser.ConfigParser()
    parser.read(srv.settings.paths.credentials)
    section = parser["default"]
    return Key(section["aws_access_key_id"], section["aws_secret_access_key"])


def policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def make_user(srv: RunningServer, name: str, document: str) -> Key:
    iam = srv.client("iam")
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName="dashboard", PolicyDocument=document)
    created = iam.create_access_key(UserName=name)["AccessKey"]
    return Key(created["AccessKeyId"], created["SecretAccessKey"])


def web(srv: RunningServer) -> WebClient:
    parts = urlsplit(srv.endpoint)
    assert parts.hostname is not None
    assert parts.port is not None
    return WebClient(parts.hostname, parts.port)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("server")) as running:
        yield running


def chromium_path() -> str:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("Debian's chromium is not installed: run `scripts/dev setup` (apt-get install chromium)",
                pytrace=False)
