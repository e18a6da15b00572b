"""N4: a device whose access is withdrawn is cut off in seconds, not at its next reconnect.

Mosquitto keeps established connections across a CRL/ACL reload, so the server closes
the sessions of devices that lost access (server/gateway/session_close.py). Each test
holds two connected devices, withdraws the access of one, and checks that exactly that
one is disconnected and cannot get back in, while the other stays connected.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.e2e.test_server_security import Device
from tests.server_harness import RunningServer

CUT_OFF_WITHIN = 10.0  # generous on a loaded CI machine; typically well under a second


def _connected_pair(srv: RunningServer, tmp_path: Path, tag: str) -> tuple[str, Device, Device]:
    victim, bystander = f"cut-{tag}", f"keep-{tag}"
    devices = []
    for name in (victim, bystander):
        device = Device(srv, srv.provision(name, tmp_path / name), name)
        assert device.connect()
        devices.append(device)
    return victim, devices[0], devices[1]


def _certificate_id(srv: RunningServer, thing: str) -> str:
    (principal,) = srv.client("iot").list_thing_principals(thingName=thing)["principals"]
    return str(principal.rpartition("/")[2])


def _gets_nothing(srv: RunningServer, device: Device, thing: str) -> bool:
    """A connected device that can no longer use its topics: its $next/get is unanswered."""
    device.subscribe(f"$aws/things/{thing}/jobs/$next/get/#")
    time.sleep(0.3)
    device.client.publish(f"$aws/things/{thing}/jobs/$next/get", json.dumps({"clientToken": "t"}), qos=1)
    return not device.wait_for("/jobs/$next/get/", timeout=2)


@pytest.mark.parametrize("status", ["REVOKED", "INACTIVE"])
def test_n4_o2_device_whose_certificate_is_taken_out_of_service_is_disconnected_at_once(
        srv: RunningServer, tmp_path: Path, status: str) -> None:
    victim, cut, keep = _connected_pair(srv, tmp_path, status.lower())
    try:
        srv.client("iot").update_certificate(certificateId=_certificate_id(srv, victim), newStatus=status)
        assert cut.disconnected.wait(CUT_OFF_WITHIN), "still connected after its certificate was withdrawn"
        assert not keep.disconnected.is_set()
        again = Device(srv, tmp_path / victim, victim)
        try:
            if status == "REVOKED":
                assert not again.connect(timeout=3)  # refused by TLS: the CRL has it
            elif again.connect(timeout=3):
                assert _gets_nothing(srv, again, victim)
        finally:
            again.close()
    finally:
        cut.close()
        keep.close()


def test_n4_detached_certificate_is_disconnected_at_once(srv: RunningServer, tmp_path: Path) -> None:
    victim, cut, keep = _connected_pair(srv, tmp_path, "detach")
    try:
        iot = srv.client("iot")
        (principal,) = iot.list_thing_principals(thingName=victim)["principals"]
        iot.detach_thing_principal(thingName=victim, principal=principal)
        assert cut.disconnected.wait(CUT_OFF_WITHIN)
        assert not keep.disconnected.is_set()
        again = Device(srv, tmp_path / victim, victim)
        try:
            if again.connect(timeout=3):
                assert _gets_nothing(srv, again, victim)
        finally:
            again.close()
    finally:
        cut.close()
        keep.close()
