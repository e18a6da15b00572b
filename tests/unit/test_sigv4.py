"""SigV4 verification: AWS's published examples, requests signed by botocore, and every
rejection path with its error code."""

from __future__ import annotations

import calendar
import hashlib
import hmac
import time
from urllib.parse import quote, urlsplit

import pytest
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from overair.server.api.contract import Credential
from overair.server.api.sigv4 import (
    AuthResult,
    IncomingRequest,
    SigV4Error,
    amz_timestamp_to_epoch,
    decode_aws_chunked,
    peek_service,
    verify_request,
)

AKID = "AKIAIOSFODNN7EXAMPLE"
REGION = "us-east-1"  # the region of AWS's published examples, and of the servers here
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
EMPTY = hashlib.sha256(b"").hexdigest()
KEYS = {
    AKID: Credential(AKID, SECRET, "alice", "arn:aws:iam::123456789012:user/alice", True),
    "AKIDEXAMPLE": Credential("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "ex", "arn:ex",
                              True),
    "AKIAINACTIVE": Credential("AKIAINACTIVE", "inactive-secret", "bob", "arn:aws:iam::123456789012:user/bob",
                               False),
}


def at(timestamp: str) -> float:
    return float(calendar.timegm(time.strptime(timestamp, "%Y%m%dT%H%M%SZ")))


def code_of(req: IncomingRequest, now: float) -> str:
    with pytest.raises(SigV4Error) as exc:
        verify_request(req, KEYS.get, now, region=REGION)
    return exc.value.code


# ------------------------------------------------------------- AWS published examples


VANILLA_SIGNATURE = "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"


def vanilla(signature: str = VANILLA_SIGNATURE) -> IncomingRequest:
    """`get-vanilla` from the AWS SigV4 test suite."""
    return IncomingRequest("GET", "https", "/", "", [
        ("Host", "example.amazonaws.com"),
        ("X-Amz-Date", "20150830T123600Z"),
        ("Authorization", "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
                          f"SignedHeaders=host;x-amz-date, Signature={signature}"),
    ], b"")


def test_aws_test_suite_get_vanilla() -> None:
    result = verify_request(vanilla(), KEYS.get, at("20150830T123600Z"), region=REGION)
    assert (result.service, result.region, result.presigned) == ("service", "us-east-1", False)
    assert result.credential.access_key_id == "AKIDEXAMPLE"
    bad = vanilla("5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf32")
    assert code_of(bad, at("20150830T123600Z")) == "SignatureDoesNotMatch"


def s3_get_example(range_header: str = "bytes=0-9") -> IncomingRequest:
    """The GET Object example of the S3 SigV4 documentation."""
    return IncomingRequest("GET", "https", "/test.txt", "", [
        ("Host", "examplebucket.s3.amazonaws.com"),
        ("Range", range_header),
        ("x-amz-content-sha256", EMPTY),
        ("x-amz-date", "20130524T000000Z"),
        ("Authorization", f"AWS4-HMAC-SHA256 Credential={AKID}/20130524/us-east-1/s3/aws4_request,"
                          "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,"
                          "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"),
    ], b"")


def test_s3_documentation_get_object() -> None:
    result = verify_request(s3_get_example(), KEYS.get, at("20130524T000000Z") + 60, region=REGION)
    assert result.service == "s3"
    assert result.credential.principal_name == "alice"
    assert code_of(s3_get_example("bytes=0-10"), at("20130524T000000Z")) == "SignatureDoesNotMatch"


PRESIGNED_QUERY = (
    "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3"
    "%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
    "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
)


def presigned_example(path: str = "/test.txt", query: str = PRESIGNED_QUERY) -> IncomingRequest:
    return IncomingRequest("GET", "https", path, query, [("Host", "examplebucket.s3.amazonaws.com")], b"")


def test_s3_documentation_presigned_url() -> None:
    start = at("20130524T000000Z")
    result = verify_request(presigned_example(), KEYS.get, start + 3600, region=REGION)
    assert result.presigned
    assert code_of(presigned_example(), start + 86401) == "RequestExpired"
    assert code_of(presigned_example(), start - 16 * 60) == "RequestTimeTooSkewed"
    assert code_of(presigned_example("/other.txt"), start) == "SignatureDoesNotMatch"
    longer = PRESIGNED_QUERY.replace("X-Amz-Expires=86400", "X-Amz-Expires=86401")
    assert code_of(presigned_example(query=longer), start) == "SignatureDoesNotMatch"
    too_long = PRESIGNED_QUERY.replace("X-Amz-Expires=86400", "X-Amz-Expires=604801")
    assert code_of(presigned_example(query=too_long), start) == "IncompleteSignature"


CHUNK_SIGNATURES = (
    "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
    "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
    "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
)
SEED = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"


def chunked_example(body: bytes) -> IncomingRequest:
    """The chunked PUT Object example of the S3 documentation (66560 bytes of 'a')."""
    return IncomingRequest("PUT", "https", "/examplebucket/chunkObject.txt", "", [
        ("Host", "s3.amazonaws.com"),
        ("x-amz-date", "20130524T000000Z"),
        ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
        ("Authorization", f"AWS4-HMAC-SHA256 Credential={AKID}/20130524/us-east-1/s3/aws4_request,"
                          "SignedHeaders=content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;"
                          f"x-amz-decoded-content-length;x-amz-storage-class,Signature={SEED}"),
        ("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"),
        ("Content-Encoding", "aws-chunked"),
        ("x-amz-decoded-content-length", "66560"),
        ("Content-Length", "66824"),
    ], body)


def chunked_body(first: bytes = b"a" * 65536) -> bytes:
    s1, s2, s3 = (s.encode() for s in CHUNK_SIGNATURES)
    return (b"10000;chunk-signature=" + s1 + b"\r\n" + first + b"\r\n"
            + b"400;chunk-signature=" + s2 + b"\r\n" + b"a" * 1024 + b"\r\n"
            + b"0;chunk-signature=" + s3 + b"\r\n\r\n")


def test_s3_documentation_chunked_upload() -> None:
    body = chunked_body()
    assert len(body) == 66824
    auth = verify_request(chunked_example(body), KEYS.get, at("20130524T000000Z"), region=REGION)
    assert auth.streaming
    data, trailers = decode_aws_chunked(body, auth, 66560)
    assert (data, trailers) == (b"a" * 66560, {})

    tampered = chunked_body(b"a" * 65535 + b"b")
    auth = verify_request(chunked_example(tampered), KEYS.get, at("20130524T000000Z"), region=REGION)
    with pytest.raises(SigV4Error) as exc:
        decode_aws_chunked(tampered, auth, 66560)
    assert exc.value.code == "SignatureDoesNotMatch"
    with pytest.raises(SigV4Error) as exc:
        decode_aws_chunked(body, auth, 66561)
    assert exc.value.code == "IncompleteBody"
    with pytest.raises(SigV4Error) as exc:
        decode_aws_chunked(body[:-40], auth, 66560)
    assert exc.value.code == "IncompleteBody"


# ------------------------------------------------------------ requests signed by botocore


def incoming(request: AWSRequest) -> IncomingRequest:
    """What the server receives for a request botocore signed."""
    prepared = request.prepare()
    url = urlsplit(prepared.url)
    headers = [("Host", url.netloc)]
    for name, value in prepared.headers.items():
        headers.append((name, value.decode() if isinstance(value, bytes) else value))
    body = prepared.body or b""
    return IncomingRequest(prepared.method, url.scheme, url.path, url.query, headers,
                           body.encode() if isinstance(body, str) else body)


def signed(method: str, url: str, *, service: str = "iot", body: bytes = b"", secret: str = SECRET,
           akid: str = AKID, headers: dict[str, str] | None = None, unsigned_payload: bool = False,
           region: str = REGION) -> IncomingRequest:
    request = AWSRequest(method=method, url=url, data=body, headers=headers or {})
    if unsigned_payload:
        request.context["payload_signing_enabled"] = False
        request.context["client_config"] = Config(s3={"payload_signing_enabled": False})
    signer = S3SigV4Auth if service == "s3" else SigV4Auth
    signer(Credentials(akid, secret), service, region).add_auth(request)
    return incoming(request)


@pytest.mark.parametrize(("service", "url"), [
    ("iot", "https://api.example:8443/things/a%20b%2Bc/jobs?maxResults=5&nextToken=x%2Fy&status=QUEUED"),
    ("iot", "http://127.0.0.1:9000/thing-groups/addThingToThingGroup"),
    ("s3", "https://host/bucket/dir%20x/%C3%BC%2Bplus.bin?versionId=abc&partNumber=1"),
    ("s3", "https://host/bucket?list-type=2&prefix=&delimiter=%2F&encoding-type=url"),
    ("s3", "https://host/bucket?versioning"),
])
def test_botocore_signed_requests_verify(service: str, url: str) -> None:
    req = signed("PUT", url, service=service, body=b'{"x": 1}')
    result = verify_request(req, KEYS.get, time.time(), region=REGION)
    assert (result.service, result.region) == (service, REGION)
    assert peek_service(req) == service


def test_presigned_by_botocore() -> None:
    request = AWSRequest(method="GET", url="https://host/bucket/a%20key.bin?versionId=v1")
    S3SigV4QueryAuth(Credentials(AKID, SECRET), "s3", "us-east-1", expires=60).add_auth(request)
    req = incoming(request)
    assert verify_request(req, KEYS.get, time.time(), region=REGION).presigned
    assert code_of(req, time.time() + 61) == "RequestExpired"


def test_rejections() -> None:
    now = time.time()
    url = "https://host/things/t1"
    assert code_of(IncomingRequest("GET", "https", "/things/t1", "", [("Host", "host")], b""), now) == (
        "MissingAuthenticationToken")
    assert code_of(signed("GET", url, secret="wrong"), now) == "SignatureDoesNotMatch"
    assert code_of(signed("GET", url, akid="AKIAUNKNOWN"), now) == "InvalidClientTokenId"
    inactive = signed("GET", url, akid="AKIAINACTIVE", secret="inactive-secret")
    assert code_of(inactive, now) == "InactiveAccessKey"
    assert code_of(signed("GET", url), now + 20 * 60) == "RequestTimeTooSkewed"
    assert code_of(signed("GET", url), now - 20 * 60) == "RequestTimeTooSkewed"
    verify_request(signed("GET", url), KEYS.get, now + 14 * 60, region=REGION)


def test_malformed_authorization() -> None:
    now = time.time()
    good = signed("GET", "https://host/things")
    auth = dict(good.headers)["Authorization"]
    other = [(k, v) for k, v in good.headers if k != "Authorization"]

    def with_auth(value: str) -> IncomingRequest:
        return IncomingRequest("GET", "https", "/things", "", [*other, ("Authorization", value)], b"")

    assert code_of(with_auth("AWS AKIA:sig"), now) == "IncompleteSignature"
    assert code_of(with_auth(auth.replace("SignedHeaders=", "Signed=")), now) == "IncompleteSignature"
    assert code_of(with_auth(auth.replace("/aws4_request", "/aws5_request")), now) == "IncompleteSignature"
    no_host = auth.replace("SignedHeaders=host;", "SignedHeaders=")
    assert code_of(with_auth(no_host), now) == "IncompleteSignature"
    no_date = IncomingRequest("GET", "https", "/things", "",
                              [(k, v) for k, v in good.headers if k != "X-Amz-Date"], b"")
    assert code_of(no_date, now) == "IncompleteSignature"


def test_body_changed_after_signing() -> None:
    now = time.time()
    req = signed("POST", "https://host/things/t1", body=b'{"a": 1}')
    changed = IncomingRequest(req.method, req.scheme, req.raw_path, req.raw_query, req.headers, b'{"a": 2}')
    assert code_of(changed, now) == "SignatureDoesNotMatch"

    s3req = signed("PUT", "https://host/b/k", service="s3", body=b"payload")
    s3changed = IncomingRequest(s3req.method, s3req.scheme, s3req.raw_path, s3req.raw_query, s3req.headers,
                                b"PAYLOAD")
    assert code_of(s3changed, now) == "XAmzContentSHA256Mismatch"


def test_unsigned_payload_only_for_s3() -> None:
    now = time.time()
    ok = signed("PUT", "https://host/b/k", service="s3", body=b"anything", unsigned_payload=True)
    assert dict(ok.headers)["X-Amz-Content-SHA256"] == "UNSIGNED-PAYLOAD"
    assert verify_request(ok, KEYS.get, now, region=REGION).payload_hash == "UNSIGNED-PAYLOAD"
    iot = signed("POST", "https://host/things/t", service="iot", body=b"{}", unsigned_payload=True)
    assert dict(iot.headers)["X-Amz-Content-SHA256"] == "UNSIGNED-PAYLOAD"
    assert code_of(iot, now) == "XAmzContentSHA256Mismatch"


# ------------------------------------------------------------- aws-chunked with trailers


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def _signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = _hmac(("AWS4" + secret).encode(), date)
    return _hmac(_hmac(_hmac(key, region), service), "aws4_request")


def streaming_auth(mode: str, seed: str = "0" * 64) -> AuthResult:
    key = _signing_key(SECRET, "20260101", "us-east-1", "s3")
    def sign(text: str) -> str:
        return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()

    return AuthResult(credential=KEYS[AKID], service="s3", region="us-east-1", timestamp="20260101T000000Z",
                      scope="20260101/us-east-1/s3/aws4_request", signature=seed, payload_hash=mode,
                      presigned=False, sign=sign)


def test_unsigned_trailer_body() -> None:
    auth = streaming_auth("STREAMING-UNSIGNED-PAYLOAD-TRAILER")
    body = b"5\r\nhello\r\n6\r\n world\r\n0\r\nx-amz-checksum-crc32:DUoRhQ==\r\n\r\n"
    assert decode_aws_chunked(body, auth, 11) == (b"hello world", {"x-amz-checksum-crc32": "DUoRhQ=="})
    with pytest.raises(SigV4Error) as exc:
        decode_aws_chunked(b"zz\r\nhello\r\n0\r\n\r\n", auth)
    assert exc.value.code == "IncompleteBody"
    with pytest.raises(SigV4Error) as exc:
        decode_aws_chunked(b"5\r\nhelloXX0\r\n\r\n", auth)
    assert exc.value.code == "IncompleteBody"


def test_signed_trailer_body() -> None:
    """Chunk and trailer signatures computed independently of the implementation."""
    auth = streaming_auth("STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER", seed="ab" * 32)
    key = _signing_key(SECRET, "20260101", "us-east-1", "s3")

    def chunk_sig(previous: str, data: bytes) -> str:
        sts = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", "20260101T000000Z", "20260101/us-east-1/s3/aws4_request",
                         previous, EMPTY, hashlib.sha256(data).hexdigest()])
        return hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()

    s1 = chunk_sig("ab" * 32, b"firmware")
    s2 = chunk_sig(s1, b"")
    trailer = "x-amz-checksum-sha256:abc=\n"
    sts = "\n".join(["AWS4-HMAC-SHA256-TRAILER", "20260101T000000Z", "20260101/us-east-1/s3/aws4_request", s2,
                     hashlib.sha256(trailer.encode()).hexdigest()])
    trailer_sig = hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()
    body = (f"8;chunk-signature={s1}\r\nfirmware\r\n0;chunk-signature={s2}\r\n"
            f"x-amz-checksum-sha256:abc=\r\nx-amz-trailer-signature:{trailer_sig}\r\n\r\n").encode()
    assert decode_aws_chunked(body, auth, 8) == (b"firmware", {"x-amz-checksum-sha256": "abc="})
    forged = body.replace(b"x-amz-checksum-sha256:abc=", b"x-amz-checksum-sha256:xyz=")
    with pytest.raises(SigV4Error) as exc:
        decode_aws_chunked(forged, auth, 8)
    assert exc.value.code == "SignatureDoesNotMatch"


# ------------------------------------------------------------- region of the credential scope


def refusal(req: IncomingRequest, *, region: str = REGION) -> SigV4Error:
    with pytest.raises(SigV4Error) as exc:
        verify_request(req, KEYS.get, time.time(), region=region)
    return exc.value


def test_o1_a_scope_for_another_region_is_refused_as_aws_refuses_it() -> None:
    iot = refusal(signed("GET", "https://host/things", region="eu-west-1"))
    assert (iot.code, iot.status) == ("InvalidSignatureException", 403)
    assert "not 'eu-west-1'" in iot.message
    iam = refusal(signed("POST", "https://host/", service="iam", body=b"Action=ListUsers",
                         region="eu-west-1"))
    assert (iam.code, iam.status) == ("SignatureDoesNotMatch", 403)
    s3 = refusal(signed("GET", "https://host/bucket/key", service="s3", region="eu-west-1"))
    assert (s3.code, s3.status, s3.fields) == ("AuthorizationHeaderMalformed", 400, (("Region", REGION),))
    request = AWSRequest(method="GET", url="https://host/bucket/key")
    S3SigV4QueryAuth(Credentials(AKID, SECRET), "s3", "eu-west-1", expires=60).add_auth(request)
    presigned = refusal(incoming(request))
    assert (presigned.code, presigned.status) == ("AuthorizationQueryParametersError", 400)
    assert "the region 'eu-west-1' is wrong; expecting 'us-east-1'" in presigned.message


def test_o1_global_services_also_accept_their_global_signing_region() -> None:
    now = time.time()
    for service in ("iam", "sts"):
        for scope in ("eu-west-1", "us-east-1"):
            req = signed("POST", "https://host/", service=service, body=b"Action=GetUser", region=scope)
            assert verify_request(req, KEYS.get, now, region="eu-west-1").region == scope
        other = signed("POST", "https://host/", service=service, body=b"Action=GetUser", region="us-west-2")
        assert refusal(other, region="eu-west-1").code == "SignatureDoesNotMatch"
    # Only iam and sts: a regional service signed for us-east-1 is refused by an eu-west-1 server.
    regional = refusal(signed("GET", "https://host/things"), region="eu-west-1")
    assert regional.code == "InvalidSignatureException"


# ------------------------------------------------------------- hostile numbers and hosts


def test_no_500_unicode_digits_in_presigned_expiry_are_malformed() -> None:
    request = AWSRequest(method="GET", url="https://host/bucket/key")
    S3SigV4QueryAuth(Credentials(AKID, SECRET), "s3", REGION, expires=60).add_auth(request)
    req = incoming(request)
    for expires in ("\u00b2", "\u0661\u0662\u0660", "+60", "60 ", "1_0", "9" * 5000):
        query = req.raw_query.replace("X-Amz-Expires=60", f"X-Amz-Expires={quote(expires)}")
        assert code_of(IncomingRequest("GET", "https", req.raw_path, query, req.headers, b""),
                       time.time()) == "IncompleteSignature", expires
    v2 = IncomingRequest("GET", "https", "/bucket/key", "AWSAccessKeyId=AKIA&Signature=x&Expires=%C2%B2",
                         [("Host", "host")], b"")
    assert code_of(v2, time.time()) == "IncompleteSignature"


def test_no_500_hostile_dates() -> None:
    for stamp in ("\u0662" * 8 + "T000000Z", "20260101T000000Z\n", "99999999T999999Z"):
        with pytest.raises(SigV4Error) as exc:
            amz_timestamp_to_epoch(stamp)
        assert exc.value.code == "IncompleteSignature"
    good = signed("GET", "https://host/things")
    headers = [(k, v) for k, v in good.headers if k != "X-Amz-Date"]
    for date in ("Mon, 01 Jan 99999 00:00:00 GMT", "\u0661", "Tue, 31 Feb 0000 99:99:99 +9999"):
        req = IncomingRequest("GET", "https", "/things", "", [*headers, ("Date", date)], b"")
        assert code_of(req, time.time()) == "IncompleteSignature", date


def test_no_500_a_hostile_host_header_is_only_a_signed_header() -> None:
    now = time.time()
    # Signed with Host "[x" (an unterminated IPv6 literal): verifies like any other host.
    with_host = signed("GET", "https://host/things", headers={"Host": "[x"})
    only_signed_host = [(k, v) for k, v in with_host.headers if (k, v) != ("Host", "host")]
    verify_request(IncomingRequest("GET", "https", "/things", "", only_signed_host, b""), KEYS.get, now,
                   region=REGION)
    good = signed("GET", "https://host/things")
    swapped = [(k, "[x" if k == "Host" else v) for k, v in good.headers]
    req = IncomingRequest("GET", "https", "/things", "", swapped, b"")
    assert code_of(req, now) == "SignatureDoesNotMatch"


def test_no_500_unicode_digits_in_a_chunk_size() -> None:
    auth = streaming_auth("STREAMING-UNSIGNED-PAYLOAD-TRAILER")
    for size in ("\u0665", "5_0", "-5", "f" * 17):
        with pytest.raises(SigV4Error) as exc:
            decode_aws_chunked(f"{size}\r\nhello\r\n0\r\n\r\n".encode(), auth)
        assert exc.value.code == "IncompleteBody", size
