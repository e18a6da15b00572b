"""Pre-signed download URLs over HTTPS (device-protocol.md §4): OTA files, and the
objects plain jobs name with `${aws:iot:s3-presigned-url:...}` placeholders.

A URL names one object version for one thing and expires; an HMAC-SHA256 under the
server's URL-signing key covers all of it, so a device cannot stretch the expiry, fetch
another version, or hand the URL to another thing's name:

    https://HOST:PORT/ota/<bucket>/<key>?version=V&thing=T&expires=E&signature=S
    S = hex(HMAC-SHA256(url_key, "GET\\n<bucket>\\n<key>\\n<V>\\n<T>\\n<E>"))

Pure: the server's download endpoint checks with `verify`, the job service renders
with `sign`. Expiry bounds follow AWS's presignedUrlConfig (60-3600 s).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from overair.core.errors import PeerInputError

MIN_EXPIRY, MAX_EXPIRY, DEFAULT_EXPIRY = 60, 3600, 1800
# CreateJob's presignedUrlConfig defaults to an hour; OTA updates' to DEFAULT_EXPIRY.
JOB_DEFAULT_EXPIRY = 3600
PATH_PREFIX = "/ota/"


class UrlRefused(PeerInputError):
    """A download URL that is malformed, forged or expired; `code` says which."""


@dataclass(frozen=True, slots=True)
class Grant:
    bucket: str
    key: str
    version: str
    thing: str
    expires: int  # epoch seconds


def _mac(secret: bytes, grant: Grant) -> str:
    message = "\n".join(("GET", grant.bucket, grant.key, grant.version, grant.thing, str(grant.expires)))
    return hmac.new(secret, message.encode(), hashlib.sha256).hexdigest()


def expiry_seconds(presigned_url_config: dict[str, object] | None, default: int = DEFAULT_EXPIRY) -> int:
    value = (presigned_url_config or {}).get("expiresInSec", default)
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_EXPIRY <= value <= MAX_EXPIRY:
        raise PeerInputError(f"expiresInSec must be an integer from {MIN_EXPIRY} to {MAX_EXPIRY}",
                             code="InvalidRequestException")
    return value


def sign(secret: bytes, base_url: str, grant: Grant) -> str:
    query = urlencode({"version": grant.version, "thing": grant.thing, "expires": grant.expires,
                       "signature": _mac(secret, grant)})
    return f"{base_url}{PATH_PREFIX}{quote(grant.bucket, safe='')}/{quote(grant.key, safe='/')}?{query}"


def verify(secret: bytes, bucket: str, key: str, query: dict[str, str], now: float) -> Grant:
    """The grant a request's path and query carry, if the signature holds and it has
    not expired."""
    try:
        grant = Grant(bucket, key, query["version"], query["thing"], int(query["expires"]))
        signature = query["signature"]
    except (KeyError, ValueError) as exc:
        raise UrlRefused("the URL lacks version, thing, expires or signature", code="MalformedUrl") from exc
    if not hmac.compare_digest(_mac(secret, grant), signature):
        raise UrlRefused("the URL signature does not match", code="SignatureDoesNotMatch")
    if now > grant.expires:
        raise UrlRefused("the URL has expired; ask for the job document again", code="ExpiredUrl")
    return grant


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a single `bytes=a-b` range, clipped to the file; None for
    no Range header. Raises UrlRefused(code="InvalidRange") for anything unsatisfiable."""
    if header is None:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        raise UrlRefused("only a single bytes range is supported", code="InvalidRange")
    first_text, dash, last_text = spec.strip().partition("-")
    try:
        if not dash:
            raise ValueError
        if first_text == "":  # suffix range: the last N bytes
            length = int(last_text)
            if length <= 0:
                raise ValueError
            return max(0, size - length), size - 1
        first = int(first_text)
        last = int(last_text) if last_text else size - 1
    except ValueError as exc:
        raise UrlRefused(f"malformed range {header!r}", code="InvalidRange") from exc
    if first < 0 or first >= size or last < first:
        raise UrlRefused(f"range {header!r} is outside the file of {size} bytes", code="InvalidRange")
    return first, min(last, size - 1)
