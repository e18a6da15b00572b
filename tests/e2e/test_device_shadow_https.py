"""The Device Shadow service's HTTPS API for devices (iot-data over mutual TLS, issue 15
item 1), called with unmodified boto3 as a device calls AWS IoT's data endpoint on port
8443: no SigV4, the device's X.509 certificate, the fleet CA as the trust anchor.
Threat ids: N4 unauthorized device (a device may use only its own things' shadows)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import pytest
from botocore import UNSIGNED
from botocore.exceptions import ClientError
from sqlalchemy import select

from overair.server.storage.schema import AuditEntry
from tests.device_https import device_request
from tests.e2e.test_server_security import Device
from tests.server_harness import RunningServer


def _device_data(srv: RunningServer, bundle: Path | None) -> Any:
    config = botocore.config.Config(
        signature_version=UNSIGNED,
        retries={"max_attempts": 1},
        client_cert=(str(bundle / "device.crt"), str(bundle / "device.key")) if bundle is not None else None,
    )
    return boto3.session.Session(region_name=srv.clients.region).client(
        "iot-data",
        endpoint_url=f"https://localhost:{srv.settings.download_port}",
        verify=str(srv.settings.paths.fleet_ca_cert),
        config=config,
    )


def _code(call: Any, **kwargs: Any) -> tuple[str, int]:
    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    return caught.value.response["Error"]["Code"], caught.value.response["ResponseMetadata"]["HTTPStatusCode"]


@pytest.fixture
def shadow_device(srv: RunningServer, tmp_path: Path, request: pytest.FixtureRequest) -> tuple[str, Path]:
    name = "shd-" + "".join(c if c.isalnum() else "-" for c in request.node.name)[-30:].strip("-")
    return name, srv.provision(name, tmp_path / name)


def test_device_gets_updates_lists_and_deletes_its_shadows_over_https(
    srv: RunningServer, shadow_device: tuple[str, Path]
) -> None:
    name, bundle = shadow_device
    data, operator = _device_data(srv, bundle), srv.client("iot-data")
    assert _code(data.get_thing_shadow, thingName=name) == ("ResourceNotFoundException", 404)
    update = json.dumps({"state": {"reported": {"temp": 21}}, "clientToken": "t-1"}).encode()
    accepted = json.loads(data.update_thing_shadow(thingName=name, payload=update)["payload"].read())
    assert accepted["state"] == {"reported": {"temp": 21}}
    assert accepted["version"] == 1
    assert accepted["clientToken"] == "t-1"
    desired = json.dumps({"state": {"desired": {"temp": 19}}}).encode()
    operator.update_thing_shadow(thingName=name, payload=desired)
    document = json.loads(data.get_thing_shadow(thingName=name)["payload"].read())
    assert document["state"] == {"desired": {"temp": 19}, "reported": {"temp": 21}, "delta": {"temp": 19}}
    assert document["version"] == 2
    # Optimistic locking and the documented limits, as over MQTT.
    stale = json.dumps({"state": {"reported": {"temp": 19}}, "version": 1}).encode()
    assert _code(data.update_thing_shadow, thingName=name, payload=stale) == ("ConflictException", 409)
    too_large = json.dumps({"state": {"reported": {"blob": "x" * 9000}}}).encode()
    assert _code(data.update_thing_shadow, thingName=name, payload=too_large)[1] == 413
    # Named shadows, `$package` included.
    data.update_thing_shadow(thingName=name, shadowName="config", payload=b'{"state":{"reported":{"a":1}}}')
    data.update_thing_shadow(thingName=name, shadowName="$package",
                             payload=b'{"state":{"reported":{"firmware":{"version":"1.0.0"}}}}')
    assert data.list_named_shadows_for_thing(thingName=name)["results"] == ["$package", "config"]
    deleted = json.loads(data.delete_thing_shadow(thingName=name, shadowName="config")["payload"].read())
    assert deleted["version"] == 1
    assert data.list_named_shadows_for_thing(thingName=name)["results"] == ["$package"]
    gone = _code(data.get_thing_shadow, thingName=name, shadowName="config")
    assert gone == ("ResourceNotFoundException", 404)


def test_an_update_over_https_is_published_on_the_shadows_mqtt_topics(
    srv: RunningServer, shadow_device: tuple[str, Path]
) -> None:
    name, bundle = shadow_device
    device = Device(srv, bundle, name)
    try:
        assert device.connect()
        device.subscribe(f"$aws/things/{name}/shadow/update/accepted")
        _device_data(srv, bundle).update_thing_shadow(
            thingName=name, payload=b'{"state": {"reported": {"led": "on"}}, "clientToken": "h"}')
        ((_topic, message),) = device.wait_for(f"$aws/things/{name}/shadow/update/accepted")
        assert json.loads(message)["clientToken"] == "h"
    finally:
        device.close()


def test_n4_device_cannot_read_or_write_another_things_shadow_over_https(
    srv: RunningServer, shadow_device: tuple[str, Path], tmp_path: Path
) -> None:
    victim, _bundle = shadow_device
    other = srv.provision(f"{victim}-x", tmp_path / "other")
    operator = srv.client("iot-data")
    operator.update_thing_shadow(thingName=victim, payload=b'{"state":{"desired":{"unlock":false}}}')
    operator.update_thing_shadow(thingName=victim, shadowName="cfg", payload=b'{"state":{"desired":{"x":1}}}')
    intruder = _device_data(srv, other)
    refused = ("ResourceNotFoundException", 404)
    assert _code(intruder.get_thing_shadow, thingName=victim) == refused
    assert _code(intruder.get_thing_shadow, thingName=victim, shadowName="cfg") == refused
    assert _code(intruder.update_thing_shadow, thingName=victim,
                 payload=b'{"state":{"desired":{"unlock":true}}}') == refused
    assert _code(intruder.delete_thing_shadow, thingName=victim, shadowName="cfg") == refused
    assert _code(intruder.list_named_shadows_for_thing, thingName=victim) == refused
    # The same answer as for a thing that does not exist (no existence oracle).
    assert _code(intruder.get_thing_shadow, thingName="no-such-thing") == refused
    document = json.loads(operator.get_thing_shadow(thingName=victim)["payload"].read())
    assert document["state"]["desired"] == {"unlock": False}
    assert document["version"] == 1
    assert operator.list_named_shadows_for_thing(thingName=victim)["results"] == ["cfg"]
    anonymous = _code(_device_data(srv, None).get_thing_shadow, thingName=victim)
    assert anonymous[0] == "CertificateValidationException"
    with srv.server.db.reading() as s:
        denied = list(s.scalars(select(AuditEntry).where(AuditEntry.action == "iot:UpdateThingShadow",
                                                          AuditEntry.resource == f"thing/{victim}")))
    assert [e.decision for e in denied] == ["DENY"]


def test_no_500_hostile_shadow_requests_over_https(srv: RunningServer,
                                                   shadow_device: tuple[str, Path]) -> None:
    name, bundle = shadow_device
    deep = b"[" * 1000 + b"]" * 1000
    path = f"/things/{name}/shadow"
    for method, target, body in [
        ("POST", path, deep),
        ("POST", path, b'{"state": {"reported": ' + deep + b"}}"),
        ("POST", path, b"null"),
        ("POST", path, b"\xff\xfe"),
        ("POST", path, b'{"state": {"reported": {"n": 1' + b"0" * 400 + b"}}}"),
        ("POST", path, b'{"state": {"reported": {"k": "\\ud800"}}}'),
        ("POST", path, b'{"state": "x", "version": -1}'),
        ("POST", f"{path}?name=bad%2Fname", b'{"state": {"reported": {"a": 1}}}'),
        ("GET", f"{path}?name=" + "n" * 200, b""),
        ("POST", f"{path}?name=%00", b'{"state": {"reported": {"a": 1}}}'),
        ("POST", path, b"{" * 70_000),
    ]:
        status, error = device_request(srv, bundle, method, target, body)
        assert 400 <= status < 500, (target, body[:60], status, error)
    data = _device_data(srv, bundle)
    data.update_thing_shadow(thingName=name, payload=b'{"state":{"reported":{"ok":true}}}')
    after = json.loads(data.get_thing_shadow(thingName=name)["payload"].read())
    assert after["state"] == {"reported": {"ok": True}}
