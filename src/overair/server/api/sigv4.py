"""AWS Signature Version 4 verification (Authorization header and presigned URLs).

The canonical request, string to sign and signature are computed by botocore's own
signer (`SigV4Auth` / `S3SigV4Auth`) on an `AWSRequest` rebuilt from what arrived:
method, URL (raw path and raw query as sent), exactly the headers the client listed
in `SignedHeaders`, and the payload hash the client used. The result is compared in
constant time. Everything here is a pure function of its inputs (the time is passed
in), so it is easy to test.

Failure codes (all raised as `SigV4Error`, an `ApiError`):

| failure | code | status |
|---|---|---|
| no Authorization header and no X-Amz-Signature | MissingAuthenticationToken | 403 |
| malformed header / query parameters / scope | IncompleteSignature | 400 |
| scope for another region, S3 header | AuthorizationHeaderMalformed | 400 |
| scope for another region, S3 presigned URL | AuthorizationQueryParametersError | 400 |
| scope for another region, iam and sts | SignatureDoesNotMatch | 403 |
| scope for another region, other services | InvalidSignatureException | 403 |
| unknown access key id | InvalidClientTokenId | 403 |
| key exists but is not active | InactiveAccessKey | 403 |
| signature mismatch (also a bad aws-chunked chunk signature) | SignatureDoesNotMatch | 403 |
| request time more than 15 minutes off | RequestTimeTooSkewed | 403 |
| presigned URL past its X-Amz-Expires | RequestExpired | 403 |
| x-amz-content-sha256 does not match the body | XAmzContentSHA256Mismatch | 400 |
| malformed aws-chunked body / decoded length | IncompleteBody | 400 |

S3 pre-signed GET/HEAD URLs in the older query form (`AWSAccessKeyId`, `Signature`,
`Expires`: what boto3's `generate_presigned_url` still produces by default for
us-east-1) are verified with botocore's `HmacV1QueryAuth` canonicalisation; they
carry no credential scope, so their `AuthResult.region` is empty.

The region of the credential scope must be this server's (threat O1: a signature for
another region is a signature for another endpoint, and AWS refuses it). IAM and STS
are global services whose one endpoint signs with the partition's global region
(us-east-1 in `aws`), so for them that region is accepted too. The answer is AWS's for
each service family (see the table).

Every number in a header or the query is read with `core/asciinum.py` (ASCII digits,
bounded length), and the request URL handed to botocore's signer never contains the
Host header (which is signed as a header): a hostile Host such as `[x` cannot make
URL parsing fail.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from botocore.auth import HmacV1QueryAuth, S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.compat import HTTPHeaders
from botocore.credentials import Credentials

from overair.core.asciinum import parse_hex, parse_uint
from overair.server.api.contract import ApiError, Credential, CredentialLookup

ALGORITHM = "AWS4-HMAC-SHA256"
MAX_SKEW_SECONDS = 15 * 60
MAX_PRESIGN_EXPIRES = 7 * 24 * 3600
SIGV4_TIMESTAMP = "%Y%m%dT%H%M%SZ"

UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_MODES = (STREAMING_UNSIGNED_TRAILER, STREAMING_SIGNED, STREAMING_SIGNED_TRAILER)
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

_HEX64 = re.compile(r"[0-9a-f]{64}")
_SCOPE_DATE = re.compile(r"[0-9]{8}")
_AMZ_TIMESTAMP = re.compile(r"[0-9]{8}T[0-9]{6}Z")
# The URL given to botocore's signer: only its path and query are canonicalised, and the
# Host header is signed as a header, so the URL's host is a constant (see module doc).
_SIGNING_HOST = "overair.invalid"
# Services with one global endpoint, and the region that endpoint signs with per partition.
GLOBAL_SERVICES = frozenset({"iam", "sts"})
GLOBAL_SIGNING_REGIONS = {"aws": "us-east-1", "aws-cn": "cn-north-1", "aws-us-gov": "us-gov-west-1"}
_AUTH_PARAM = re.compile(r"(\w+)=([^,\s]*)")


class SigV4Error(ApiError):
    """An authentication failure; `code` says which check failed."""


def _missing(message: str) -> SigV4Error:
    return SigV4Error("MissingAuthenticationToken", message, 403)


def _malformed(message: str) -> SigV4Error:
    return SigV4Error("IncompleteSignature", message, 400)


@dataclass(frozen=True, slots=True)
class IncomingRequest:
    """What arrived on the wire, before any decoding."""

    method: str
    scheme: str  # http or https
    raw_path: str  # percent-encoded as sent
    raw_query: str  # as sent, without the leading "?"
    headers: Sequence[tuple[str, str]]  # names in any case, repeated names kept
    body: bytes

    def header(self, name: str) -> str | None:
        lname = name.lower()
        values = [v for k, v in self.headers if k.lower() == lname]
        return ",".join(values) if values else None

    def header_values(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in self.headers if k.lower() == lname]


@dataclass(frozen=True, slots=True)
class SignatureParts:
    """The parsed (not yet verified) signature of a request."""

    access_key_id: str
    date: str  # yyyymmdd of the scope
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str
    timestamp: str  # X-Amz-Date, yyyymmddThhmmssZ
    presigned: bool
    expires: int | None = None  # presigned only


@dataclass(frozen=True, slots=True)
class AuthResult:
    """A verified request."""

    credential: Credential
    service: str  # the signing name in the credential scope
    region: str
    timestamp: str
    scope: str  # date/region/service/aws4_request
    signature: str  # the request signature (seed for aws-chunked chunk signatures)
    payload_hash: str  # what the client signed as the payload hash
    presigned: bool
    # Signs a string with this request's derived signing key (for chunk signatures).
    sign: Callable[[str], str] = field(repr=False, compare=False)

    @property
    def streaming(self) -> bool:
        return self.payload_hash in STREAMING_MODES


def parse_signature(req: IncomingRequest) -> SignatureParts:
    """Find and parse the signature (header or query form); raise if absent/malformed."""
    auth = req.header("authorization")
    query = parse_qsl(req.raw_query, keep_blank_values=True)
    qdict = dict(query)
    if auth is not None:
        return _parse_auth_header(auth, req)
    if "X-Amz-Signature" in qdict or "X-Amz-Credential" in qdict:
        return _parse_presigned(qdict)
    raise _missing("Request is missing Authentication Token (no SigV4 Authorization header or signature)")


def peek_service(req: IncomingRequest) -> str | None:
    """The service name in the credential scope, without verifying anything."""
    if _v2_query(req) is not None:
        return "s3"
    try:
        return parse_signature(req).service
    except ApiError:
        return None


def _parse_scope(credential: str) -> tuple[str, str, str, str]:
    parts = credential.split("/")
    if len(parts) != 5 or parts[4] != "aws4_request" or not all(parts):
        raise _malformed(
            f"Credential must have the form AKID/yyyymmdd/region/service/aws4_request, got {credential!r}"
        )
    akid, date, region, service, _ = parts
    if not _SCOPE_DATE.fullmatch(date):
        raise _malformed(f"Invalid credential scope date {date!r}")
    return akid, date, region, service


def accepted_regions(service: str, region: str, partition: str = "aws") -> frozenset[str]:
    """The credential-scope regions a server in `region` accepts for `service`."""
    if service in GLOBAL_SERVICES and partition in GLOBAL_SIGNING_REGIONS:
        return frozenset({region, GLOBAL_SIGNING_REGIONS[partition]})
    return frozenset({region})


def check_region(parts: SignatureParts, region: str, partition: str = "aws") -> None:
    """Refuse a credential scope for another region, in the words AWS uses per service."""
    if parts.region in accepted_regions(parts.service, region, partition):
        return
    wrong = parts.region
    if parts.service == "s3":
        if parts.presigned:
            raise SigV4Error("AuthorizationQueryParametersError",
                             f"Error parsing the X-Amz-Credential parameter; the region {wrong!r} is wrong; "
                             f"expecting {region!r}", 400, fields=(("Region", region),))
        raise SigV4Error("AuthorizationHeaderMalformed",
                         f"The authorization header is malformed; the region {wrong!r} is wrong; "
                         f"expecting {region!r}", 400, fields=(("Region", region),))
    code = "SignatureDoesNotMatch" if parts.service in GLOBAL_SERVICES else "InvalidSignatureException"
    raise SigV4Error(code, f"Credential should be scoped to a valid region, not {wrong!r}.", 403)


def _parse_auth_header(auth: str, req: IncomingRequest) -> SignatureParts:
    algorithm, _, rest = auth.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise _malformed(f"Unsupported authorization algorithm {algorithm!r}; only {ALGORITHM}")
    params = dict(_AUTH_PARAM.findall(rest))
    for name in ("Credential", "SignedHeaders", "Signature"):
        if not params.get(name):
            raise _malformed(f"Authorization header requires '{name}' parameter")
    akid, date, region, service = _parse_scope(params["Credential"])
    timestamp = req.header("x-amz-date")
    if timestamp is None:
        date_header = req.header("date")
        if date_header is None:
            raise _malformed("Authorization requires an X-Amz-Date or Date header")
        timestamp = _http_date_to_amz(date_header)
    return SignatureParts(
        access_key_id=akid,
        date=date,
        region=region,
        service=service,
        signed_headers=tuple(params["SignedHeaders"].split(";")),
        signature=params["Signature"],
        timestamp=timestamp.strip(),
        presigned=False,
    )


def _parse_presigned(q: dict[str, str]) -> SignatureParts:
    for name in ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-SignedHeaders",
                 "X-Amz-Signature"):
        if not q.get(name):
            raise _malformed(f"Query-string authentication requires the {name} parameter")
    if q["X-Amz-Algorithm"] != ALGORITHM:
        raise _malformed(f"Unsupported X-Amz-Algorithm {q['X-Amz-Algorithm']!r}")
    akid, date, region, service = _parse_scope(q["X-Amz-Credential"])
    expires = parse_uint(q.get("X-Amz-Expires", ""), max_digits=12)
    if expires is None or not 1 <= expires <= MAX_PRESIGN_EXPIRES:
        raise _malformed(f"X-Amz-Expires must be between 1 and {MAX_PRESIGN_EXPIRES} seconds")
    return SignatureParts(
        access_key_id=akid,
        date=date,
        region=region,
        service=service,
        signed_headers=tuple(q["X-Amz-SignedHeaders"].split(";")),
        signature=q["X-Amz-Signature"],
        timestamp=q["X-Amz-Date"],
        presigned=True,
        expires=expires,
    )


def _http_date_to_amz(value: str) -> str:
    try:
        parsed = parsedate_to_datetime(value)
        return time.strftime(SIGV4_TIMESTAMP, time.gmtime(parsed.timestamp()))
    except (TypeError, ValueError, IndexError, OverflowError, OSError) as exc:
        # The email parser raises any of these on hostile dates; all mean "not a date".
        raise _malformed(f"Invalid Date header {value[:64]!r}") from exc


def amz_timestamp_to_epoch(timestamp: str) -> float:
    try:
        if not _AMZ_TIMESTAMP.fullmatch(timestamp):
            raise ValueError(timestamp)
        return float(calendar.timegm(time.strptime(timestamp, SIGV4_TIMESTAMP)))
    except ValueError as exc:
        raise _malformed(f"Invalid X-Amz-Date {timestamp[:64]!r}; expected yyyymmddThhmmssZ") from exc


class _Reconstructed:
    """Overrides that make botocore's signer canonicalise a received request."""

    def __init__(self, credentials: Any, service: str, region: str, signed: Sequence[str],
                 payload_hash: str) -> None:
        super().__init__(credentials, service, region)  # type: ignore[call-arg]
        self._signed = list(signed)
        self._payload_hash = payload_hash

    def headers_to_sign(self, request: Any) -> Any:
        # Exactly the headers the client listed, nothing dropped or added.
        out = HTTPHeaders()
        for name in self._signed:
            for value in request.headers.get_all(name) or []:
                out.add_header(name, value)
        return out

    def payload(self, request: Any) -> str:
        return self._payload_hash


class _Verifier(_Reconstructed, SigV4Auth):  # type: ignore[misc]
    pass


class _S3Verifier(_Reconstructed, S3SigV4Auth):  # type: ignore[misc]
    pass


def _signed_payload_hash(req: IncomingRequest, parts: SignatureParts) -> str:
    """The payload hash the client put into its canonical request."""
    header = req.header("x-amz-content-sha256")
    if header is not None:
        return header.strip()
    if parts.presigned and parts.service == "s3":
        return UNSIGNED_PAYLOAD
    return hashlib.sha256(req.body).hexdigest()


def _strip_signature_param(raw_query: str) -> str:
    pairs = [p for p in raw_query.split("&") if p and p.partition("=")[0] != "X-Amz-Signature"]
    return "&".join(pairs)


def compute_signature(
    req: IncomingRequest, parts: SignatureParts, secret: str, payload_hash: str
) -> tuple[str, Any]:
    """Recompute the signature with botocore; return it and the signer used."""
    query = _strip_signature_param(req.raw_query) if parts.presigned else req.raw_query
    url = f"https://{_SIGNING_HOST}{req.raw_path or '/'}"
    if query:
        url += "?" + query
    headers = HTTPHeaders()
    signed = [h.strip().lower() for h in parts.signed_headers]
    for name in signed:
        for value in req.header_values(name):
            headers.add_header(name, value)
    aws_request = AWSRequest(method=req.method.upper(), url=url, data=req.body)
    aws_request.headers = headers
    aws_request.context["timestamp"] = parts.timestamp
    cls = _S3Verifier if parts.service == "s3" else _Verifier
    signer = cls(Credentials(parts.access_key_id, secret), parts.service, parts.region, signed,
                 payload_hash)
    canonical = signer.canonical_request(aws_request)
    string_to_sign = signer.string_to_sign(aws_request, canonical)
    signature = signer.signature(string_to_sign, aws_request)

    def sign(text: str) -> str:
        return str(signer.signature(text, aws_request))

    return str(signature), sign


def _lookup(lookup: CredentialLookup, access_key_id: str) -> Credential:
    credential = lookup(access_key_id)
    if credential is None:
        raise SigV4Error(
            "InvalidClientTokenId",
            f"The security token included in the request is invalid (unknown access key {access_key_id})",
            403,
        )
    return credential


def _signature_mismatch(what: str = "request") -> SigV4Error:
    return SigV4Error(
        "SignatureDoesNotMatch",
        f"The {what} signature we calculated does not match the signature you provided. "
        "Check your AWS Secret Access Key and signing method.",
        403,
    )


def check_session_token(req: IncomingRequest, credential: Credential, now: float) -> None:
    """Temporary credentials are valid only with their session token and until they expire;
    a long-term key must not present one (a token that belongs to nothing is an error,
    not something to ignore)."""
    token = req.header("x-amz-security-token")
    if token is None:
        token = dict(parse_qsl(req.raw_query, keep_blank_values=True)).get("X-Amz-Security-Token")
    if credential.session_token_sha256 is None:
        if token is not None:
            raise SigV4Error("InvalidClientTokenId",
                             "The security token included in the request is invalid", 403)
        return
    if token is None:
        raise SigV4Error("InvalidClientTokenId", "Temporary credentials need their session token "
                         "(X-Amz-Security-Token)", 403)
    digest = hashlib.sha256(token.encode()).hexdigest()
    if not hmac.compare_digest(digest, credential.session_token_sha256):
        raise SigV4Error("InvalidClientTokenId", "The security token included in the request is invalid", 403)
    if credential.expires_at is not None and now >= credential.expires_at:
        raise SigV4Error("ExpiredToken", "The security token included in the request is expired", 403)


def verify_request(req: IncomingRequest, lookup: CredentialLookup, now: float, *, region: str,
                   partition: str = "aws") -> AuthResult:
    """Authenticate a request signed with SigV4 for this server's `region`; raise
    `SigV4Error` naming the failed check.

    S3 pre-signed GET/HEAD URLs in the older query form (`AWSAccessKeyId`, `Signature`,
    `Expires`), which boto3 still generates by default for us-east-1, are accepted too."""
    v2 = _v2_query(req)
    if v2 is not None and req.header("authorization") is None:
        return _verify_v2_query(req, v2, lookup, now)
    parts = parse_signature(req)
    check_region(parts, region, partition)
    if "host" not in {h.strip().lower() for h in parts.signed_headers}:
        raise _malformed("SignedHeaders must include 'host'")
    if parts.timestamp[:8] != parts.date:
        raise _malformed(
            f"Credential scope date {parts.date} does not match request date {parts.timestamp[:8]}"
        )
    request_time = amz_timestamp_to_epoch(parts.timestamp)

    credential = _lookup(lookup, parts.access_key_id)
    payload_hash = _signed_payload_hash(req, parts)
    expected, sign = compute_signature(req, parts, credential.secret_access_key, payload_hash)
    if not hmac.compare_digest(expected.encode(), parts.signature.encode()):
        raise _signature_mismatch()
    if not credential.active:
        raise SigV4Error("InactiveAccessKey", f"The access key {parts.access_key_id} is not active", 403)
    check_session_token(req, credential, now)

    if parts.presigned:
        assert parts.expires is not None
        if request_time - now > MAX_SKEW_SECONDS:
            raise SigV4Error("RequestTimeTooSkewed", "The presigned URL is dated in the future", 403)
        if now > request_time + parts.expires:
            raise SigV4Error("RequestExpired", "Request has expired (presigned URL past X-Amz-Expires)", 403)
    elif abs(now - request_time) > MAX_SKEW_SECONDS:
        raise SigV4Error(
            "RequestTimeTooSkewed",
            "The difference between the request time and the current time is too large "
            f"(more than {MAX_SKEW_SECONDS // 60} minutes)",
            403,
        )

    _check_payload_hash(req, parts.service, payload_hash)
    return AuthResult(
        credential=credential,
        service=parts.service,
        region=parts.region,
        timestamp=parts.timestamp,
        scope=f"{parts.date}/{parts.region}/{parts.service}/aws4_request",
        signature=parts.signature,
        payload_hash=payload_hash,
        presigned=parts.presigned,
        sign=sign,
    )


def _v2_query(req: IncomingRequest) -> dict[str, str] | None:
    q = dict(parse_qsl(req.raw_query, keep_blank_values=True))
    if "AWSAccessKeyId" in q and "Signature" in q:
        return q
    return None


class _V2QueryVerifier(HmacV1QueryAuth):  # type: ignore[misc]
    """botocore's S3 query-string (v2) canonicalisation with the URL's own Expires."""

    def __init__(self, credentials: Any, expires: str) -> None:
        super().__init__(credentials)
        self._expires_value = expires

    def _get_date(self) -> str:
        return self._expires_value


def _verify_v2_query(req: IncomingRequest, q: dict[str, str], lookup: CredentialLookup,
                     now: float) -> AuthResult:
    if req.method not in ("GET", "HEAD"):
        raise _malformed("Query-string signature version 2 is only accepted for GET and HEAD")
    expires_text = q.get("Expires", "")
    expires = parse_uint(expires_text, max_digits=12)
    if expires is None:
        raise _malformed("Query-string authentication requires a numeric Expires parameter")
    credential = _lookup(lookup, q["AWSAccessKeyId"])
    headers = HTTPHeaders()
    for name, value in req.headers:
        lname = name.lower()
        if lname in ("content-md5", "content-type") or lname.startswith("x-amz-"):
            headers.add_header(lname, value)
    for name, value in q.items():
        lname = name.lower()
        if lname in ("content-md5", "content-type") or lname.startswith("x-amz-"):
            del headers[lname]
            headers.add_header(lname, value)
    signer = _V2QueryVerifier(Credentials(credential.access_key_id, credential.secret_access_key),
                              expires_text)
    url = f"https://{_SIGNING_HOST}{req.raw_path or '/'}?{req.raw_query}"
    canonical = signer.canonical_string(req.method, urlsplit(url), headers)
    expected = str(signer.sign_string(canonical))
    if not hmac.compare_digest(expected.encode(), q["Signature"].encode()):
        raise _signature_mismatch()
    if not credential.active:
        raise SigV4Error("InactiveAccessKey", f"The access key {credential.access_key_id} is not active", 403)
    check_session_token(req, credential, now)
    if now > expires:
        raise SigV4Error("RequestExpired", "Request has expired (presigned URL past Expires)", 403)
    if expires - now > MAX_PRESIGN_EXPIRES:
        raise _malformed(f"Expires must be within {MAX_PRESIGN_EXPIRES} seconds from now")

    def no_chunks(_: str) -> str:
        raise _malformed("aws-chunked bodies need a SigV4 signature")

    return AuthResult(
        credential=credential,
        service="s3",
        region="",
        timestamp="",
        scope="",
        signature=q["Signature"],
        payload_hash=UNSIGNED_PAYLOAD,
        presigned=True,
        sign=no_chunks,
    )


def _check_payload_hash(req: IncomingRequest, service: str, payload_hash: str) -> None:
    if req.header("x-amz-content-sha256") is None:
        return  # the body hash was part of the signature itself
    if payload_hash == UNSIGNED_PAYLOAD or payload_hash.startswith("STREAMING-"):
        if service != "s3":
            raise SigV4Error(
                "XAmzContentSHA256Mismatch", f"{payload_hash} is only accepted for s3 requests", 400
            )
        if payload_hash.startswith("STREAMING-") and payload_hash not in STREAMING_MODES:
            raise SigV4Error("XAmzContentSHA256Mismatch", f"Unsupported payload mode {payload_hash}", 400)
        return
    if not _HEX64.fullmatch(payload_hash):
        raise SigV4Error("XAmzContentSHA256Mismatch", "x-amz-content-sha256 is not a SHA-256 hex digest", 400)
    actual = hashlib.sha256(req.body).hexdigest()
    if not hmac.compare_digest(actual, payload_hash):
        raise SigV4Error(
            "XAmzContentSHA256Mismatch",
            "The provided 'x-amz-content-sha256' header does not match what was computed.",
            400,
        )


# ------------------------------------------------------------------ aws-chunked


def _incomplete(message: str) -> SigV4Error:
    return SigV4Error("IncompleteBody", message, 400)


def decode_aws_chunked(body: bytes, auth: AuthResult, decoded_length: int | None = None
                       ) -> tuple[bytes, dict[str, str]]:
    """Decode an `aws-chunked` body; verify chunk and trailer signatures when signed.

    Returns the payload and the trailing headers (lower-case names)."""
    signed = auth.payload_hash in (STREAMING_SIGNED, STREAMING_SIGNED_TRAILER)
    trailers_allowed = auth.payload_hash in (STREAMING_UNSIGNED_TRAILER, STREAMING_SIGNED_TRAILER)
    previous = auth.signature
    out = bytearray()
    pos = 0
    while True:
        eol = body.find(b"\r\n", pos)
        if eol < 0:
            raise _incomplete("aws-chunked body ends inside a chunk header")
        header = body[pos:eol].decode("latin-1")
        pos = eol + 2
        size_text, _, ext = header.partition(";")
        size = parse_hex(size_text.strip())
        if size is None:
            raise _incomplete(f"Invalid aws-chunked chunk size {size_text[:32]!r}")
        if pos + size > len(body):
            raise _incomplete("aws-chunked chunk is longer than the body")
        chunk = body[pos : pos + size]
        pos += size
        if signed:
            name, _, chunk_sig = ext.strip().partition("=")
            if name != "chunk-signature" or not chunk_sig:
                raise _incomplete("aws-chunked chunk is missing its chunk-signature")
            string_to_sign = "\n".join([
                "AWS4-HMAC-SHA256-PAYLOAD", auth.timestamp, auth.scope, previous, EMPTY_SHA256,
                hashlib.sha256(chunk).hexdigest(),
            ])
            if not hmac.compare_digest(auth.sign(string_to_sign).encode(), chunk_sig.encode()):
                raise SigV4Error("SignatureDoesNotMatch", "aws-chunked chunk signature does not match", 403)
            previous = chunk_sig
        if size == 0:
            break
        if body[pos : pos + 2] != b"\r\n":
            raise _incomplete("aws-chunked chunk is not terminated by CRLF")
        pos += 2
        out += chunk
    trailers, trailer_sig, canonical = _parse_trailers(body[pos:])
    if trailers and not trailers_allowed:
        raise _incomplete("aws-chunked trailers sent without a trailer payload mode")
    if auth.payload_hash == STREAMING_SIGNED_TRAILER:
        if trailer_sig is None:
            raise _incomplete("aws-chunked trailer signature missing")
        string_to_sign = "\n".join([
            "AWS4-HMAC-SHA256-TRAILER", auth.timestamp, auth.scope, previous,
            hashlib.sha256(canonical.encode()).hexdigest(),
        ])
        if not hmac.compare_digest(auth.sign(string_to_sign).encode(), trailer_sig.encode()):
            raise SigV4Error("SignatureDoesNotMatch", "aws-chunked trailer signature does not match", 403)
    if decoded_length is not None and decoded_length != len(out):
        raise _incomplete(
            f"x-amz-decoded-content-length {decoded_length} does not match the decoded body ({len(out)})"
        )
    return bytes(out), trailers


def _parse_trailers(rest: bytes) -> tuple[dict[str, str], str | None, str]:
    trailers: dict[str, str] = {}
    signature: str | None = None
    canonical = ""
    text = rest.decode("latin-1")
    if not text.endswith("\r\n"):
        raise _incomplete("aws-chunked body is not terminated by CRLF")
    for line in text.split("\r\n"):
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise _incomplete(f"Malformed aws-chunked trailer {line!r}")
        name = name.strip().lower()
        value = value.strip()
        if name == "x-amz-trailer-signature":
            signature = value
            continue
        trailers[name] = value
        canonical += f"{name}:{value}\n"
    return trailers, signature, canonical
