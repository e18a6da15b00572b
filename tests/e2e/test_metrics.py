"""Prometheus metrics and log lines (issue 16, item 3), against the real server: after a
signed rollout to one agent over MQTT, `/metrics` (on its own port) shows the API
requests by operation, the blocks and bytes served, the signing job, the audit entries,
the executions by state, the rollout's progress, the broker and the device connected,
and the code-signing certificate's expiry; the server logs each ended execution and the
job's completion."""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from overair.core.versions import Version
from overair.sim.firmware import make_firmware
from overair.sim.fleet import Fleet
from tests.e2e.conftest import BUCKET
from tests.e2e.ota_helpers import create_ota, wait_for
from tests.server_harness import RunningServer, free_port, running_server

SIZE = 20 * 1024


@pytest.fixture(scope="module")
def metered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    port = free_port()
    with running_server(tmp_path_factory.mktemp("metered"), settings_toml=f"metrics_port = {port}") as srv:
        s3 = srv.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        yield srv


def scrape(srv: RunningServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    url = f"http://{srv.settings.http_host}:{srv.settings.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_a_rollout_shows_in_the_metrics_and_the_log(
    metered: RunningServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    before = scrape(metered)
    factory = tmp_path / "factory.bin"
    factory.write_bytes(make_firmware(Version(1, 0, 0), SIZE, seed="metrics-factory"))
    bundle = metered.provision("metered-1", tmp_path / "metered-1", factory_image=factory)
    arn = metered.client("iot").describe_thing(thingName="metered-1")["thingArn"]
    with caplog.at_level(logging.INFO, logger="overair.jobs"), Fleet([bundle]) as fleet:
        assert fleet.wait(lambda s: all(x.connected for x in s.values()), 30)
        connected = scrape(metered)
        info = create_ota(metered, "metered", [arn], make_firmware(Version(1, 1, 0), SIZE, seed="metrics"))
        assert info["otaUpdateStatus"] == "CREATE_COMPLETE", info.get("errorInfo")
        job = info["awsIotJobId"]
        wait_for(
            lambda: (
                metered.client("iot").describe_job_execution(jobId=job, thingName="metered-1")["execution"][
                    "status"
                ]
                == "SUCCEEDED"
            ),
            what="the update",
        )
        after = scrape(metered)

    assert value(connected, "overair_devices_connected") >= 1
    assert value(connected, "overair_device_capacity") > value(connected, "overair_devices_connected")
    assert value(after, "overair_broker_up") == 1.0
    # Shown even when nothing was dropped, so that an alert can be written against it.
    assert ("overair_broker_service_drop_episodes_total", ()) in after
    assert value(after, "overair_broker_service_drop_episodes_total") == 0.0
    created = value(
        after, "overair_api_requests_total", service="iot", operation="CreateOTAUpdate", status="200"
    )
    assert (
        created
        - value(
            before, "overair_api_requests_total", service="iot", operation="CreateOTAUpdate", status="200"
        )
        == 1
    )
    assert value(after, "overair_api_request_seconds_count", service="iot", operation="CreateOTAUpdate") >= 1
    blocks = value(after, "overair_stream_blocks_served_total") - value(
        before, "overair_stream_blocks_served_total"
    )
    assert blocks >= SIZE // 4096
    served = value(after, "overair_bytes_served_total", transport="mqtt") - value(
        before, "overair_bytes_served_total", transport="mqtt"
    )
    assert served >= SIZE
    assert value(after, "overair_signing_jobs_total", outcome="succeeded") >= 1
    assert value(after, "overair_audit_entries_written_total") > value(
        before, "overair_audit_entries_written_total"
    )
    assert value(after, "overair_job_executions", state="SUCCEEDED") >= 1
    assert value(after, "overair_jobs", status="COMPLETED") >= 1
    expiries = [
        v for (name, _), v in after.items() if name == "overair_code_signing_certificate_expiry_seconds"
    ]
    assert expiries
    assert all(v > 0 for v in expiries)
    roots = [v for (name, _), v in after.items() if name == "overair_code_signing_root_expiry_seconds"]
    assert len(roots) == 1  # the data directory's code-signing root
    assert roots[0] > 0
    ended = [r for r in caplog.records if r.name == "overair.jobs" and "metered-1" in r.getMessage()]
    assert any("SUCCEEDED" in r.getMessage() for r in ended)
    assert any(f"job {job} completed" in r.getMessage() for r in caplog.records)


def test_a_scrape_with_an_active_rollout_labels_its_progress(metered: RunningServer) -> None:
    iot = metered.client("iot")
    iot.create_thing(thingName="metered-offline")
    arn = iot.describe_thing(thingName="metered-offline")["thingArn"]
    iot.create_job(jobId="metered-pending", targets=[arn], document='{"step": 1}')
    samples = scrape(metered)
    assert value(samples, "overair_rollout_executions", job="metered-pending", state="QUEUED") == 1
