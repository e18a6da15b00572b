"""Hostile input to the real server's operator API answers a clear 4xx, never a 500
(issue 12 finding 10): numbers in Unicode digits or thousands of digits, JSON and XML
nested past every bound, hostile Host headers, cron and placeholder text that used to
crash a parser, names with a trailing newline. Each request is signed with the
administrator's key, so it reaches the parsers behind authentication."""

from __future__ import annotations

import configparser
import json
from collections.abc import Callable, Iterator
from urllib.parse import quote

import boto3
import botocore.config
import pytest
import urllib3
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.server_harness import RunningServer, running_server

DEEP = 1000


class Signed:
    """Raw requests signed like an SDK's, to send what no SDK would."""

    def __init__(self, srv: RunningServer) -> None:
        parser = configparser.ConfigParser()
        parser.read(srv.settings.paths.credentials)
        self.credentials = Credentials(parser["default"]["aws_access_key_id"],
                                       parser["default"]["aws_secret_access_key"])
        self.endpoint = srv.endpoint
        self.region = srv.settings.region
        self.pool = urllib3.PoolManager()

    def send(self, method: str, path: str, *, service: str, body: bytes = b"",
             headers: dict[str, str] | None = None, payload_hash: str | None = None
             ) -> tuple[int, dict[str, str], bytes]:
        request = AWSRequest(method=method, url=self.endpoint + path, data=body, headers=headers or {})
        signer = S3SigV4Auth if service == "s3" else SigV4Auth
        if payload_hash is not None:  # e.g. an aws-chunked mode botocore would not choose here
            signer = type("Streaming", (S3SigV4Auth,), {"payload": lambda _self, _request: payload_hash})
        signer(self.credentials, service, self.region).add_auth(request)
        prepared = request.prepare()
        response = self.pool.request(prepared.method, prepared.url, body=prepared.body or b"",
                                     headers=dict(prepared.headers.items()), retries=False, redirect=False)
        return response.status, {k.lower(): v for k, v in response.headers.items()}, response.data


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("hostile") / "server") as server:
        server.client("iot").create_thing(thingName="hostile-target")
        s3 = server.client("s3")
        s3.create_bucket(Bucket="hostile")
        s3.put_object(Bucket="hostile", Key="firmware.bin", Body=b"0123456789")
        yield server


@pytest.fixture(scope="module")
def signed(srv: RunningServer) -> Signed:
    return Signed(srv)


def error_code(status: int, headers: dict[str, str], body: bytes) -> str:
    if "x-amzn-errortype" in headers:
        return headers["x-amzn-errortype"]
    text = body.decode("utf-8", "replace")
    if text.startswith("{"):
        return str(json.loads(text).get("__type") or json.loads(text).get("code"))
    return text.split("<Code>", 1)[1].split("</Code>", 1)[0] if "<Code>" in text else str(status)


def test_no_500_unicode_digits_in_a_presigned_expiry(srv: RunningServer, signed: Signed) -> None:
    session = boto3.session.Session(aws_access_key_id=signed.credentials.access_key,
                                    aws_secret_access_key=signed.credentials.secret_key,
                                    region_name=srv.settings.region)
    sigv4_query = botocore.config.Config(signature_version="s3v4", s3={"addressing_style": "path"})
    s3 = session.client("s3", endpoint_url=srv.endpoint, config=sigv4_query)
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "hostile", "Key": "firmware.bin"},
                                    ExpiresIn=60)
    assert urllib3.request("GET", url).status == 200
    for digits in ("\u00b2", "\u0661\u0662\u0660", "9" * 5000):
        hostile = url.replace("X-Amz-Expires=60", "X-Amz-Expires=" + quote(digits))
        response = urllib3.request("GET", hostile, retries=False)
        assert response.status == 400, digits
        assert b"<Code>IncompleteSignature</Code>" in response.data


def test_no_500_json_nested_a_thousand_deep(signed: Signed) -> None:
    deep = b'{"attributePayload": {"attributes": ' + b"[" * DEEP + b"]" * DEEP + b"}}"
    status, headers, body = signed.send("POST", "/things/deep-thing", service="iot", body=deep)
    assert (status, error_code(status, headers, body)) == (400, "SerializationException")
    deep_acm = b'{"CertificateArn": ' + b"[" * DEEP + b"]" * DEEP + b"}"
    acm = signed.send("POST", "/", service="acm", body=deep_acm,
                      headers={"X-Amz-Target": "CertificateManager.DescribeCertificate",
                               "Content-Type": "application/x-amz-json-1.1"})
    assert (acm[0], error_code(*acm)) == (400, "SerializationException")


def test_no_500_job_documents_and_bucket_policies_nested_a_thousand_deep(srv: RunningServer) -> None:
    iot, s3 = srv.client("iot"), srv.client("s3")
    target = iot.describe_thing(thingName="hostile-target")["thingArn"]
    with pytest.raises(ClientError) as job:
        iot.create_job(jobId="deep-document", targets=[target], document="[" * DEEP + "]" * DEEP)
    assert job.value.response["Error"]["Code"] == "InvalidRequestException"
    policy = '{"Version": "2012-10-17", "Statement": ' + "[" * DEEP + "]" * DEEP + "}"
    with pytest.raises(ClientError) as bucket:
        s3.put_bucket_policy(Bucket="hostile", Policy=policy)
    assert bucket.value.response["Error"]["Code"] == "MalformedPolicy"


def test_no_500_a_hostile_host_header(signed: Signed) -> None:
    status, _, body = signed.send("GET", "/things", service="iot", headers={"Host": "[x"})
    assert status == 200, body


def test_no_500_a_range_of_five_thousand_digits_serves_the_object(signed: Signed) -> None:
    # Header values are Latin-1 on the wire: U+00B2 (superscript two) passes str.isdigit().
    for spec in ("bytes=0-" + "9" * 5000, "bytes=" + "9" * 5000 + "-", "bytes=-\u00b2", "bytes=\u00b9-2"):
        status, _, body = signed.send("GET", "/hostile/firmware.bin", service="s3", headers={"Range": spec})
        assert (status, body) == (200, b"0123456789"), spec
    status, _, body = signed.send("GET", "/hostile/firmware.bin", service="s3",
                                  headers={"Range": "bytes=2-4"})
    assert (status, body) == (206, b"234")


def test_no_500_cron_with_unicode_digits(srv: RunningServer) -> None:
    iot = srv.client("iot")
    target = iot.describe_thing(thingName="hostile-target")["thingArn"]
    for expression in ("cron(\u00b2 0 * * ? *)", "cron(0 \u0662 ? * MON *)", "cron(0/\u00b2 0 * * ? *)"):
        with pytest.raises(ClientError) as refused:
            iot.create_job(jobId="hostile-cron", targets=[target], document="{}",
                           schedulingConfig={"maintenanceWindows": [
                               {"startTime": expression, "durationInMinutes": 30}]})
        assert refused.value.response["Error"]["Code"] == "InvalidRequestException", expression


def test_no_500_a_placeholder_url_that_does_not_parse(srv: RunningServer) -> None:
    iot = srv.client("iot")
    target = iot.describe_thing(thingName="hostile-target")["thingArn"]
    role = f"arn:aws:iam::{srv.settings.account_id}:role/job-downloads"
    for url in ("https://[", "https://[::1/hostile/firmware.bin", "https://s3.amazonaws.com\n/hostile/k"):
        document = json.dumps({"url": "${aws:iot:s3-presigned-url:" + url + "}"})
        with pytest.raises(ClientError) as refused:
            iot.create_job(jobId="hostile-placeholder", targets=[target], document=document,
                           presignedUrlConfig={"roleArn": role, "expiresInSec": 3600})
        assert refused.value.response["Error"]["Code"] == "InvalidRequestException", url


def test_no_500_names_and_numbers_that_only_look_right(signed: Signed) -> None:
    # A trailing newline passed `re.match` with `$`; the model's pattern matched whole refuses it.
    status, headers, body = signed.send("POST", "/things/" + quote("sensor\n"), service="iot", body=b"{}")
    assert (status, error_code(status, headers, body)) == (400, "InvalidRequestException")
    for value in ("\u0661", "1" * 5000, "1e3", "-0x1"):
        status, headers, body = signed.send("GET", "/things?maxResults=" + quote(value), service="iot")
        assert (status, error_code(status, headers, body)) == (400, "InvalidRequestException"), value
    status, headers, body = signed.send("GET", "/hostile?list-type=2&max-keys=%D9%A3", service="s3")
    assert (status, error_code(status, headers, body)) == (400, "InvalidArgument")
    status, headers, body = signed.send("POST", "/", service="iam",
                                        body=b"Action=ListUsers&Version=2010-05-08&MaxItems=%C2%B2",
                                        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert (status, error_code(status, headers, body)) == (400, "ValidationError")


def test_no_500_xml_nested_past_the_bound_or_missing_members(srv: RunningServer, signed: Signed) -> None:
    upload = srv.client("s3").create_multipart_upload(Bucket="hostile", Key="assembled.bin")["UploadId"]
    path = f"/hostile/assembled.bin?uploadId={quote(upload)}"
    deep = b"<CompleteMultipartUpload>" + b"<Part>" * 200 + b"</Part>" * 200 + b"</CompleteMultipartUpload>"
    no_number = b"<CompleteMultipartUpload><Part><ETag>x</ETag></Part></CompleteMultipartUpload>"
    wide = b"<CompleteMultipartUpload>" + b"<Part/>" * 200_000 + b"</CompleteMultipartUpload>"
    for body in (deep, no_number, wide):
        status, headers, answer = signed.send("POST", path, service="s3", body=body)
        assert (status, error_code(status, headers, answer)) == (400, "MalformedXML"), answer[:200]


def test_no_500_timestamps_out_of_range(signed: Signed, srv: RunningServer) -> None:
    target = srv.client("iot").describe_thing(thingName="hostile-target")["thingArn"]
    for start in (1e300, -1e18, "99999-01-01T00:00:00Z", "0001-01-01T00:00:00+14:00",
                  "9999-12-31T23:59:00-14:00"):
        body = json.dumps({"targets": [target], "document": "{}",
                           "schedulingConfig": {"startTime": start}}).encode()
        status, headers, answer = signed.send("PUT", "/jobs/hostile-time", service="iot", body=body)
        assert (status, error_code(status, headers, answer)) == (400, "InvalidRequestException"), start


def test_no_500_unicode_digits_in_s3_lengths(signed: Signed) -> None:
    headers = {"x-amz-decoded-content-length": "\u00b2", "Content-Encoding": "aws-chunked"}
    status, answer_headers, answer = signed.send("PUT", "/hostile/chunked.bin", service="s3",
                                                 body=b"0\r\n\r\n", headers=headers,
                                                 payload_hash="STREAMING-UNSIGNED-PAYLOAD-TRAILER")
    assert (status, error_code(status, answer_headers, answer)) == (400, "InvalidArgument")


def test_no_500_the_models_constraints_hold_before_any_handler(srv: RunningServer) -> None:
    """Constraints only the model states (no handler checks them): a description outside
    its pattern, one past its length, a list below its size."""
    iot = srv.client("iot")
    target = iot.describe_thing(thingName="hostile-target")["thingArn"]
    refusals: list[Callable[[], object]] = [
        lambda: iot.create_thing_group(thingGroupName="described",
                                       thingGroupProperties={"thingGroupDescription": "bell\x07"}),
        lambda: iot.create_job(jobId="long-description", targets=[target], document="{}",
                               description="x" * 2029),
        lambda: iot.create_thing_group(thingGroupName="tagged", tags=[{"Key": "k" * 129, "Value": "v"}]),
    ]
    for refuse in refusals:
        with pytest.raises(ClientError) as refused:
            refuse()
        assert refused.value.response["Error"]["Code"] == "InvalidRequestException"
        assert "validation error detected" in refused.value.response["Error"]["Message"]
