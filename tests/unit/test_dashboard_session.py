"""The dashboard's pure logic: session cookies, CSRF tokens, the sign-in check against a
credential lookup, where sign-in may redirect to, and the audit page's time filter.
Threat ids: O1 (a forged session or cross-site form must not act for an operator)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overair.server.api.contract import Credential
from overair.server.dashboard.routes import _day_or_time, _local_next
from overair.server.dashboard.session import SESSION_SECONDS, BadSession, SessionCodec, load_session_key
from overair.server.dashboard.signin import SignInRefused, sign_in
from overair.server.dashboard.throttle import SignInThrottle
from overair.server.sealing import Sealer

KEY = bytes(range(32))
NOW = 1_800_000_000.0


def test_an_issued_cookie_opens_to_its_session_until_it_expires() -> None:
    codec = SessionCodec(KEY)
    cookie, session = codec.issue("AKIAEXAMPLE", NOW)
    assert codec.open(cookie, NOW + 10) == session
    assert session.expires_at == NOW + SESSION_SECONDS
    with pytest.raises(BadSession, match="expired"):
        codec.open(cookie, NOW + SESSION_SECONDS)


def test_temporary_credentials_end_the_session_when_they_expire() -> None:
    codec = SessionCodec(KEY)
    cookie, session = codec.issue("ASIAEXAMPLE", NOW, not_after=NOW + 60)
    assert session.expires_at == NOW + 60
    with pytest.raises(BadSession):
        codec.open(cookie, NOW + 61)


def test_o1_a_cookie_from_another_key_or_altered_is_refused() -> None:
    cookie, _ = SessionCodec(KEY).issue("AKIAEXAMPLE", NOW)
    with pytest.raises(BadSession, match="signature"):
        SessionCodec(bytes(32)).open(cookie, NOW)
    payload, mac = cookie.split(".")
    for forged in (payload + "A." + mac, payload + "." + mac[::-1], "." + mac, payload + ".", "a.b.c",
                   "x" * 600):
        with pytest.raises(BadSession):
            SessionCodec(KEY).open(forged, NOW)


@given(st.text(max_size=700))
def test_o1_no_text_opens_as_a_session(text: str) -> None:
    with pytest.raises(BadSession):
        SessionCodec(KEY).open(text, NOW)


def test_o1_csrf_tokens_belong_to_one_session() -> None:
    codec = SessionCodec(KEY)
    _, first = codec.issue("AKIAEXAMPLE", NOW)
    _, second = codec.issue("AKIAEXAMPLE", NOW)
    token = codec.csrf_token(first)
    assert codec.check_csrf(first, token)
    assert not codec.check_csrf(second, token)
    assert not codec.check_csrf(first, None)
    assert not codec.check_csrf(first, "")
    assert not SessionCodec(bytes(32)).check_csrf(first, token)


def test_the_session_key_is_kept_sealed_and_reused(tmp_path: Path) -> None:
    sealer = Sealer(bytes(range(32)))
    path = tmp_path / "dashboard-session.key"
    key = load_session_key(path, sealer)
    assert load_session_key(path, sealer) == key
    assert key not in path.read_bytes()
    assert path.stat().st_mode & 0o077 == 0


def _lookup(credentials: list[Credential]) -> dict[str, Credential]:
    return {c.access_key_id: c for c in credentials}


USER = Credential("AKIAUSER", "secret-1", "alice", "arn:aws:iam::123456789012:user/alice", True)
ROLE = Credential("ASIAROLE", "secret-2", "reader", "arn:aws:sts::123456789012:assumed-role/reader/s", True,
                  principal_kind="role", session_token_sha256=hashlib.sha256(b"token").hexdigest(),
                  expires_at=NOW + 900)


@pytest.mark.parametrize(("key_id", "secret", "token", "now", "reason"), [
    ("AKIAUSER", "secret-1x", "", NOW, "wrong secret"),
    ("AKIANONE", "secret-1", "", NOW, "unknown access key"),
    ("", "secret-1", "", NOW, "unknown access key"),
    ("AKIAUSER", "secret-1", "token", NOW, "session token with a long-term key"),
    ("ASIAROLE", "secret-2", "", NOW, "missing or wrong session token"),
    ("ASIAROLE", "secret-2", "other", NOW, "missing or wrong session token"),
    ("ASIAROLE", "secret-2", "token", NOW + 900, "expired"),
])
def test_o1_sign_in_refuses_what_sigv4_would_refuse(key_id: str, secret: str, token: str, now: float,
                                                     reason: str) -> None:
    with pytest.raises(SignInRefused, match=reason):
        sign_in(_lookup([USER, ROLE]).get, key_id, secret, token, now)


def test_sign_in_accepts_a_user_key_and_a_role_session_with_its_token() -> None:
    lookup = _lookup([USER, ROLE]).get
    assert sign_in(lookup, "AKIAUSER", "secret-1", "", NOW) == USER
    assert sign_in(lookup, "ASIAROLE", "secret-2", "token", NOW) == ROLE
    inactive = Credential("AKIAOFF", "s", "bob", "arn:aws:iam::123456789012:user/bob", False)
    with pytest.raises(SignInRefused, match="inactive"):
        sign_in(_lookup([inactive]).get, "AKIAOFF", "s", "", NOW)


@pytest.mark.parametrize(("target", "expected"), [
    ("/dashboard/audit?principal=x", "/dashboard/audit?principal=x"),
    ("https://evil.example/dashboard/", "/dashboard/fleet"),
    ("//evil.example/", "/dashboard/fleet"),
    ("/dashboard/\\evil", "/dashboard/fleet"),
    ("/other", "/dashboard/fleet"),
    ("", "/dashboard/fleet"),
])
def test_sign_in_returns_only_to_dashboard_paths(target: str, expected: str) -> None:
    assert _local_next(target) == expected


def test_the_audit_time_filter_reads_utc_days_and_times() -> None:
    assert _day_or_time("2026-12-05") == 1_796_428_800.0
    assert _day_or_time("2026-12-05T21:00") == 1_796_428_800.0 + 21 * 3600
    assert _day_or_time("yesterday") is None
    assert _day_or_time("") is None


def test_o1_failed_sign_ins_are_bounded_per_source_and_window() -> None:
    throttle = SignInThrottle(max_failures=3, window=60, max_sources=2)
    assert [throttle.failed("10.0.0.1", NOW) for _ in range(3)] == [False, False, True]
    assert not throttle.allowed("10.0.0.1", NOW + 59)
    assert throttle.allowed("10.0.0.2", NOW + 59)
    assert throttle.allowed("10.0.0.1", NOW + 60)  # a new window


def test_o1_sources_beyond_the_table_share_one_budget() -> None:
    throttle = SignInThrottle(max_failures=2, window=60, max_sources=2)
    throttle.failed("a", NOW)
    throttle.failed("b", NOW)
    throttle.failed("c", NOW)
    throttle.failed("d", NOW)
    assert not throttle.allowed("e", NOW)
    assert throttle.allowed("a", NOW)
