"""The dashboard's sign-in session: a cookie the server signs, and the CSRF token of
each session. Pure apart from `load_session_key` (the key file).

The cookie carries only the signed-in access key id, a random session id and the
expiry: `<payload>.<HMAC-SHA256>`, both base64url. It proves the holder signed in with
that key's secret before the expiry; every request still looks the key up anew (a key
deleted, deactivated or an STS session expired since signs the browser out:
`signin.py`). The CSRF token of a session is an HMAC of its session id under the same
key with its own label, so it cannot be computed without the key and is worthless for
any other session (threat O1: a page of another site cannot act for a signed-in
operator; SameSite=Strict stops the cookie being sent there too).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from overair.core import wirejson
from overair.core.errors import PeerInputError
from overair.server.files import write_private
from overair.server.sealing import Sealer

COOKIE_NAME = "overair_dashboard"
# Short-lived, as the issue asks: sign in again after this long. Temporary credentials
# end the session earlier when they expire (`SessionCodec.issue`'s `not_after`).
SESSION_SECONDS = 3600
KEY_BYTES = 32
_KEY_CONTEXT = "dashboard-session-key"
_MAX_COOKIE_CHARS = 512  # an honest cookie is ~150 characters; anything longer is refused unread


class BadSession(PeerInputError):
    """A cookie that is malformed, forged or expired: the browser must sign in again."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="BadSession")


@dataclass(frozen=True, slots=True)
class Session:
    access_key_id: str
    session_id: str
    expires_at: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise BadSession("the session cookie is not base64url") from exc


class SessionCodec:
    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError("the dashboard session key must be 32 bytes")
        self._key = key

    def _mac(self, label: bytes, data: bytes) -> bytes:
        return hmac.new(self._key, label + b"\x00" + data, hashlib.sha256).digest()

    def issue(self, access_key_id: str, now: float, not_after: float | None = None) -> tuple[str, Session]:
        """A new session for a key that just proved its secret: (cookie value, session)."""
        expires = now + SESSION_SECONDS
        if not_after is not None:
            expires = min(expires, not_after)
        session = Session(access_key_id, secrets.token_hex(16), expires)
        payload = json.dumps({"k": session.access_key_id, "s": session.session_id,
                                  "e": int(session.expires_at)}, separators=(",", ":")).encode()
        return f"{_b64(payload)}.{_b64(self._mac(b'session', payload))}", session

    def open(self, cookie: str, now: float) -> Session:
        """The session a cookie carries; raises BadSession if it was not issued by this
        key (forged, altered) or has expired."""
        if len(cookie) > _MAX_COOKIE_CHARS or cookie.count(".") != 1:
            raise BadSession("the session cookie is malformed")
        payload_text, mac_text = cookie.split(".")
        payload = _unb64(payload_text)
        if not hmac.compare_digest(self._mac(b"session", payload), _unb64(mac_text)):
            raise BadSession("the session cookie's signature does not match")
        try:
            fields = wirejson.loads(payload)
        except PeerInputError as exc:  # signed by us, so only if the key leaked: still refuse
            raise BadSession("the session cookie's payload is not JSON") from exc
        if not isinstance(fields, dict):
            raise BadSession("the session cookie's payload is not an object")
        key_id, session_id, expires = fields.get("k"), fields.get("s"), fields.get("e")
        if not isinstance(key_id, str) or not isinstance(session_id, str) or type(expires) is not int:
            raise BadSession("the session cookie's payload lacks its fields")
        if now >= expires:
            raise BadSession("the session has expired: sign in again")
        return Session(key_id, session_id, float(expires))

    def csrf_token(self, session: Session) -> str:
        return _b64(self._mac(b"csrf", session.session_id.encode()))

    def check_csrf(self, session: Session, submitted: str | None) -> bool:
        return submitted is not None and hmac.compare_digest(self.csrf_token(session).encode(),
                                                             submitted.encode())


def load_session_key(path: Path, sealer: Sealer) -> bytes:
    """The key that signs session cookies, kept sealed under the master key like the
    server's other secrets; made on first use (a data directory from before the
    dashboard gets one at its first start)."""
    if not path.exists():
        write_private(path, sealer.seal(secrets.token_bytes(KEY_BYTES), _KEY_CONTEXT))
    return sealer.open(path.read_bytes(), _KEY_CONTEXT)
