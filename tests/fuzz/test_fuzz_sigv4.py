"""Fuzz target: SigV4 Authorization headers, presigned queries (v4 and v2) and aws-chunked
bodies (server/api/sigv4.py). Only `SigV4Error` may escape: every hostile request is an
authentication failure with a code, never a crash."""

from __future__ import annotations

import contextlib
import time
from urllib.parse import quote

from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import given
from hypothesis import strategies as st

from overair.server.api.contract import Credential
from overair.server.api.sigv4 import (
    STREAMING_MODES,
    AuthResult,
    IncomingRequest,
    SigV4Error,
    decode_aws_chunked,
    peek_service,
    verify_request,
)
from tests.fuzz.hostile import digits_or_not, hostile_bytes, hostile_text

AKID = "AKIAFUZZ000000000000"
KEYS = {AKID: Credential(AKID, "fuzz-secret", "fuzzer", "arn:aws:iam::123456789012:user/fuzzer", True)}
NOW = time.time()
STAMP = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(NOW))

scope_part = st.one_of(hostile_text, st.sampled_from([AKID, STAMP[:8], "us-east-1", "eu-west-1", "iot", "s3",
                                                     "iam", "aws4_request", ""]))
credential = st.lists(scope_part, min_size=0, max_size=6).map("/".join)
signed_headers = st.one_of(st.just("host;x-amz-date"), st.lists(hostile_text, max_size=4).map(";".join))
signature = st.one_of(st.just("0" * 64), hostile_text)


@st.composite
def authorization_header(draw: st.DrawFn) -> str:
    algorithm = draw(st.sampled_from(["AWS4-HMAC-SHA256", "AWS4-HMAC-SHA1", "", "aws4-hmac-sha256"]))
    parts = [f"Credential={draw(credential)}", f"SignedHeaders={draw(signed_headers)}",
             f"Signature={draw(signature)}"]
    extra = draw(st.lists(hostile_text, max_size=2))
    separator = draw(st.sampled_from([", ", ",", " ", ";"]))
    return f"{algorithm} {separator.join(draw(st.permutations(parts + extra)))}"


@st.composite
def header_request(draw: st.DrawFn) -> IncomingRequest:
    headers = [("Host", draw(st.one_of(st.just("127.0.0.1:8080"), st.just("[x"), hostile_text))),
               ("Authorization", draw(authorization_header()))]
    if draw(st.booleans()):
        headers.append(("X-Amz-Date", draw(st.one_of(st.just(STAMP), digits_or_not))))
    else:
        headers.append(("Date", draw(hostile_text)))
    for name in draw(st.lists(st.sampled_from(["x-amz-content-sha256", "x-amz-security-token",
                                               "X-Amz-Date", "Host"]), max_size=3)):
        headers.append((name, draw(st.one_of(hostile_text, st.sampled_from(STREAMING_MODES)))))
    return IncomingRequest(draw(st.sampled_from(["GET", "PUT", "POST", "HEAD"])), "https",
                           draw(st.one_of(st.just("/things"), hostile_text.map(lambda t: "/" + quote(t)))),
                           draw(hostile_text.map(quote)), headers, draw(hostile_bytes))


@st.composite
def presigned_request(draw: st.DrawFn) -> IncomingRequest:
    if draw(st.booleans()):
        pairs = {"X-Amz-Algorithm": draw(st.sampled_from(["AWS4-HMAC-SHA256", "x"])),
                 "X-Amz-Credential": draw(credential),
                 "X-Amz-Date": draw(st.one_of(st.just(STAMP), digits_or_not)),
                 "X-Amz-Expires": draw(digits_or_not), "X-Amz-SignedHeaders": draw(signed_headers),
                 "X-Amz-Signature": draw(signature)}
    else:
        pairs = {"AWSAccessKeyId": draw(st.sampled_from([AKID, "unknown"])), "Signature": draw(signature),
                 "Expires": draw(digits_or_not)}
    names = draw(st.lists(st.sampled_from(sorted(pairs)), unique=True, min_size=len(pairs) - 1))
    query = "&".join(f"{quote(n)}={quote(pairs[n])}" for n in names)
    return IncomingRequest(draw(st.sampled_from(["GET", "HEAD", "PUT"])), "https", "/bucket/key", query,
                           [("Host", draw(st.one_of(st.just("h"), hostile_text)))], b"")


latin1_text = st.text(alphabet=st.characters(max_codepoint=0xFF, exclude_characters="\r\n"), max_size=30)


@st.composite
def botocore_signed(draw: st.DrawFn) -> IncomingRequest:
    """A correctly signed request carrying hostile headers, path and query: it gets past
    parsing into canonicalisation, the payload hash and the session-token checks."""
    service = draw(st.sampled_from(["iot", "s3", "iam", "acm"]))
    path = "/" + quote(draw(hostile_text), safe="/")
    query = "&".join(f"{quote(k)}={quote(v)}" for k, v in draw(st.lists(st.tuples(hostile_text, hostile_text),
                                                                           max_size=3)))
    headers = {name: draw(latin1_text) for name in draw(st.lists(st.sampled_from(
        ["Host", "x-amz-content-sha256", "x-amz-security-token", "x-amz-decoded-content-length",
         "Content-Encoding", "X-Fuzz"]), unique=True, max_size=4))}
    body = draw(hostile_bytes)
    request = AWSRequest(method=draw(st.sampled_from(["GET", "PUT", "POST"])),
                         url=f"https://h{path}" + (f"?{query}" if query else ""), data=body, headers=headers)
    signer = S3SigV4Auth if service == "s3" else SigV4Auth
    signer(Credentials(AKID, "fuzz-secret"), service, draw(st.sampled_from(["us-east-1", "eu-west-1"]))
           ).add_auth(request)
    prepared = request.prepare()
    raw_path, _, raw_query = prepared.url.removeprefix("https://h").partition("?")
    headers_sent = [(k, v.decode("latin-1") if isinstance(v, bytes) else v)
                    for k, v in prepared.headers.items()]
    return IncomingRequest(prepared.method, "https", raw_path, raw_query, headers_sent, body)


@given(st.one_of(header_request(), presigned_request(), botocore_signed()))
def test_fuzz_sigv4_requests_raise_only_sigv4_errors(request: IncomingRequest) -> None:
    peek_service(request)  # never raises
    for region in ("us-east-1", "eu-west-1"):
        with contextlib.suppress(SigV4Error):
            verify_request(request, KEYS.get, NOW, region=region)


@given(st.sampled_from(STREAMING_MODES), st.one_of(
    hostile_bytes,
    st.lists(st.tuples(digits_or_not, hostile_text, hostile_bytes), max_size=4).map(
        lambda chunks: b"".join(f"{size};{ext}\r\n".encode() + data + b"\r\n" for size, ext, data in chunks)
        + b"0\r\n\r\n")),
    st.one_of(st.none(), st.integers(min_value=0, max_value=10**20)))
def test_fuzz_aws_chunked_bodies_raise_only_sigv4_errors(mode: str, body: bytes,
                                                         declared: int | None) -> None:
    auth = AuthResult(credential=KEYS[AKID], service="s3", region="us-east-1", timestamp=STAMP,
                      scope=f"{STAMP[:8]}/us-east-1/s3/aws4_request", signature="0" * 64, payload_hash=mode,
                      presigned=False, sign=lambda text: "0" * 64)
    with contextlib.suppress(SigV4Error):
        decode_aws_chunked(body, auth, declared)
