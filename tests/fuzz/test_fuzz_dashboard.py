"""Fuzz targets: what a browser sends the dashboard (server/dashboard/). The session
cookie (`SessionCodec.open`): any text, a valid cookie mutated, and payloads signed with
the right key but hostile inside, open to the issued session or raise BadSession, never
anything else. The audit page's time filter never raises. And over HTTP against a real
server: hostile paths, query strings, cookies and form bodies never answer 500."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overair.server.dashboard.routes import _day_or_time
from overair.server.dashboard.session import COOKIE_NAME, BadSession, Session, SessionCodec
from tests.dashboard.conftest import WebClient, admin_key, web
from tests.fuzz.device_strategies import HOSTILE_TEXT
from tests.server_harness import RunningServer, running_server

KEY = bytes(range(32))
NOW = 1_800_000_000.0
CODEC = SessionCodec(KEY)
COOKIE, SESSION = CODEC.issue("AKIAEXAMPLE", NOW)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _signed(payload: bytes) -> str:
    """A cookie the server's key signed, whatever its payload (as if the key leaked)."""
    mac = hmac.new(KEY, b"session\x00" + payload, hashlib.sha256).digest()
    return f"{_b64(payload)}.{_b64(mac)}"


@given(HOSTILE_TEXT | st.text(max_size=800))
def test_fuzz_any_text_is_no_session(text: str) -> None:
    with pytest.raises(BadSession):
        CODEC.open(text, NOW)


@given(st.integers(0, len(COOKIE) - 1), st.characters(codec="ascii"))
def test_fuzz_a_mutated_cookie_opens_only_unchanged(position: int, char: str) -> None:
    mutated = COOKIE[:position] + char + COOKIE[position + 1:]
    try:
        opened = CODEC.open(mutated, NOW)
    except BadSession:
        return
    assert opened == SESSION  # only a change base64url decoding ignores (padding bits)


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.sampled_from(["k", "s", "e", "x"]), inner, max_size=4),
                           max_leaves=10)


@given(st.binary(max_size=200) | JSON_VALUES.map(lambda v: json.dumps(v).encode()))
def test_fuzz_a_signed_hostile_payload_is_a_well_typed_session_or_refused(payload: bytes) -> None:
    try:
        opened = CODEC.open(_signed(payload), NOW)
    except BadSession:
        return
    assert isinstance(opened, Session)
    assert isinstance(opened.access_key_id, str)
    assert isinstance(opened.session_id, str)
    assert opened.expires_at > NOW


@given(HOSTILE_TEXT | st.text(max_size=64))
def test_fuzz_the_audit_time_filter_never_raises(text: str) -> None:
    value = _day_or_time(text)
    assert value is None or isinstance(value, float)


@pytest.fixture(scope="module")
def signed_in(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, WebClient]]:
    with running_server(tmp_path_factory.mktemp("server")) as running:
        browser = web(running)
        browser.sign_in(admin_key(running))
        yield running, browser


PATHS = st.sampled_from(["/dashboard/fleet", "/dashboard/things/", "/dashboard/rollouts",
                         "/dashboard/rollouts/", "/dashboard/audit", "/dashboard/certificates",
                         "/dashboard/signin", "/dashboard/rollouts/x/progress"])
POSTS = st.sampled_from(["/dashboard/signin", "/dashboard/signout", "/dashboard/rollouts/x/cancel",
                         "/dashboard/rollouts/x/retry-failed"])
QUERY_KEYS = st.sampled_from(["after", "prefix", "offset", "status", "principal", "action", "decision",
                              "since", "until", "before", "next", "notice", "retry", "devices"])


@given(st.data())
def test_fuzz_no_dashboard_request_answers_500(signed_in: tuple[RunningServer, WebClient],
                                               data: st.DataObject) -> None:
    srv, browser = signed_in
    text = HOSTILE_TEXT | st.text(max_size=80)
    if data.draw(st.booleans()):
        path = data.draw(PATHS) + quote(data.draw(text), safe="", errors="surrogatepass")
        query = "&".join(quote(k) + "=" + quote(data.draw(text), safe="", errors="surrogatepass")
                         for k in data.draw(st.lists(QUERY_KEYS, max_size=4)))
        reply = browser.get(path + (f"?{query}" if query else ""))
    else:
        fields = data.draw(st.dictionaries(st.sampled_from(["csrf", "access_key_id", "secret_access_key",
                                                            "session_token", "next", "force"]) | text,
                                           text, max_size=5))
        reply = browser.post(data.draw(POSTS), fields)
    assert reply.status < 500, reply.body[:300]
    # A hostile cookie alone: signed out, never an error.
    stranger = web(srv)
    stranger.cookies[COOKIE_NAME] = quote(data.draw(text), safe="", errors="surrogatepass")
    assert stranger.get("/dashboard/fleet").status == 303
