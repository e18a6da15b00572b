"""Pre-signed download URLs over HTTPS (device-protocol.md §4): OTA files, and the
objects plain jobs name with `${aws:iot:s3-presigned-url:...}` placeholders.

A URL names one object version for one thing and expires; an HMAC-SHA256 under the
server's URL-signing key covers all of it, so a device cannot stretch the expiry, fetch
another version, or hand the URL to another thing's name:

    https://HOST[:PORT]/ota/<bucket>/<key>?version=V&thing=T&expires=E&signature=S
    S = hex(HMAC-SHA256(url_key, "GET\\n<bucket>\\n<key>\\n<V>\\n<T>\\n<E>"))

`https://HOST[:PORT]` is the download endpoint's public address (`base_url`): the port is
left out when it is 443, as in the S3 URLs FreeRTOS devices were written for. The
FreeRTOS HTTP demo takes everything between `://` and the first `/` as the host name
and always connects to port 443, so `https://host:8443/...` fails there (DNS error on
"host:8443"; device-protocol.md §2).

Pure: the server's download endpoint checks with `verify`, the job service renders
with `sign`. Expiry bounds follow AWS's presignedUrlConfig (60-3600 s).

Everything in a URL and its `Range` header is hostile until checked, and reaches here
before any authentication: each field is matched whole against an ASCII pattern with a
length bound before it is used (never `int()` on raw text, which takes Unicode digits,
signs, spaces and underscores; never `hmac.compare_digest` on `str`, which raises
TypeError on non-ASCII text). `parse_query`, `verify` and `parse_range` raise only `UrlRefused`.

A query is taken only in the form `sign` writes it: the four fields once each, their
names as written (threat N4). Parsers disagree on anything else: Python's keeps the last
of a repeated field and decodes `%xx` in names, nginx's `$arg_` takes the first and
matches names in any case, so `?signature=junk&...&signature=S` would let the download
front key a device's budget on junk while overair checked S.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, unquote_plus, urlencode, urlsplit

from overair.core.asciinum import parse_uint
from overair.core.errors import PeerInputError
from overair.core.topics import is_thing_name

MIN_EXPIRY, MAX_EXPIRY, DEFAULT_EXPIRY = 60, 3600, 1800
# CreateJob's presignedUrlConfig defaults to an hour; OTA updates' to DEFAULT_EXPIRY.
JOB_DEFAULT_EXPIRY = 3600
PATH_PREFIX = "/ota/"

EXPIRES_DIGITS = 12  # epoch seconds
_SIGNATURE = re.compile(r"[0-9a-f]{64}")  # hex HMAC-SHA256
_VERSION = re.compile(r"[A-Za-z0-9._+=-]{1,1024}")  # an object version id
_SURROGATE = re.compile("[\ud800-\udfff]")
_RANGE = re.compile(r"bytes=([0-9]{0,18})-([0-9]{0,18})")
MAX_KEY_LENGTH = 1024  # S3's limit on an object key
MAX_RANGE_HEADER = 64


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


HTTPS_PORT = 443
_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]")


def base_url(public_url: str) -> str:
    """`https://host[:port]` in its canonical form (no port when it is 443), from an
    operator's setting; ValueError naming what is wrong. Only https: the endpoint serves
    TLS, and a URL a device follows must never be plaintext (threat L1). No path: a
    TLS-passthrough proxy cannot route by path."""
    parts = urlsplit(public_url.strip())
    try:
        given = parts.port
    except ValueError as exc:
        raise ValueError(f"{public_url!r}: {exc}") from None
    port = HTTPS_PORT if given is None else given
    host = parts.netloc.rpartition(":")[0] if given is not None else parts.netloc
    if parts.scheme != "https":
        raise ValueError(f"{public_url!r} must start with https:// (devices download over TLS only)")
    if _HOST.fullmatch(host) is None or "@" in parts.netloc:
        raise ValueError(f"{public_url!r} must be https://host[:port] with a host name or address")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{public_url!r} must have no path, query or fragment")
    if not 0 < port <= 65535:
        raise ValueError(f"{public_url!r}: the port must be 1 to 65535")
    return f"https://{host}" if port == HTTPS_PORT else f"https://{host}:{port}"


def sign(secret: bytes, base_url: str, grant: Grant) -> str:
    query = urlencode({"version": grant.version, "thing": grant.thing, "expires": grant.expires,
                       "signature": _mac(secret, grant)})
    return f"{base_url}{PATH_PREFIX}{quote(grant.bucket, safe='')}/{quote(grant.key, safe='/')}?{query}"


QUERY_FIELDS = ("version", "thing", "expires", "signature")
MAX_QUERY_LENGTH = 4096


def parse_query(raw: str) -> dict[str, str]:
    """The fields of a download URL's raw query string: exactly `QUERY_FIELDS`, each
    once, names exactly as `sign` writes them (never percent-encoded or in another case),
    values percent-decoded as `parse_qsl` does."""
    parts = raw.split("&") if len(raw) <= MAX_QUERY_LENGTH else []
    fields: dict[str, str] = {}
    for part in parts:
        name, _, value = part.partition("=")
        if name not in QUERY_FIELDS or name in fields:
            break
        fields[name] = unquote_plus(value)
    if len(fields) != len(QUERY_FIELDS) or len(parts) != len(QUERY_FIELDS):
        raise UrlRefused("the URL's query must carry version, thing, expires and signature once each, "
                         "as signed", code="MalformedUrl")
    return fields


def verify(secret: bytes, bucket: str, key: str, query: Mapping[str, str], now: float) -> Grant:
    """The grant a request's path and query carry, if every field is well-formed, the
    signature holds and it has not expired."""
    try:
        version, thing, expires, signature = (query["version"], query["thing"], query["expires"],
                                              query["signature"])
    except KeyError:
        raise UrlRefused("the URL lacks version, thing, expires or signature", code="MalformedUrl") from None
    expiry = parse_uint(expires, max_digits=EXPIRES_DIGITS)
    if (expiry is None or _VERSION.fullmatch(version) is None or not is_thing_name(thing)
            or not 0 < len(bucket) <= 255 or not 0 < len(key) <= MAX_KEY_LENGTH
            or _SURROGATE.search(bucket + key) is not None):  # not UTF-8: no object is named so
        raise UrlRefused("the URL's bucket, key, version, thing or expires is malformed", code="MalformedUrl")
    if _SIGNATURE.fullmatch(signature) is None:
        raise UrlRefused("the URL signature does not match", code="SignatureDoesNotMatch")
    grant = Grant(bucket, key, version, thing, expiry)
    if not hmac.compare_digest(_mac(secret, grant).encode(), signature.encode()):
        raise UrlRefused("the URL signature does not match", code="SignatureDoesNotMatch")
    if now > grant.expires:
        raise UrlRefused("the URL has expired; ask for the job document again", code="ExpiredUrl")
    return grant


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a single `bytes=a-b` range, clipped to the file; None for
    no Range header. Raises UrlRefused(code="InvalidRange") for anything malformed or
    unsatisfiable (a device resumes with a fresh request either way)."""
    if header is None:
        return None
    match = _RANGE.fullmatch(header.strip()) if len(header) <= MAX_RANGE_HEADER else None
    if match is None:
        raise UrlRefused(f"malformed range {header[:MAX_RANGE_HEADER]!r}: only a single bytes=a-b "
                         "range is supported", code="InvalidRange")
    first_text, last_text = match.groups()
    if first_text == "":  # suffix range: the last N bytes
        if last_text == "" or int(last_text) == 0 or size == 0:
            raise UrlRefused(f"unsatisfiable range {header!r}", code="InvalidRange")
        return max(0, size - int(last_text)), size - 1
    first = int(first_text)
    last = int(last_text) if last_text else size - 1
    if first >= size or last < first:
        raise UrlRefused(f"range {header!r} is outside the file of {size} bytes", code="InvalidRange")
    return first, min(last, size - 1)
