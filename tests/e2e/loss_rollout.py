"""A rollout during which part of the server is lost (docs/scaling.md "Losing a node"):
FreeRTOS-shaped devices (bench/fleet_devices.py, each its own mutual-TLS connection and
certificate) that reconnect by themselves get an OTA update; once a quarter of them are
updating, `lose` runs (a serve process or a broker SIGKILLed); the rollout must complete
with every execution SUCCEEDED exactly once, as the database rows and the API say.

Shared by tests/e2e/test_node_loss.py (nodes behind HAProxy on PostgreSQL) and
tests/e2e/test_broker_loss.py (the single embedded server on SQLite)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.fleet import GROUP, DeviceProcesses, provision_bulk
from bench.fleet_devices import FleetDeviceResult

from overair.core.versions import Version
from overair.sim.firmware import make_firmware
from tests.e2e.ota_helpers import create_ota, wait_for
from tests.server_harness import RunningServer

JOB = "AFR_OTA-node-loss"
Executions = Callable[[str], list[tuple[str, str, int]]]  # job id -> (thing, status, execution number)


@dataclass
class Site:
    server: RunningServer  # registers the devices and creates the update (the first node)
    api: Any  # the IoT client that counts the executions (a node that is not lost)
    mqtt_port: int  # where devices connect: HAProxy, or the server's own broker
    download_port: int  # where pre-signed URLs lead (the devices check that the URL names it)
    executions: Executions  # read from the database itself


def rollout_losing(site: Site, root: Path, devices: int, lose: Callable[[], None], *, image_size: int,
                   device_processes: int = 1, timeout: float = 240,
                   protocol: str = "MQTT") -> list[FleetDeviceResult]:
    """`protocol` MQTT: the image in MQTT stream blocks; HTTP: in Range GETs of the
    pre-signed URL (status updates stay on MQTT). The devices' results are returned."""
    srv = site.server
    specs = provision_bulk(srv, root / "devices", devices).specs  # one StartThingRegistrationTask
    image = make_firmware(Version(1, 1, 0), image_size, seed="node-loss")
    fleet = DeviceProcesses(specs, device_processes, srv.settings.paths.fleet_ca_cert, site.mqtt_port,
                            hashlib.sha256(image).hexdigest(), connect_rate=500, timeout=timeout,
                            http_port=site.download_port if protocol == "HTTP" else 0, reconnect=True)
    fleet.wait_ready(120)
    group_arn = srv.client("iot").describe_thing_group(thingGroupName=GROUP)["thingGroupArn"]
    info = create_ota(srv, "node-loss", [group_arn], image, protocols=(protocol,))
    assert info["otaUpdateStatus"] == "CREATE_COMPLETE", info.get("errorInfo")

    def counts() -> dict[str, Any]:
        return dict(site.api.describe_job(jobId=JOB)["job"]["jobProcessDetails"])

    # The middle of the rollout: a quarter of the devices are updating and not all have
    # finished; then the loss.
    at_loss = wait_for(lambda: (c := counts())["numberOfInProgressThings"] >= max(1, devices // 4) and c,
                       120, "the rollout to be under way")
    lose()
    assert at_loss["numberOfSucceededThings"] < devices  # work was in flight
    results, _ = fleet.results(timeout + 60)
    assert [r.error for r in results if r.error] == []
    assert sum(r.reconnects for r in results) > 0  # devices cut off came back by themselves
    done = wait_for(lambda: (c := counts())["numberOfSucceededThings"] == devices and c, 60,
                    "every execution SUCCEEDED")
    assert {k: v for k, v in done.items() if k != "numberOfSucceededThings" and v} == {}
    # Exactly once: one execution per thing, number 1, SUCCEEDED, in the database.
    assert sorted(site.executions(JOB)) == sorted((spec.thing, "SUCCEEDED", 1) for spec in specs)
    listed = site.api.list_job_executions_for_job(jobId=JOB, maxResults=250)
    assert len(listed["executionSummaries"]) == min(devices, 250)
    return results
