"""GetThingConnectivityData through boto3 against the real server and broker (issue 15:
"which devices are offline and since when"): connected while any of the thing's client
ids is, and AWS's disconnect reason once it left."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.e2e.ota_helpers import wait_for
from tests.e2e.test_server_security import Device
from tests.server_harness import RunningServer


def test_connected_then_offline_since_with_the_reason(srv: RunningServer, tmp_path: Path) -> None:
    iot = srv.client("iot")
    bundle = srv.provision("presence-1", tmp_path / "presence-1")
    other = srv.provision("presence-2", tmp_path / "presence-2")
    assert iot.get_thing_connectivity_data(thingName="presence-1")["connected"] is False  # never seen

    def state(thing: str = "presence-1", **expected: Any) -> Any:
        def matches() -> Any:
            data = iot.get_thing_connectivity_data(thingName=thing)
            return data if all(data.get(k) == v for k, v in expected.items()) else None
        return wait_for(matches, timeout=10, what=f"connectivity of {thing} {expected}")

    first = Device(srv, bundle, "presence-1")
    assert first.connect()
    online = state(connected=True)
    assert "disconnectReason" not in online
    second = Device(srv, bundle, "presence-1#2")  # a second client id of the same thing
    assert second.connect()
    first.close()
    # Events are applied in the broker's order: once a later one (another thing
    # connecting) shows, the first client's disconnection has been applied too.
    barrier = Device(srv, other, "presence-2")
    assert barrier.connect()
    state("presence-2", connected=True)
    barrier.close()
    still = iot.get_thing_connectivity_data(thingName="presence-1")
    assert (still["connected"], still["timestamp"]) == (True, online["timestamp"])  # presence-1#2 is on
    second.close()
    offline = state(connected=False, disconnectReason="CLIENT_INITIATED_DISCONNECT")
    assert offline["timestamp"] >= online["timestamp"]

    rogue = Device(srv, bundle, "presence-1")
    assert rogue.connect()
    state(connected=True)
    rogue.client.publish("$aws/things/someone-else/shadow/update", b"{}", qos=1)
    assert rogue.disconnected.wait(10)
    state(connected=False, disconnectReason="FORBIDDEN_ACCESS")
    rogue.close()

    with pytest.raises(ClientError) as caught:
        iot.get_thing_connectivity_data(thingName="no-such-thing")
    assert caught.value.response["Error"]["Code"] == "ResourceNotFoundException"


def test_a_broker_that_died_leaves_its_devices_disconnected(srv: RunningServer, tmp_path: Path) -> None:
    """The broker logs nothing for connections it loses by dying; after the supervisor's
    restart, a thing recorded connected reads disconnected (SERVER_INITIATED_DISCONNECT)."""
    iot = srv.client("iot")
    bundle = srv.provision("presence-3", tmp_path / "presence-3")
    device = Device(srv, bundle, "presence-3")
    assert device.connect()
    wait_for(lambda: iot.get_thing_connectivity_data(thingName="presence-3")["connected"], timeout=10,
             what="connected")
    device.client.loop_stop()  # no reconnection after the broker comes back
    broker, supervisor = srv.server.broker, srv.server.supervisor
    assert broker is not None
    assert broker.process is not None
    assert supervisor is not None
    restarts = supervisor.status()["restarts"]
    os.kill(broker.process.pid, signal.SIGKILL)
    wait_for(lambda: supervisor.up and supervisor.status()["restarts"] > restarts, timeout=30,
             what="the broker's restart")
    data = iot.get_thing_connectivity_data(thingName="presence-3")
    assert (data["connected"], data["disconnectReason"]) == (False, "SERVER_INITIATED_DISCONNECT")
