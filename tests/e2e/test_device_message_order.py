"""A device's messages reach the job service in the order the device sent them, whatever
their QoS (found by bench/fleet.py: at 1,000 devices, 11% of them were told after their
reboot that no self-test was pending, and their executions stayed IN_PROGRESS).

A FreeRTOS device publishes `self_test: ready` at QoS 1, reboots and asks `$next/get` at
QoS 0; the answer must carry the `self_test` it just reported. MQTT orders messages only
within one QoS, and Mosquitto holds QoS 1 deliveries to a subscriber behind a window of
20 unacknowledged ones while QoS 0 ones go straight out: a service subscribed at QoS 1
that is busy for a moment receives the QoS 0 request first. The test makes the service
busy on purpose (its event loop sleeps while 30 devices send both messages), so that
the window is full every time, then checks every answer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_server_security import Device
from tests.server_harness import RunningServer, running_server

DEVICES = 30  # more than Mosquitto's default max_inflight_messages (20)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("server")) as running:
        yield running


def test_self_test_report_at_qos1_is_seen_by_the_next_get_at_qos0(srv: RunningServer, tmp_path: Path) -> None:
    iot = srv.client("iot")
    names = [f"order-{i:02d}" for i in range(DEVICES)]
    bundles = [srv.provision(name, tmp_path / name) for name in names]
    arns = [iot.describe_thing(thingName=name)["thingArn"] for name in names]
    iot.create_job(jobId="order", targets=arns, document=json.dumps({"operation": "test"}))
    devices = [Device(srv, bundle, name) for name, bundle in zip(names, bundles, strict=True)]
    try:
        for name, device in zip(names, devices, strict=True):
            assert device.connect(), name
            device.subscribe(f"$aws/things/{name}/jobs/$next/get/accepted")
        time.sleep(0.5)  # the subscriptions are in place
        # The service's event loop (which reads from the broker) is made to sleep while
        # every device sends its report and its question.
        srv.thread._loop.call_soon_threadsafe(time.sleep, 2.0)
        time.sleep(0.1)
        for name, device in zip(names, devices, strict=True):
            device.client.publish(f"$aws/things/{name}/jobs/order/update", json.dumps(
                {"status": "IN_PROGRESS", "statusDetails": {"self_test": "ready"}}), qos=1)
            device.client.publish(f"$aws/things/{name}/jobs/$next/get",
                                  json.dumps({"clientToken": "after-reboot"}), qos=0)
        answers = {}
        for name, device in zip(names, devices, strict=True):
            found = device.wait_for("$next/get/accepted", timeout=20)
            assert found, f"{name} got no answer to $next/get"
            answers[name] = json.loads(found[0][1]).get("execution", {}).get("statusDetails")
        behind = [name for name, details in answers.items() if details != {"self_test": "ready"}]
        assert behind == [], f"$next/get answered before the device's own earlier report: {behind}"
    finally:
        for device in devices:
            device.close()
