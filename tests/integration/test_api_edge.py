"""The operator API edge, driven by real boto3 clients over HTTP.

Covers routing and (de)serialisation for the rest-json (iot), json (acm) and query
(iam, sts) protocols, error rendering per protocol, SigV4 rejections, the 500 path
for crashing handlers, extra routes, and the request log.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import logging
import sqlite3
import threading
from collections.abc import Iterator
from typing import Any

import botocore
import botocore.config
import pytest
import sqlalchemy.exc
from botocore.exceptions import ClientError
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from overair.core.errors import PeerInputError, UnavailableError
from overair.server.api.contract import ApiError, ApiRequest, OperationTable
from tests.api_harness import INACTIVE_KEY, INACTIVE_SECRET, USER_ARN, ApiServer, running_api

GROUP_CREATED = dt.datetime(2026, 3, 4, 5, 6, 7, 250000, tzinfo=dt.UTC)


class FakeIot:
    """Minimal handlers that record what the edge handed them."""

    def __init__(self) -> None:
        self.things: dict[str, dict[str, Any]] = {}
        self.calls: list[ApiRequest] = []
        self.lock = threading.Lock()

    def record(self, request: ApiRequest) -> None:
        with self.lock:
            self.calls.append(request)

    def create_thing(self, request: ApiRequest) -> dict[str, Any]:
        self.record(request)
        name = request.params["thingName"]
        if name in self.things:
            raise ApiError("ResourceAlreadyExistsException", f"thing {name} already exists", 409)
        attributes = request.params.get("attributePayload", {}).get("attributes", {})
        self.things[name] = {"thingName": name, "attributes": attributes, "version": 1,
                             "thingArn": f"arn:aws:iot:us-east-1:123456789012:thing/{name}"}
        return {"thingName": name, "thingArn": self.things[name]["thingArn"], "thingId": f"id-{name}"}

    def describe_thing(self, request: ApiRequest) -> dict[str, Any]:
        self.record(request)
        thing = self.things.get(request.params["thingName"])
        if thing is None:
            raise ApiError("ResourceNotFoundException", f"Thing {request.params['thingName']} not found", 404)
        return {**thing, "defaultClientId": thing["thingName"]}

    def list_things(self, request: ApiRequest) -> dict[str, Any]:
        self.record(request)
        p = request.params
        things = sorted(self.things.values(), key=lambda t: t["thingName"])
        if "attributeName" in p:
            things = [t for t in things if t["attributes"].get(p["attributeName"]) == p.get("attributeValue")]
        start = int(p.get("nextToken", "0"))
        size = p.get("maxResults", 100)
        page = things[start : start + size]
        out: dict[str, Any] = {"things": page}
        if start + size < len(things):
            out["nextToken"] = str(start + size)
        return out

    def describe_thing_group(self, request: ApiRequest) -> dict[str, Any]:
        return {"thingGroupName": request.params["thingGroupName"], "version": 2,
                "thingGroupMetadata": {"creationDate": GROUP_CREATED}}

    def attach_thing_principal(self, request: ApiRequest) -> dict[str, Any]:
        self.record(request)
        return {}

    def crash(self, request: ApiRequest) -> dict[str, Any]:
        raise RuntimeError("secret internal detail")


def build_table(fake: FakeIot) -> OperationTable:
    table = OperationTable()
    table.register("iot", "CreateThing", fake.create_thing)
    table.register("iot", "DescribeThing", fake.describe_thing)
    table.register("iot", "ListThings", fake.list_things)
    table.register("iot", "DescribeThingGroup", fake.describe_thing_group)
    table.register("iot", "AttachThingPrincipal", fake.attach_thing_principal)
    table.register("iot", "DeleteThing", fake.crash)

    # Domain failures by fault, each raised as the domain raises it (faults.py translates).
    def peer_input(request: ApiRequest) -> dict[str, Any]:
        raise PeerInputError("that is not a valid thing type")

    def unavailable(request: ApiRequest) -> dict[str, Any]:
        raise UnavailableError("the signing HSM is not reachable")

    def database_full(request: ApiRequest) -> dict[str, Any]:
        full = sqlite3.OperationalError("database or disk is full")
        raise sqlalchemy.exc.OperationalError("INSERT ...", {}, full)

    def disk_full(request: ApiRequest) -> dict[str, Any]:
        raise OSError(errno.ENOSPC, "No space left on device")

    table.register("iot", "DescribeThingType", peer_input)
    table.register("iot", "DeprecateThingType", unavailable)
    table.register("iot", "ListThingTypes", database_full)
    table.register("iot", "DeleteThingType", disk_full)

    def describe_certificate(request: ApiRequest) -> dict[str, Any]:
        arn = request.params["CertificateArn"]
        raise ApiError("ResourceNotFoundException", f"Could not find certificate {arn}", 400)

    def import_certificate(request: ApiRequest) -> dict[str, Any]:
        fake.record(request)
        return {"CertificateArn": "arn:aws:acm:us-east-1:123456789012:certificate/abc"}

    def list_certificates(request: ApiRequest) -> dict[str, Any]:
        arn = "arn:aws:acm:us-east-1:123456789012:certificate/abc"
        return {"CertificateSummaryList": [{"CertificateArn": arn, "DomainName": "signer.example",
                                            "CreatedAt": 1767225600.5}]}

    table.register("acm", "DescribeCertificate", describe_certificate)
    table.register("acm", "ImportCertificate", import_certificate)
    table.register("acm", "ListCertificates", list_certificates)

    def get_user(request: ApiRequest) -> dict[str, Any]:
        name = request.params.get("UserName")
        raise ApiError("NoSuchEntity", f"The user with name {name} cannot be found.", 404)

    def create_user(request: ApiRequest) -> dict[str, Any]:
        fake.record(request)
        name = request.params["UserName"]
        return {"User": {"Path": "/", "UserName": name, "UserId": "AIDAEXAMPLE000000001",
                         "Arn": f"arn:aws:iam::123456789012:user/{name}",
                         "CreateDate": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
                         "Tags": request.params.get("Tags", [])}}

    def list_roles(request: ApiRequest) -> dict[str, Any]:
        roles = [{"Path": "/service-role/", "RoleName": f"role{i}", "RoleId": f"AROAEXAMPLE00000000{i}",
                  "Arn": f"arn:aws:iam::123456789012:role/service-role/role{i}", "CreateDate": 1767225600 + i}
                 for i in range(2)]
        return {"Roles": roles, "IsTruncated": False}

    def get_caller_identity(request: ApiRequest) -> dict[str, Any]:
        return {"UserId": request.caller.access_key_id, "Account": "123456789012",
                "Arn": request.caller.principal_arn}

    table.register("iam", "GetUser", get_user)
    table.register("iam", "CreateUser", create_user)
    table.register("iam", "ListRoles", list_roles)
    table.register("sts", "GetCallerIdentity", get_caller_identity)
    return table


async def health(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


@pytest.fixture(scope="module")
def fake() -> FakeIot:
    return FakeIot()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, fake: FakeIot) -> Iterator[ApiServer]:
    with running_api(tmp_path_factory.mktemp("edge"), build_table(fake),
                     extra_routes=[Route("/health", health)], max_body_bytes=256 * 1024) as server:
        yield server


@pytest.fixture(autouse=True)
def _reset_clock(api: ApiServer) -> Iterator[None]:
    yield
    api.clock.offset = 0.0


def error_of(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, int, str]:
    err = exc.value.response
    return err["Error"]["Code"], err["ResponseMetadata"]["HTTPStatusCode"], err["Error"].get("Message", "")


# --------------------------------------------------------------------- rest-json (iot)


def test_iot_things_roundtrip(api: ApiServer, fake: FakeIot) -> None:
    iot = api.client("iot")
    created = iot.create_thing(thingName="sensor-1", attributePayload={"attributes": {"fw": "1.0"}})
    assert created["thingName"] == "sensor-1"
    assert created["thingArn"].endswith("thing/sensor-1")
    iot.create_thing(thingName="sensor-2", attributePayload={"attributes": {"fw": "2.0"}})
    iot.create_thing(thingName="sensor-3", attributePayload={"attributes": {"fw": "1.0"}})

    described = iot.describe_thing(thingName="sensor-1")
    assert described["attributes"] == {"fw": "1.0"}
    assert described["version"] == 1

    page = iot.list_things(maxResults=1, attributeName="fw", attributeValue="1.0")
    assert [t["thingName"] for t in page["things"]] == ["sensor-1"]
    assert page["nextToken"] == "1"
    listing = fake.calls[-1].params
    assert listing == {"maxResults": 1, "attributeName": "fw", "attributeValue": "1.0"}
    assert isinstance(listing["maxResults"], int)

    names = [t["thingName"] for p in iot.get_paginator("list_things").paginate() for t in p["things"]]
    assert names == ["sensor-1", "sensor-2", "sensor-3"]


def test_iot_error_is_client_error(api: ApiServer) -> None:
    iot = api.client("iot")
    with pytest.raises(ClientError) as exc:
        iot.describe_thing(thingName="no-such-thing")
    assert error_of(exc)[:2] == ("ResourceNotFoundException", 404)
    assert "no-such-thing" in error_of(exc)[2]
    iot.create_thing(thingName="dup")
    with pytest.raises(iot.exceptions.ResourceAlreadyExistsException):
        iot.create_thing(thingName="dup")


def test_iot_timestamp_output(api: ApiServer) -> None:
    group = api.client("iot").describe_thing_group(thingGroupName="fleet")
    created = group["thingGroupMetadata"]["creationDate"]
    assert isinstance(created, dt.datetime)
    assert created.timestamp() == pytest.approx(GROUP_CREATED.timestamp(), abs=0.001)


def test_iot_header_member_and_uri_label_encoding(api: ApiServer, fake: FakeIot) -> None:
    principal = "arn:aws:iot:us-east-1:123456789012:cert/0123abcd"
    # ':' is percent-encoded in the URI label; the model's pattern allows it in a name.
    api.client("iot").attach_thing_principal(thingName="thing:with:colons", principal=principal)
    call = fake.calls[-1]
    assert call.operation == "AttachThingPrincipal"
    assert call.params == {"thingName": "thing:with:colons", "principal": principal}
    assert call.caller.principal_arn == USER_ARN
    assert call.caller.source_ip == "127.0.0.1"


def test_unregistered_operation_answers_501_naming_it(api: ApiServer) -> None:
    with pytest.raises(ClientError) as exc:
        api.client("iot").list_thing_groups()
    code, status, message = error_of(exc)
    assert (code, status) == ("NotImplementedException", 501)
    assert "iot:ListThingGroups" in message


def test_unknown_route_answers_404(api: ApiServer) -> None:
    response = api.send_signed(api.sign("GET", "/no/such/resource", service="iot"))
    assert response.status == 404
    assert response.headers["x-amzn-ErrorType"] == "UnknownOperationException"
    assert "/no/such/resource" in json.loads(response.data)["message"]


def test_handler_crash_is_500_without_details(api: ApiServer, caplog: pytest.LogCaptureFixture) -> None:
    iot = api.client("iot")
    with caplog.at_level(logging.ERROR, logger="overair.api"), pytest.raises(ClientError) as exc:
        iot.delete_thing(thingName="boom")
    code, status, message = error_of(exc)
    assert (code, status) == ("InternalFailure", 500)
    assert "secret internal detail" not in message
    assert "Traceback" not in message
    logged = [r for r in caplog.records if r.exc_info]
    assert logged
    assert "secret internal detail" in str(logged[-1].exc_info[1])  # type: ignore[index]
    assert iot.describe_thing_group(thingGroupName="still-up")["thingGroupName"] == "still-up"


def test_request_log_line(api: ApiServer, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="overair.api"):
        api.client("iot").describe_thing_group(thingGroupName="logged")
    records = [r for r in caplog.records if getattr(r, "operation", None) == "DescribeThingGroup"]
    assert records
    record: Any = records[-1]
    assert record.levelno == logging.INFO
    assert (record.service, record.caller, record.status) == ("iot", USER_ARN, 200)
    assert record.duration_ms >= 0


def test_extra_routes_come_first_and_are_not_authenticated(api: ApiServer) -> None:
    response = api.send("GET", api.endpoint + "/health")
    assert (response.status, response.data) == (200, b"ok")


def test_body_limit(api: ApiServer) -> None:
    body = json.dumps({"attributePayload": {"attributes": {"big": "x" * 300_000}}}).encode()
    request = api.sign("POST", "/things/too-big", service="iot", body=body,
                       headers={"Content-Type": "application/json"})
    response = api.send_signed(request)
    assert response.status == 413
    assert response.headers["x-amzn-ErrorType"] == "RequestEntityTooLargeException"


# --------------------------------------------------------------------------- json (acm)


def test_acm_json_protocol(api: ApiServer, fake: FakeIot) -> None:
    acm = api.client("acm")
    summaries = acm.list_certificates()["CertificateSummaryList"]
    assert summaries[0]["DomainName"] == "signer.example"
    assert summaries[0]["CreatedAt"] == dt.datetime(2026, 1, 1, 0, 0, 0, 500000, tzinfo=dt.UTC)

    arn = acm.import_certificate(Certificate=b"-----CERT-----", PrivateKey=b"\x00\x01key")["CertificateArn"]
    assert arn.endswith("certificate/abc")
    params = fake.calls[-1].params
    assert params["Certificate"] == b"-----CERT-----"
    assert params["PrivateKey"] == b"\x00\x01key"

    with pytest.raises(ClientError) as exc:
        acm.describe_certificate(CertificateArn="arn:aws:acm:us-east-1:123456789012:certificate/nope")
    assert error_of(exc)[:2] == ("ResourceNotFoundException", 400)


def test_acm_missing_required_member(api: ApiServer) -> None:
    request = api.sign("POST", "/", service="acm", body=b'{"PrivateKey": "a2V5"}',
                       headers={"X-Amz-Target": "CertificateManager.ImportCertificate",
                                "Content-Type": "application/x-amz-json-1.1"})
    response = api.send_signed(request)
    assert response.status == 400
    body = json.loads(response.data)
    assert body["__type"] == "ValidationException"
    assert "Certificate" in body["message"]


def test_acm_unknown_target(api: ApiServer) -> None:
    request = api.sign("POST", "/", service="acm", body=b"{}",
                       headers={"X-Amz-Target": "CertificateManager.Frobnicate",
                                "Content-Type": "application/x-amz-json-1.1"})
    response = api.send_signed(request)
    assert response.status == 404
    assert json.loads(response.data)["__type"] == "UnknownOperationException"


# ------------------------------------------------------------------------ query (iam/sts)


def test_iam_query_protocol(api: ApiServer, fake: FakeIot) -> None:
    iam = api.client("iam")
    roles = iam.list_roles()["Roles"]
    assert [r["RoleName"] for r in roles] == ["role0", "role1"]
    assert roles[1]["CreateDate"] == dt.datetime.fromtimestamp(1767225601, dt.UTC)

    tags = [{"Key": "team", "Value": "fw"}, {"Key": "env", "Value": "p"}]
    user = iam.create_user(UserName="ops", Tags=tags)
    assert fake.calls[-1].params == {"UserName": "ops", "Tags": tags}
    assert user["User"]["Tags"] == tags
    assert user["User"]["CreateDate"] == dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)

    with pytest.raises(iam.exceptions.NoSuchEntityException) as exc:
        iam.get_user(UserName="ghost")
    assert error_of(exc)[:2] == ("NoSuchEntity", 404)


def test_iam_missing_required_member(api: ApiServer) -> None:
    request = api.sign("POST", "/", service="iam", body=b"Action=CreateUser&Version=2010-05-08",
                       headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
    response = api.send_signed(request)
    assert response.status == 400
    assert b"<Code>ValidationError</Code>" in response.data
    assert b"UserName" in response.data


def test_sts_caller_identity(api: ApiServer) -> None:
    identity = api.client("sts").get_caller_identity()
    assert identity["Arn"] == USER_ARN
    assert identity["UserId"] == api.access_key


# ------------------------------------------------------------------------- SigV4 failures


def test_unsigned_request_refused(api: ApiServer) -> None:
    iot = api.client("iot", signature_version=botocore.UNSIGNED)
    with pytest.raises(ClientError) as exc:
        iot.describe_thing_group(thingGroupName="x")
    assert error_of(exc)[:2] == ("MissingAuthenticationToken", 403)
    s3 = api.client("s3", signature_version=botocore.UNSIGNED)
    with pytest.raises(ClientError) as exc:
        s3.list_buckets()
    assert error_of(exc)[:2] == ("MissingAuthenticationToken", 403)


def test_wrong_secret_refused(api: ApiServer) -> None:
    with pytest.raises(ClientError) as exc:
        api.client("iot", secret_key="not-the-secret").describe_thing_group(thingGroupName="x")
    assert error_of(exc)[:2] == ("SignatureDoesNotMatch", 403)
    with pytest.raises(ClientError) as exc:
        api.client("iam", secret_key="not-the-secret").list_roles()
    assert error_of(exc)[:2] == ("SignatureDoesNotMatch", 403)


def test_unknown_key_refused(api: ApiServer) -> None:
    with pytest.raises(ClientError) as exc:
        api.client("acm", access_key="AKIAUNKNOWN000000000").list_certificates()
    assert error_of(exc)[:2] == ("InvalidClientTokenId", 403)


def test_inactive_key_refused(api: ApiServer) -> None:
    with pytest.raises(ClientError) as exc:
        api.client("iot", access_key=INACTIVE_KEY, secret_key=INACTIVE_SECRET).describe_thing_group(
            thingGroupName="x")
    assert error_of(exc)[:2] == ("InactiveAccessKey", 403)


def test_request_twenty_minutes_old_refused(api: ApiServer) -> None:
    iot = api.client("iot")
    api.clock.offset = 20 * 60
    with pytest.raises(ClientError) as exc:
        iot.describe_thing_group(thingGroupName="x")
    assert error_of(exc)[:2] == ("RequestTimeTooSkewed", 403)
    api.clock.offset = 14 * 60
    assert iot.describe_thing_group(thingGroupName="x")["thingGroupName"] == "x"


def _tamper(request: Any, **_: Any) -> None:
    body = request.body
    data = body.read() if hasattr(body, "read") else bytes(body)
    request.body = data.replace(b"1.0", b"6.6").replace(b"hello", b"jello")


def test_body_changed_after_signing_refused(api: ApiServer, fake: FakeIot) -> None:
    iot = api.client("iot")
    iot.meta.events.register("before-send.iot.CreateThing", _tamper)
    before = len(fake.calls)
    with pytest.raises(ClientError) as exc:
        iot.create_thing(thingName="tampered", attributePayload={"attributes": {"fw": "1.0"}})
    assert error_of(exc)[:2] == ("SignatureDoesNotMatch", 403)
    assert len(fake.calls) == before  # the handler never ran

    s3 = api.client("s3")
    s3.create_bucket(Bucket="tamper-test")
    s3.meta.events.register("before-send.s3.PutObject", _tamper)
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket="tamper-test", Key="k", Body=b"hello")
    assert error_of(exc)[:2] == ("XAmzContentSHA256Mismatch", 400)
    assert api.objects.list_objects("tamper-test").objects == []


# ------------------------------------------------------- one translation of failures


def test_domain_errors_are_translated_by_fault_not_500(api: ApiServer) -> None:
    iot = api.client("iot")
    with pytest.raises(ClientError) as bad_input:
        iot.describe_thing_type(thingTypeName="kind")
    assert error_of(bad_input) == ("InvalidRequestException", 400, "that is not a valid thing type")
    with pytest.raises(ClientError) as down:
        iot.deprecate_thing_type(thingTypeName="kind")
    assert error_of(down) == ("ServiceUnavailableException", 503, "the signing HSM is not reachable")
    with pytest.raises(ClientError) as database:
        iot.list_thing_types()
    assert error_of(database) == ("ServiceUnavailableException", 503,
                                  "the database is unavailable: database or disk is full")
    with pytest.raises(ClientError) as disk:
        iot.delete_thing_type(thingTypeName="kind")
    assert error_of(disk) == ("ServiceUnavailableException", 503, "no space left on device")


# ------------------------------------------------------------- region of the scope


def test_o1_a_client_signing_for_another_region_is_refused(api: ApiServer) -> None:
    elsewhere = api.client("iot", region_name="eu-west-1")
    with pytest.raises(ClientError) as iot:
        elsewhere.describe_thing_group(thingGroupName="g")
    assert error_of(iot)[:2] == ("InvalidSignatureException", 403)
    with pytest.raises(ClientError) as iam:
        api.client("iam", region_name="eu-west-1").list_roles()
    assert error_of(iam)[:2] == ("SignatureDoesNotMatch", 403)
    with pytest.raises(ClientError) as sts:
        api.client("sts", region_name="ap-south-1").get_caller_identity()
    assert error_of(sts)[:2] == ("SignatureDoesNotMatch", 403)


# -------------------------------------------------------------- hostile input, no 500


def test_no_500_deep_json_and_huge_numbers_are_client_errors(api: ApiServer) -> None:
    deep = b'{"attributePayload": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    status, headers, _ = _send(api, "POST", "/things/deep", "iot", deep)
    assert (status, headers.get("x-amzn-errortype")) == (400, "SerializationException")
    for raw in ("%C2%B2", "%D9%A1", "1" * 5000, "1_0", "%2B5", "5%0A"):
        status, headers, _ = _send(api, "GET", f"/things?maxResults={raw}", "iot")
        assert (status, headers.get("x-amzn-errortype")) == (400, "InvalidRequestException"), raw


def _send(api: ApiServer, method: str, path: str, service: str,
          body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    response = api.send_signed(api.sign(method, path, service=service, body=body))
    return response.status, {k.lower(): v for k, v in response.headers.items()}, response.data
