"""aws:SourceIp and aws:SecureTransport come from the connection through the real server
(threat O1): forged X-Forwarded-* headers from a loopback client change nothing, unless
the operator named that peer in `trusted_proxies`; the audit log records the true peer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import pytest
from botocore.exceptions import ClientError
from sqlalchemy import select

from overair.server.storage.schema import AuditEntry
from tests.server_harness import RunningServer, running_server

FORGED = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}
# Allowed only from 203.0.113.0/24, and only over TLS: neither is true of the test's
# plain-HTTP loopback connection.
POLICY = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "iot:ListThings", "Resource": "*",
     "Condition": {"IpAddress": {"aws:SourceIp": "203.0.113.0/24"}}},
    {"Effect": "Allow", "Action": "s3:ListAllMyBuckets", "Resource": "*",
     "Condition": {"Bool": {"aws:SecureTransport": "true"}}},
]}


def _forging_client(srv: RunningServer, service: str, user: str) -> Any:
    """A client of `user` (created with POLICY) that adds FORGED headers to every request."""
    iam = srv.client("iam")
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName="from-the-office", PolicyDocument=json.dumps(POLICY))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    session = boto3.session.Session(aws_access_key_id=key["AccessKeyId"],
                                    aws_secret_access_key=key["SecretAccessKey"],
                                    region_name=srv.settings.region)
    client = session.client(service, endpoint_url=srv.endpoint,
                            config=botocore.config.Config(retries={"max_attempts": 1}))

    def forge(request: Any, **_: Any) -> None:
        for name, value in FORGED.items():
            request.headers[name] = value

    client.meta.events.register("before-sign", forge)
    return client


def _sources(srv: RunningServer, user: str, action: str) -> set[str]:
    with srv.server.db.reading() as session:
        rows = session.scalars(select(AuditEntry).where(AuditEntry.action == action)).all()
        return {row.source for row in rows if row.principal.endswith(f":user/{user}")}


@pytest.fixture(scope="module")
def direct(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("origin") / "server") as srv:
        yield srv


def test_o1_forwarded_headers_from_an_untrusted_peer_do_not_set_source_ip(direct: RunningServer) -> None:
    iot = _forging_client(direct, "iot", "forger-ip")
    with pytest.raises(ClientError) as refused:
        iot.list_things()
    assert refused.value.response["Error"]["Code"] == "AccessDeniedException"
    assert _sources(direct, "forger-ip", "iot:ListThings") == {"127.0.0.1"}


def test_o1_forwarded_proto_from_an_untrusted_peer_does_not_set_secure_transport(
        direct: RunningServer) -> None:
    s3 = _forging_client(direct, "s3", "forger-tls")
    with pytest.raises(ClientError) as refused:
        s3.list_buckets()
    assert refused.value.response["Error"]["Code"] == "AccessDenied"


def test_o1_a_trusted_proxy_forwards_the_client_and_the_audit_names_both(tmp_path: Path) -> None:
    with running_server(tmp_path / "server", settings_toml='trusted_proxies = ["127.0.0.1/32"]') as srv:
        iot = _forging_client(srv, "iot", "behind-proxy")
        iot.list_things()
        assert _sources(srv, "behind-proxy", "iot:ListThings") == {"203.0.113.7 via 127.0.0.1"}
        _forging_client(srv, "s3", "behind-proxy-tls").list_buckets()
