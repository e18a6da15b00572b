"""Losing the broker of the single embedded server in the middle of a rollout (issue 17,
docs/scaling.md "Losing a node"): the default installation, one `overair serve` on
SQLite with the Mosquitto it supervises, no HAProxy, no PostgreSQL. 20 FreeRTOS-shaped
devices (bench/fleet_devices.py) connect straight to the server's `mqtt_port` and
reconnect by themselves; once a quarter of them are updating, the Mosquitto is
SIGKILLed. The supervisor starts it again, the service reconnects and tells every thing
with a pending job its next job again; the rollout completes with every execution
SUCCEEDED exactly once (the SQLite rows and the API)."""

from __future__ import annotations

import os
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from bench.fleet import BUCKET, GROUP

from tests.e2e.loss_rollout import Site, rollout_losing
from tests.e2e.ota_helpers import wait_for
from tests.server_harness import RunningServer, running_server


@pytest.fixture
def single(tmp_path: Path) -> Iterator[RunningServer]:
    with running_server(tmp_path / "server") as srv:
        s3 = srv.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        srv.client("iot").create_thing_group(thingGroupName=GROUP)
        yield srv


def test_losing_the_broker_of_the_single_server_in_the_middle_of_a_rollout(single: RunningServer,
                                                                           tmp_path: Path) -> None:
    database = single.settings.paths.database

    def executions(job: str) -> list[tuple[str, str, int]]:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
            return connection.execute("SELECT thing_name, status, execution_number FROM job_executions "
                                      "WHERE job_id = ?", (job,)).fetchall()

    def kill_the_broker() -> None:
        broker, supervisor = single.server.broker, single.server.supervisor
        assert broker is not None
        assert broker.process is not None
        assert supervisor is not None
        assert supervisor.restarts == 0
        os.kill(broker.process.pid, signal.SIGKILL)  # Mosquitto itself (setpriv execs it)

    site = Site(single, single.client("iot"), single.settings.mqtt_port, single.settings.download_port,
                executions)
    rollout_losing(site, tmp_path, 20, kill_the_broker, image_size=2 * 1024 * 1024)
    supervisor = single.server.supervisor
    assert supervisor is not None
    wait_for(lambda: supervisor.restarts == 1 and supervisor.up, 10, "the supervisor's restart")
