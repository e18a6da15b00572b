"""The Device Shadow service against the real server (API, device service, Mosquitto),
driven by unmodified clients: the AWS IoT Device SDK v2's shadow client
(`awsiot.iotshadow.IotShadowClientV2`, MQTT 3.1.1 and MQTT 5) on the device side and
boto3's `iot-data` on the operator side (issue 15, item 1).

AWS's semantics are in core/shadow.py's docstring; docs/compatibility.md ("Device
Shadow service") sums them up.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import awscrt.mqtt_request_response
import pytest
from awsiot import ServiceStreamOptions, V2ServiceException, iotshadow
from botocore.exceptions import ClientError

from tests.e2e.sdk_device import ESTABLISHED, WAIT, Inbox, Protocol, SdkDevice
from tests.e2e.test_iam import Users
from tests.e2e.test_server_security import Device
from tests.server_harness import RunningServer


class ShadowDevice:
    """An SDK device with the SDK's V2 shadow client."""

    def __init__(self, device: SdkDevice) -> None:
        self.device = device
        self.thing = device.thing
        self.inbox = Inbox()
        options = awscrt.mqtt_request_response.ClientOptions(
            max_request_response_subscriptions=4, max_streaming_subscriptions=4,
            operation_timeout_in_seconds=int(WAIT))
        self.client = iotshadow.IotShadowClientV2(device.transport, options)
        self._streams: list[Any] = []

    def call(self, operation: Callable[[Any], Future[Any]], request: Any) -> Any:
        return operation(request).result(WAIT)

    def rejected(self, operation: Callable[[Any], Future[Any]], request: Any) -> Any:
        """AWS's error document (V2ErrorResponse) of a rejected request."""
        with pytest.raises(V2ServiceException) as caught:
            operation(request).result(WAIT)
        assert caught.value.modeled_error is not None, caught.value
        return caught.value.modeled_error

    def update(self, name: str | None = None, **state: Any) -> Any:
        version = state.pop("version", None)
        shadow_state = iotshadow.ShadowState(**state)
        if name is None:
            return self.call(self.client.update_shadow, iotshadow.UpdateShadowRequest(
                thing_name=self.thing, state=shadow_state, version=version))
        return self.call(self.client.update_named_shadow, iotshadow.UpdateNamedShadowRequest(
            thing_name=self.thing, shadow_name=name, state=shadow_state, version=version))

    def watch(self, kind: str, create: Callable[..., Any], request: Any) -> None:
        established: Future[None] = Future()

        def status(event: Any) -> None:
            if event.type == ESTABLISHED and not established.done():
                established.set_result(None)

        options = ServiceStreamOptions(incoming_event_listener=lambda e: self.inbox.put(kind, e),
                                       subscription_status_listener=status)
        stream = create(request, options)
        stream.open()
        self._streams.append(stream)
        established.result(WAIT)


@pytest.fixture(params=list(Protocol), ids=lambda protocol: protocol.value)
def shadow_device(srv: RunningServer, tmp_path: Path,
                  request: pytest.FixtureRequest) -> Iterator[ShadowDevice]:
    protocol = Protocol(request.param)
    test = request.node.originalname.removeprefix("test_")[:20]
    thing = f"shadow-{protocol.value}-{test}".replace("_", "-")
    device = SdkDevice(srv, srv.provision(thing, tmp_path / thing), thing, protocol)
    try:
        yield ShadowDevice(device)
    finally:
        device.close()


def _payload(response: dict[str, Any]) -> Any:
    return json.loads(response["payload"].read())


def test_desired_reported_delta_and_versions_between_a_device_and_an_operator(
        srv: RunningServer, shadow_device: ShadowDevice) -> None:
    device, data = shadow_device, srv.client("iot-data")
    thing = device.thing
    device.watch("delta", device.client.create_shadow_delta_updated_stream,
                 iotshadow.ShadowDeltaUpdatedSubscriptionRequest(thing_name=thing))
    device.watch("updated", device.client.create_shadow_updated_stream,
                 iotshadow.ShadowUpdatedSubscriptionRequest(thing_name=thing))
    missing = device.rejected(device.client.get_shadow, iotshadow.GetShadowRequest(thing_name=thing))
    assert missing.code == 404

    first = device.update(reported={"color": "red", "fw": {"version": "1.0.0"}})
    assert first.version == 1
    assert first.state.reported == {"color": "red", "fw": {"version": "1.0.0"}}
    assert set(first.metadata.reported) == {"color", "fw"}

    # The operator sets a desired state over HTTPS; the device hears the delta on MQTT.
    accepted = _payload(data.update_thing_shadow(
        thingName=thing, payload=json.dumps({"state": {"desired": {"color": "green"}}}).encode()))
    assert accepted["version"] == 2
    delta = device.inbox.wait_for("delta", what="the operator's desired state as a delta")
    assert (delta.state, delta.version) == ({"color": "green"}, 2)
    documents = device.inbox.wait_for("updated", lambda e: e.current.version == 2)
    assert documents.previous.state.reported == {"color": "red", "fw": {"version": "1.0.0"}}
    assert documents.current.state.desired == {"color": "green"}

    got = device.call(device.client.get_shadow, iotshadow.GetShadowRequest(thing_name=thing))
    assert (got.version, got.state.delta) == (2, {"color": "green"})
    assert got.metadata.desired["color"]["timestamp"] is not None

    # Optimistic locking: an update naming an old version is refused, 409.
    stale = device.rejected(device.client.update_shadow, iotshadow.UpdateShadowRequest(
        thing_name=thing, state=iotshadow.ShadowState(reported={"color": "green"}), version=1))
    assert stale.code == 409
    device.update(reported={"color": "green", "fw": None}, version=2)  # null removes a member
    shadow = _payload(data.get_thing_shadow(thingName=thing))
    assert shadow["state"] == {"desired": {"color": "green"}, "reported": {"color": "green"}}
    assert shadow["version"] == 3
    assert "delta" not in shadow["state"]

    deleted = device.call(device.client.delete_shadow, iotshadow.DeleteShadowRequest(thing_name=thing))
    assert deleted.version == 3
    with pytest.raises(ClientError) as caught:
        data.get_thing_shadow(thingName=thing)
    assert caught.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert device.update(reported={"color": "blue"}).version == 4  # a delete keeps the version


def test_named_shadows_and_the_operator_listing(srv: RunningServer, shadow_device: ShadowDevice) -> None:
    device, data = shadow_device, srv.client("iot-data")
    thing = device.thing
    device.update("config", desired={"interval": 60})
    device.update("health", reported={"uptime": 5})
    assert data.list_named_shadows_for_thing(thingName=thing)["results"] == ["config", "health"]
    got = device.call(device.client.get_named_shadow, iotshadow.GetNamedShadowRequest(
        thing_name=thing, shadow_name="config"))
    assert (got.state.desired, got.state.delta, got.version) == ({"interval": 60}, {"interval": 60}, 1)
    assert _payload(data.get_thing_shadow(thingName=thing, shadowName="health"))["state"] == {
        "reported": {"uptime": 5}}
    data.delete_thing_shadow(thingName=thing, shadowName="health")
    assert data.list_named_shadows_for_thing(thingName=thing)["results"] == ["config"]
    missing = device.rejected(device.client.get_shadow, iotshadow.GetShadowRequest(thing_name=thing))
    assert missing.code == 404  # the classic shadow is another document


def test_documented_limits_are_refused_with_aws_codes(srv: RunningServer,
                                                      shadow_device: ShadowDevice) -> None:
    device, data = shadow_device, srv.client("iot-data")
    thing = device.thing
    big = device.rejected(device.client.update_shadow, iotshadow.UpdateShadowRequest(
        thing_name=thing, state=iotshadow.ShadowState(reported={"blob": "x" * 8200})))
    assert big.code == 413
    deep: dict[str, Any] = {"v": 1}
    for _ in range(6):
        deep = {"n": deep}
    nested = device.rejected(device.client.update_shadow, iotshadow.UpdateShadowRequest(
        thing_name=thing, state=iotshadow.ShadowState(reported=deep)))
    assert (nested.code, "nesting" in nested.message) == (400, True)
    for payload, code in ((b"{\"state\": {\"reported\": {\"a\": \"" + b"y" * 8200 + b"\"}}}",
                           "RequestEntityTooLargeException"),
                          (b"not json", "InvalidRequestException"),
                          (b"{\"state\": {\"delta\": {}}}", "InvalidRequestException"),
                          (b"{\"state\": {\"reported\": {}}, \"version\": 7}", "ConflictException")):
        with pytest.raises(ClientError) as caught:
            data.update_thing_shadow(thingName=thing, payload=payload)
        assert caught.value.response["Error"]["Code"] == code, payload[:40]
    with pytest.raises(ClientError) as caught:
        data.get_thing_shadow(thingName="no-such-thing")
    assert caught.value.response["Error"]["Code"] == "ResourceNotFoundException"


def test_a_device_reaches_only_its_own_things_shadow(srv: RunningServer, tmp_path: Path) -> None:
    """The broker's access rules (gateway/broker.py): `$aws/things/<own thing>/#` only, so
    another thing's shadow topics are neither readable nor writable."""
    owner_bundle = srv.provision("shadow-owner", tmp_path / "owner")
    srv.provision("shadow-victim", tmp_path / "victim")
    srv.client("iot-data").update_thing_shadow(
        thingName="shadow-victim", payload=json.dumps({"state": {"desired": {"lock": "closed"}}}).encode())
    owner = Device(srv, owner_bundle, "shadow-owner")
    try:
        assert owner.connect()
        granted = owner.client.subscribe("$aws/things/shadow-victim/shadow/get/accepted", 1)
        assert granted[0] == 0  # the SUBSCRIBE was sent; the broker refuses it in the SUBACK
        owner.client.publish("$aws/things/shadow-victim/shadow/update",
                             json.dumps({"state": {"desired": {"lock": "open"}}}), qos=1)
        assert owner.disconnected.wait(10)  # MQTT 3.1.1: a refused PUBLISH closes the connection
    finally:
        owner.close()
    victim = _payload(srv.client("iot-data").get_thing_shadow(thingName="shadow-victim"))
    assert victim["state"]["desired"] == {"lock": "closed"}
    assert victim["version"] == 1


def test_iot_data_operations_are_authorized_per_action_and_thing(srv: RunningServer) -> None:
    srv.client("iot").create_thing(thingName="shadow-iam")
    srv.client("iot-data").update_thing_shadow(
        thingName="shadow-iam", payload=json.dumps({"state": {"reported": {"ok": True}}}).encode())
    arn = f"arn:aws:iot:{srv.settings.region}:{srv.settings.account_id}:thing/shadow-iam"
    reader = Users(srv).create("shadow-reader", inline={"read": json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "iot:GetThingShadow", "Resource": arn}]})})
    data = reader.client("iot-data")
    assert _payload(data.get_thing_shadow(thingName="shadow-iam"))["state"]["reported"] == {"ok": True}
    calls: list[tuple[str, dict[str, Any]]] = [
        ("update_thing_shadow", {"thingName": "shadow-iam", "payload": b'{"state": {}}'}),
        ("get_thing_shadow", {"thingName": "shadow-other"}),
        ("delete_thing_shadow", {"thingName": "shadow-iam"})]
    for operation, params in calls:
        with pytest.raises(ClientError) as caught:
            getattr(data, operation)(**params)
        assert caught.value.response["Error"]["Code"] == "AccessDeniedException"
