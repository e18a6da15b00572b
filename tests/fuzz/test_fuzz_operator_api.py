"""Fuzz target, end to end: hostile but validly signed requests to the real operator API
(the ASGI app `Server` builds, with its real handlers, database and object store) for
operations of every service, through botocore's own serializers and SigV4 signer with
the administrator's key from the data directory. No request may answer 500: the edge's
catch-all is for bugs only (server/api/faults.py), and this is the proof that no input
reaches it.

botocore's client-side parameter validation is off, so values of the wrong type, out of
range, too long, or outside the pattern reach the server; the server is driven in
process (ASGI calls, no sockets), so each example costs a few milliseconds.
"""

from __future__ import annotations

import asyncio
import configparser
import contextlib
import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import boto3
import botocore.config
import botocore.session
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import BotoCoreError, ClientError
from hypothesis import given
from hypothesis import strategies as st

from overair.apimodels import MODELS_DIR
from overair.server.app import Server
from overair.server.bootstrap import initialize
from overair.server.settings import load_settings
from tests.fuzz.hostile import digits_or_not, hostile_text
from tests.server_harness import free_port

SERVICES = ("iot", "iot-jobs-data", "iot-data", "signer", "acm", "iam", "sts", "s3", "overair")


class _Raw:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.body


def _call_asgi(app: Any, request: Any) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    url = urlsplit(request.url)
    body = request.body or b""
    if isinstance(body, str):
        body = body.encode("utf-8")
    elif not isinstance(body, bytes):
        body = body.read() if hasattr(body, "read") else bytes(body)
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": request.method,
        "scheme": "http", "path": unquote(url.path), "raw_path": url.path.encode("latin-1"),
        "query_string": url.query.encode("latin-1"), "root_path": "",
        "headers": [(b"host", url.netloc.encode("latin-1"))] + [
            (k.lower().encode("latin-1"), v if isinstance(v, bytes) else v.encode("latin-1"))
            for k, v in request.headers.items() if k.lower() != "host"],
        "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 80),
    }
    sent: dict[str, Any] = {"body": b""}
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if delivered:
            return {"type": "http.disconnect"}
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            sent["status"], sent["headers"] = message["status"], message.get("headers", [])
        elif message["type"] == "http.response.body":
            sent["body"] += message.get("body", b"")

    asyncio.run(app(scope, receive, send))
    return sent["status"], sent["headers"], sent["body"]


class Harness:
    def __init__(self, root: Path) -> None:
        data_dir = root / "server"
        initialize(data_dir, http_port=free_port(), mqtt_port=free_port(), download_port=free_port())
        self.settings = load_settings(data_dir)
        self.server = Server(self.settings)
        self.app = self.server._http_servers()[0][0].config.app
        credentials = configparser.ConfigParser()
        credentials.read(self.settings.paths.credentials)
        core = botocore.session.get_session()
        core.get_component("data_loader").search_paths.append(str(MODELS_DIR))
        session = boto3.Session(aws_access_key_id=credentials["default"]["aws_access_key_id"],
                                aws_secret_access_key=credentials["default"]["aws_secret_access_key"],
                                region_name=self.settings.region, botocore_session=core)
        config = botocore.config.Config(parameter_validation=False, retries={"max_attempts": 1},
                                        s3={"addressing_style": "path"})
        self.statuses: list[tuple[str, str, int]] = []
        self.clients = {}
        for service in SERVICES:
            client = session.client(service, endpoint_url="http://127.0.0.1:1", config=config)
            client.meta.events.register("before-send", self._deliver)
            self.clients[service] = client
        self.operations = sorted(
            [(service, op) for service, op in self.server.table.operations()]
            + [("s3", op) for op in ("CreateBucket", "PutObject", "GetObject", "HeadObject", "ListObjectsV2",
                                     "PutBucketPolicy", "CreateMultipartUpload", "UploadPart",
                                     "CompleteMultipartUpload", "ListObjectVersions", "DeleteObject")])
        account = self.settings.account_id
        region = self.settings.region
        self.names = [
            "fuzz1", "fuzz_profile", "firmware", f"arn:aws:iot:{region}:{account}:thing/fuzz1",
            f"arn:aws:iam::{account}:role/fuzz", f"arn:aws:iam::{account}:policy/fuzz", "{}",
            '{"Version": "2012-10-17", "Statement": []}', "cron(0 2 ? * SAT *)", "cron(\u00b2 2 ? * SAT *)",
            '{"url": "${aws:iot:s3-presigned-url:https://[}"}', "[" * 100 + "]" * 100, "a\n", ""]
        self.clients["iot"].create_thing(thingName="fuzz1")
        self.clients["s3"].create_bucket(Bucket="firmware")

    def _deliver(self, request: Any, event_name: str = "", **_: Any) -> AWSResponse:
        status, headers, body = _call_asgi(self.app, request)
        self.statuses.append((request.url, event_name.rpartition(".")[2], status))
        decoded = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers}
        return AWSResponse(request.url, status, decoded, _Raw(body))

    def close(self) -> None:
        self.server.background.shutdown(wait=True, cancel_futures=True)
        self.server.db.close()


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    built = Harness(tmp_path_factory.mktemp("fuzz-api"))
    yield built
    built.close()


def _value(shape: Any, names: list[str], draw: Callable[..., Any], depth: int = 0) -> Any:
    kind = shape.type_name
    if draw(st.integers(0, 11)) == 0:  # the wrong type now and then
        return draw(st.one_of(hostile_text, st.integers(-(10**30), 10**30), st.booleans()))
    if kind == "structure":
        if depth > 4:
            return {}
        members = shape.members
        required = list(shape.required_members)
        names_drawn = st.lists(st.sampled_from(sorted(members)), unique=True, max_size=3)
        optional = draw(names_drawn) if members else []
        return {name: _value(members[name], names, draw, depth + 1) for name in {*required, *optional}}
    if kind == "list":
        return [] if depth > 4 else [_value(shape.member, names, draw, depth + 1)
                                     for _ in range(draw(st.integers(0, 3)))]
    if kind == "map":
        keys = st.one_of(hostile_text, st.sampled_from(names))
        size = draw(st.integers(0, 2))
        return {draw(keys): _value(shape.value, names, draw, depth + 1) for _ in range(size)}
    if kind in ("integer", "long"):
        return draw(st.one_of(st.integers(-(10**25), 10**25), st.integers(-2, 300)))
    if kind in ("float", "double"):
        return draw(st.floats(allow_nan=False, allow_infinity=False))
    if kind == "boolean":
        return draw(st.booleans())
    if kind == "timestamp":
        return draw(st.one_of(st.datetimes(timezones=st.just(dt.UTC)),
                              st.just(dt.datetime(1, 1, 1, tzinfo=dt.UTC))))
    if kind == "blob":
        return draw(st.binary(max_size=64))
    enum = getattr(shape, "enum", None)
    if enum and draw(st.booleans()):
        return draw(st.sampled_from(enum))
    return draw(st.one_of(hostile_text, digits_or_not, st.sampled_from(names), st.text(max_size=20)))


@given(st.data())
def test_fuzz_no_request_answers_500(harness: Harness, data: st.DataObject) -> None:
    service, operation = data.draw(st.sampled_from(harness.operations), label="operation")
    client = harness.clients[service]
    model = client.meta.service_model.operation_model(operation)
    params = _value(model.input_shape, harness.names, data.draw, 0) if model.input_shape is not None else {}
    params = params if isinstance(params, dict) else {}
    before = len(harness.statuses)
    # ClientError: the server refused (what we want to see); the others: botocore could not
    # serialize the hostile parameters, so nothing was sent.
    with contextlib.suppress(ClientError, BotoCoreError, ValueError, TypeError, AttributeError, KeyError,
                             UnicodeError):
        getattr(client, _method(client, operation))(**params)
    answers = harness.statuses[before:]
    # 501 names an operation overair does not implement (an empty label can route a request
    # to another operation, as on AWS); every other 5xx would be a failure of overair.
    assert all(status < 500 or status == 501 for _, _, status in answers), answers


def _method(client: Any, operation: str) -> str:
    return str(client.meta.method_to_api_mapping and next(
        name for name, api in client.meta.method_to_api_mapping.items() if api == operation))


def test_fuzz_reached_the_handlers(harness: Harness) -> None:
    """The target above is not vacuous: its requests got past signing and parsing to
    answers of every kind (runs after it, on the same server)."""
    statuses = [status for _, _, status in harness.statuses]
    operations = {operation for _, operation, status in harness.statuses if status < 300}
    by_status = {s: statuses.count(s) for s in sorted(set(statuses))}
    print(f"fuzzed requests: {len(statuses)}; by status: {by_status}; "
          f"operations answered 2xx: {len(operations)}")
    assert len(statuses) >= 50
    assert any(status < 300 for status in statuses)
    assert any(400 <= status < 500 for status in statuses)
