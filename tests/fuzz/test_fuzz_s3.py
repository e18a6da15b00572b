"""Fuzz target: what the S3 edge parses beyond the protocol (server/api/s3*.py): byte
ranges, conditional headers, flexible checksums and Content-MD5, aws-chunked bodies
with trailers and a decoded length, CompleteMultipartUpload XML, bucket policies.
Only `ApiError` (and the 304 signal `NotModified`) may escape."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overair.server.api.contract import ApiError, Caller
from overair.server.api.models import HttpRequest, load_services
from overair.server.api.s3 import S3Api, decode_body, parse_range
from overair.server.api.s3_conditions import NotModified, check_preconditions
from overair.server.api.sigv4 import STREAMING_MODES, UNSIGNED_PAYLOAD, AuthResult, IncomingRequest
from overair.server.storage.db import Database, migrate
from overair.server.storage.objects import ObjectStore
from tests.fuzz.hostile import digits_or_not, hostile_bytes, hostile_text

S3 = load_services()["s3"]
CALLER = Caller("AKIAFUZZ", "arn:aws:iam::123456789012:user/fuzz", "fuzz", "127.0.0.1")
latin1 = st.text(alphabet=st.characters(max_codepoint=0xFF), max_size=40)
http_date = st.one_of(latin1, st.sampled_from([
    "Mon, 01 Jan 2024 00:00:00 GMT", "Tue, 31 Feb 0000 99:99:99 +9999", "99999999999999999999",
    "2024-01-01T00:00:00Z", "-1e300"]))
CONDITIONS = ["If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since", "Range",
              "x-amz-checksum-mode", "partNumber"]
CHECKSUM_HEADERS = ["x-amz-checksum-crc32", "x-amz-checksum-sha256", "x-amz-checksum-crc64nvme",
                    "x-amz-checksum-md5x", "content-md5", "x-amz-decoded-content-length", "x-amz-trailer",
                    "content-encoding"]


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Api]:
    root = tmp_path_factory.mktemp("fuzz-s3")
    db = Database(f"sqlite:///{root / 'db.sqlite'}")
    migrate(db.engine)
    api = S3Api(ObjectStore(db, Path(root) / "objects"), region="us-east-1")
    api.call("CreateBucket", {"Bucket": "fuzz"}, CALLER)
    api.call("PutObject", {"Bucket": "fuzz", "Key": "k", "Body": b"0123456789"}, CALLER)
    yield api
    db.close()


@given(st.one_of(latin1, st.tuples(digits_or_not, digits_or_not).map(lambda r: f"bytes={r[0]}-{r[1]}")),
       st.integers(min_value=0, max_value=2**40))
def test_fuzz_ranges_are_a_window_or_invalid_range(spec: str, size: int) -> None:
    try:
        window = parse_range(spec, size)
    except ApiError as error:
        window, refused = None, error.code
    else:
        refused = "InvalidRange"
    assert refused == "InvalidRange"
    if window is not None:
        assert 0 <= window[0] <= window[1] < size


@given(st.dictionaries(st.sampled_from(CONDITIONS), http_date, max_size=4))
def test_fuzz_get_object_headers_parse_and_decide(headers: dict[str, str]) -> None:
    request = HttpRequest("GET", "/fuzz/k", (), {k.lower(): v for k, v in headers.items()}, b"")
    try:
        params = S3.parse(S3.resolve(request), request)
        check_preconditions(params, '"abc"', time.time())
    except (ApiError, NotModified):
        pass


def _auth(mode: str) -> AuthResult:
    return AuthResult(credential=None, service="s3", region="us-east-1",  # type: ignore[arg-type]
                      timestamp="20260101T000000Z", scope="20260101/us-east-1/s3/aws4_request",
                      signature="0" * 64, payload_hash=mode, presigned=False, sign=lambda _text: "0" * 64)


@given(st.sampled_from([UNSIGNED_PAYLOAD, *STREAMING_MODES]),
       st.dictionaries(st.sampled_from(CHECKSUM_HEADERS), latin1, max_size=4),
       st.one_of(hostile_bytes, st.lists(st.tuples(digits_or_not, hostile_bytes), max_size=3).map(
           lambda chunks: b"".join(f"{n}\r\n".encode() + d + b"\r\n" for n, d in chunks)
           + b"0\r\n" + b"x-amz-checksum-crc32:AAAAAA==\r\n\r\n")),
       st.sampled_from(["", "uploadId=u"]))
def test_fuzz_bodies_checksums_and_trailers_raise_only_api_errors(mode: str, headers: dict[str, str],
                                                                   body: bytes, query: str) -> None:
    request = IncomingRequest("PUT", "https", "/fuzz/k", query, list(headers.items()), body)
    with contextlib.suppress(ApiError):
        decode_body(request, _auth(mode))


xml_body = st.one_of(
    hostile_bytes,
    st.lists(st.tuples(st.one_of(digits_or_not, st.just("")), hostile_text), max_size=5).map(
        lambda parts: ("<CompleteMultipartUpload>" + "".join(
            f"<Part><PartNumber>{n}</PartNumber><ETag>{e}</ETag></Part>" for n, e in parts)
            + "</CompleteMultipartUpload>").encode("utf-8")),
    st.integers(1, 500).map(lambda n: b"<CompleteMultipartUpload>" + b"<Part>" * n + b"</Part>" * n
                            + b"</CompleteMultipartUpload>"),
)


@given(xml_body)
def test_fuzz_complete_multipart_upload_xml(body: bytes) -> None:
    request = HttpRequest("POST", "/fuzz/k", (("uploadId", "u"),), {}, body)
    status = 400
    try:
        S3.parse(S3.resolve(request), request)
    except ApiError as error:
        status = error.status
    assert status == 400


policy = st.one_of(
    hostile_text,
    st.integers(1, 2000).map(lambda n: '{"Statement": ' + "[" * n + "]" * n + "}"),
    st.recursive(st.one_of(st.none(), hostile_text, st.integers(-(10**50), 10**50)),
                 lambda c: st.lists(c, max_size=3) | st.dictionaries(hostile_text, c, max_size=3),
                 max_leaves=8).map(lambda v: __import__("json").dumps({"Statement": v})),
)


@given(policy)
def test_fuzz_bucket_policies_raise_only_api_errors(s3: S3Api, text: str) -> None:
    status = 204
    try:
        s3.call("PutBucketPolicy", {"Bucket": "fuzz", "Policy": text}, CALLER)
    except ApiError as error:
        status = error.status
    assert status in (204, 400)
