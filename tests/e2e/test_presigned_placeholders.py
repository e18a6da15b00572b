"""Pre-signed URL placeholders in a plain CreateJob document, against the real server: a
device gets `${aws:iot:s3-presigned-url:...}` replaced by a fresh HTTPS URL bound to it
and to the object version pinned at creation, on every delivery path (MQTT `$next/get`,
`J/get`, `start-next`, and the iot-jobs-data HTTPS API); GetJobDocument keeps the
placeholder. The URL works only while that thing's execution is live. Devices are bare
MQTT clients with the thing's certificate (the agent only runs OTA documents).
Threat ids: N4 unauthorized device.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import boto3
import botocore.config
import pytest
from botocore import UNSIGNED
from botocore.exceptions import ClientError

from overair.cli.client import ApiClients
from tests.e2e.test_server_security import Device
from tests.server_harness import RunningServer

BUCKET = "firmware"
# presignedUrlConfig's role; ARN members must name this server's account (threat O1), so
# calls use `_role(srv)`, and ROLE stands for it in the parameter tables below.
ROLE = "arn:aws:iam::123456789012:role/job-downloads"


def _role(srv: RunningServer) -> str:
    return ROLE.replace("123456789012", srv.settings.account_id)


def _download(srv: RunningServer, url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    parts = urlsplit(url)
    context = ssl.create_default_context(cafile=str(srv.settings.paths.fleet_ca_cert))
    connection = http.client.HTTPSConnection("127.0.0.1", parts.port, context=context, timeout=10)
    try:  # connect by address, check the certificate against the URL's host name
        connection.sock = context.wrap_socket(
            socket.create_connection(("127.0.0.1", parts.port), timeout=10), server_hostname=parts.hostname
        )
        connection.request("GET", f"{parts.path}?{parts.query}", headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _until_refused(srv: RunningServer, url: str) -> tuple[int, bytes]:
    """Download until refused; the endpoint caches access decisions for 2 s."""
    deadline = time.monotonic() + 10
    status, body = _download(srv, url)
    while status == 200 and time.monotonic() < deadline:
        time.sleep(0.2)
        status, body = _download(srv, url)
    return status, body


def _device(srv: RunningServer, tmp_path: Path, name: str) -> Device:
    device = Device(srv, srv.provision(name, tmp_path / name), name)
    assert device.connect()
    device.subscribe(f"$aws/things/{name}/jobs/#")
    time.sleep(0.2)
    return device


def _ask(device: Device, thing: str, topic: str, reply: str) -> dict[str, Any]:
    device.messages.clear()
    device.client.publish(f"$aws/things/{thing}/jobs/{topic}", json.dumps({"clientToken": "t"}), qos=1)
    replies = device.wait_for(f"/jobs/{reply}")
    assert replies, f"no reply on {reply}"
    answer: dict[str, Any] = json.loads(replies[-1][1])
    return answer


def _jobs_data_client(srv: RunningServer, bundle: Path) -> Any:
    config = botocore.config.Config(signature_version=UNSIGNED, retries={"max_attempts": 1},
                                    client_cert=(str(bundle / "device.crt"), str(bundle / "device.key")))
    return boto3.session.Session(region_name=srv.clients.region).client(
        "iot-jobs-data", endpoint_url=f"https://localhost:{srv.settings.download_port}",
        verify=str(srv.settings.paths.fleet_ca_cert), config=config)


def _names(request: pytest.FixtureRequest, *roles: str) -> list[str]:
    suffix = "".join(c if c.isalnum() else "-" for c in request.node.name)[-24:].strip("-")
    return [f"{role}-{suffix}" for role in roles]


def test_device_gets_fresh_urls_for_placeholders_and_downloads_the_pinned_version(
    srv: RunningServer, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    (thing,) = _names(request, "ph")
    iot, s3 = srv.client("iot"), srv.client("s3")
    image, config_file = os.urandom(40_000), b'{"mode": "fast"}'
    s3.put_object(Bucket=BUCKET, Key=f"{thing}/app v1.bin", Body=image)
    s3.put_object(Bucket=BUCKET, Key=f"{thing}/config.json", Body=config_file)
    image_ph = f"${{aws:iot:s3-presigned-url:https://s3.amazonaws.com/{BUCKET}/{thing}/app%20v1.bin}}"
    config_ph = f"${{aws:iot:s3-presigned-url-v2:https://{BUCKET}.s3.us-east-1.amazonaws.com/{thing}/config.json}}"
    document = {"operation": "install", "image": image_ph, "steps": [{"fetch": config_ph}],
                "note": f"mirror of {image_ph}"}
    device = _device(srv, tmp_path, thing)
    try:
        iot.create_job(jobId=f"{thing}-job", targets=[iot.describe_thing(thingName=thing)["thingArn"]],
                       document=json.dumps(document),
                       presignedUrlConfig={"roleArn": _role(srv), "expiresInSec": 600})
        # The object changes after the job was created: the job keeps delivering the version it pinned.
        s3.put_object(Bucket=BUCKET, Key=f"{thing}/app v1.bin", Body=b"replaced later")
        assert json.loads(iot.get_job_document(jobId=f"{thing}-job")["document"]) == document
        described = iot.describe_job(jobId=f"{thing}-job")["job"]
        assert described["presignedUrlConfig"] == {"roleArn": _role(srv), "expiresInSec": 600}

        delivered = [
            _ask(device, thing, "$next/get", "$next/get/accepted")["execution"]["jobDocument"],
            _ask(device, thing, f"{thing}-job/get", f"{thing}-job/get/accepted")["execution"]["jobDocument"],
            _ask(device, thing, "start-next", "start-next/accepted")["execution"]["jobDocument"],
            json.loads(_jobs_data_client(srv, tmp_path / thing).describe_job_execution(
                jobId=f"{thing}-job", thingName=thing, includeJobDocument=True)["execution"]["jobDocument"]),
        ]
        for rendered in delivered:
            assert "${aws:iot" not in json.dumps(rendered)
            assert rendered["operation"] == "install"
            image_url, config_url = rendered["image"], rendered["steps"][0]["fetch"]
            assert rendered["note"] == f"mirror of {image_url}"
            assert image_url.startswith(f"https://localhost:{srv.settings.download_port}/ota/{BUCKET}/")
            assert dict(parse_qsl(urlsplit(image_url).query))["thing"] == thing
            assert _download(srv, image_url) == (200, image)  # the exact bytes, the pinned version
            assert _download(srv, image_url, {"Range": "bytes=100-199"}) == (206, image[100:200])
            assert _download(srv, config_url) == (200, config_file)
    finally:
        device.close()


def test_n4_placeholder_url_serves_only_its_thing_and_only_while_the_execution_is_live(
    srv: RunningServer, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    a, b = _names(request, "pa", "pb")
    iot, s3 = srv.client("iot"), srv.client("s3")
    payload = os.urandom(10_000)
    s3.put_object(Bucket=BUCKET, Key=f"{a}.bin", Body=payload)
    placeholder = f"${{aws:iot:s3-presigned-url:https://s3.eu-west-1.amazonaws.com/{BUCKET}/{a}.bin}}"
    device_a, device_b = _device(srv, tmp_path, a), _device(srv, tmp_path, b)
    job_id = f"{a}-job"
    try:
        iot.create_job(jobId=job_id, targets=[iot.describe_thing(thingName=t)["thingArn"] for t in (a, b)],
                       document=json.dumps({"url": placeholder}), presignedUrlConfig={"roleArn": _role(srv)})
        url_a = _ask(device_a, a, "$next/get", "$next/get/accepted")["execution"]["jobDocument"]["url"]
        url_b = _ask(device_b, b, "$next/get", "$next/get/accepted")["execution"]["jobDocument"]["url"]
        assert url_a != url_b  # each thing gets its own URL
        assert _download(srv, url_a) == (200, payload)
        assert _download(srv, url_b) == (200, payload)

        # A's URL cannot be turned into B's (or anyone's): the signature covers the thing.
        parts = urlsplit(url_a)
        query = dict(parse_qsl(parts.query)) | {"thing": b}
        status, body = _download(srv, parts._replace(query=urlencode(query)).geturl())
        assert status == 403
        assert b"SignatureDoesNotMatch" in body

        # B's execution ends: B's URL stops working, A's goes on.
        iot.cancel_job_execution(jobId=job_id, thingName=b)
        status, body = _until_refused(srv, url_b)
        assert status == 403
        assert b"AccessDenied" in body
        assert _download(srv, url_a) == (200, payload)

        # A finishes: its URL stops working too.
        device_a.client.publish(f"$aws/things/{a}/jobs/{job_id}/update",
                                json.dumps({"status": "SUCCEEDED", "statusDetails": {"r": "ok"}}), qos=1)
        status, body = _until_refused(srv, url_a)
        assert status == 403
        assert b"AccessDenied" in body
    finally:
        device_a.close()
        device_b.close()


def test_document_source_with_placeholders(
    srv: RunningServer, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    (thing,) = _names(request, "ds")
    iot, s3 = srv.client("iot"), srv.client("s3")
    payload = os.urandom(5_000)
    s3.put_object(Bucket=BUCKET, Key=f"{thing}/payload.bin", Body=payload)
    document = {"url": f"${{aws:iot:s3-presigned-url:https://s3.amazonaws.com/{BUCKET}/{thing}/payload.bin}}"}
    s3.put_object(Bucket=BUCKET, Key=f"{thing}/job.json", Body=json.dumps(document).encode())
    device = _device(srv, tmp_path, thing)
    try:
        iot.create_job(jobId=f"{thing}-job", targets=[iot.describe_thing(thingName=thing)["thingArn"]],
                       documentSource=f"https://s3.us-east-1.amazonaws.com/{BUCKET}/{thing}/job.json",
                       presignedUrlConfig={"roleArn": _role(srv), "expiresInSec": 60})
        assert json.loads(iot.get_job_document(jobId=f"{thing}-job")["document"]) == document
        url = _ask(device, thing, "$next/get", "$next/get/accepted")["execution"]["jobDocument"]["url"]
        expires = int(dict(parse_qsl(urlsplit(url).query))["expires"])
        assert 0 < expires - time.time() <= 61
        assert _download(srv, url) == (200, payload)
    finally:
        device.close()


@pytest.fixture(scope="module")
def target_arn(srv: RunningServer) -> str:
    """A thing to aim refused jobs at, and the one object the cases below find."""
    srv.client("s3").put_object(Bucket=BUCKET, Key="present.bin", Body=b"x")
    return str(srv.client("iot").create_thing(thingName="placeholder-target")["thingArn"])


@pytest.mark.parametrize(
    ("case", "document", "extra", "complaint"),
    [
        ("missing-object", {"url": "${aws:iot:s3-presigned-url:https://s3.amazonaws.com/firmware/missing.bin}"},
         {"presignedUrlConfig": {"roleArn": ROLE}}, "s3://firmware/missing.bin does not exist"),
        ("missing-bucket", {"url": "${aws:iot:s3-presigned-url:https://s3.amazonaws.com/no-such-bucket/x.bin}"},
         {"presignedUrlConfig": {"roleArn": ROLE}}, "s3://no-such-bucket/x.bin does not exist"),
        ("no-config", {"url": "${aws:iot:s3-presigned-url:https://s3.amazonaws.com/firmware/present.bin}"},
         {}, "presignedUrlConfig with a roleArn is required"),
        ("not-s3", {"url": "${aws:iot:s3-presigned-url:https://example.com/firmware/present.bin}"},
         {"presignedUrlConfig": {"roleArn": ROLE}}, "not an Amazon S3 object URL"),
        ("unclosed", {"url": "${aws:iot:s3-presigned-url:https://s3.amazonaws.com/firmware/present.bin"},
         {"presignedUrlConfig": {"roleArn": ROLE}}, "malformed"),
    ],
)
def test_create_job_refuses_placeholders_it_cannot_honour(
    srv: RunningServer, target_arn: str, case: str, document: dict[str, str], extra: dict[str, Any],
    complaint: str
) -> None:
    iot = srv.client("iot")
    extra = json.loads(json.dumps(extra).replace(ROLE, _role(srv)))
    with pytest.raises(ClientError) as caught:
        iot.create_job(jobId=f"refused-{case}", targets=[target_arn], document=json.dumps(document), **extra)
    assert caught.value.response["Error"]["Code"] == "InvalidRequestException"
    assert complaint in caught.value.response["Error"]["Message"]
    with pytest.raises(ClientError):
        iot.describe_job(jobId=f"refused-{case}")  # nothing was created


def test_o1_create_job_reads_no_object_the_caller_may_not_read(
    srv: RunningServer, request: pytest.FixtureRequest
) -> None:
    """Without this check iot:CreateJob alone would disclose any object: through
    GetJobDocument (documentSource) or a URL delivered to a device of the caller's."""
    (name,) = _names(request, "o1")
    admin_iot, s3, iam = srv.client("iot"), srv.client("s3"), srv.client("iam")
    s3.put_object(Bucket=BUCKET, Key=f"secret/{name}.bin", Body=b"secret")
    s3.put_object(Bucket=BUCKET, Key=f"secret/{name}.json", Body=b'{"operation": "leak"}')
    s3.put_object(Bucket=BUCKET, Key=f"public/{name}.bin", Body=b"public")
    target = admin_iot.create_thing(thingName=name)["thingArn"]
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName="jobs-only", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["iot:CreateJob", "iot:DescribeJob"], "Resource": "*"},
            {"Effect": "Allow", "Action": "iam:PassRole", "Resource": _role(srv)},
            {"Effect": "Allow", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{BUCKET}/public/*"},
        ]}))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    limited = ApiClients(srv.endpoint, key["AccessKeyId"], key["SecretAccessKey"], srv.clients.region)
    iot = limited.client("iot")

    def placeholder(path: str) -> str:
        return json.dumps({"url": f"${{aws:iot:s3-presigned-url:https://s3.amazonaws.com/{BUCKET}/{path}}}"})

    for job_id, source in ((f"{name}-ph", {"document": placeholder(f"secret/{name}.bin"),
                                           "presignedUrlConfig": {"roleArn": _role(srv)}}),
                           (f"{name}-ds", {"documentSource":
                                           f"https://s3.amazonaws.com/{BUCKET}/secret/{name}.json"})):
        with pytest.raises(ClientError) as refused:
            iot.create_job(jobId=job_id, targets=[target], **source)
        assert refused.value.response["Error"]["Code"] in ("AccessDenied", "AccessDeniedException")
        assert "s3:GetObject" in refused.value.response["Error"]["Message"]
        with pytest.raises(ClientError):
            admin_iot.describe_job(jobId=job_id)  # nothing was created
    iot.create_job(jobId=f"{name}-ok", targets=[target], document=placeholder(f"public/{name}.bin"),
                   presignedUrlConfig={"roleArn": _role(srv)})
