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

Also here: notify-next to many things at once (a job's creation) still tailors each
document to its thing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from overair.core.versions import Version
from overair.sim.firmware import make_firmware
from tests.e2e.ota_helpers import create_ota
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


def test_one_notification_batch_tailors_each_document_to_its_things_profile(srv: RunningServer,
                                                                            tmp_path: Path) -> None:
    """notify-next for a job's whole target list is rendered from one read (profiles
    prefetched for the batch): an overair agent's document still carries its signed
    deployment metadata, a FreeRTOS device's stays AWS's alone."""
    iot, s3 = srv.client("iot"), srv.client("s3")
    s3.create_bucket(Bucket="firmware")
    s3.put_bucket_versioning(Bucket="firmware", VersioningConfiguration={"Status": "Enabled"})
    srv.provision("batch-agent", tmp_path / "agent")
    iot.create_thing(thingName="batch-freertos")
    arns = [iot.describe_thing(thingName=name)["thingArn"] for name in ("batch-agent", "batch-freertos")]
    info = create_ota(srv, "batch", arns, make_firmware(Version(1, 1, 0), 8192, seed="batch"))
    assert info["otaUpdateStatus"] == "CREATE_COMPLETE", info
    messages = srv.server.devices.notify_next_many(["batch-agent", "batch-freertos"])
    documents = {m.topic.split("/")[2]: json.loads(m.payload)["execution"]["jobDocument"]
                 for m in messages if m.topic.endswith("/notify-next")}
    assert "deployment" in documents["batch-agent"]["overair"]
    assert "overair" not in documents["batch-freertos"]
    assert documents["batch-freertos"]["afr_ota"]["files"] == documents["batch-agent"]["afr_ota"]["files"]
