"""`overair demo`: a complete signed rollout to a simulated fleet on a throwaway server.

It initialises a temporary data directory, starts the server (API, device service and
its own Mosquitto), registers N devices in a thing group, builds firmware 1.0.0 (the
factory image) and 1.1.0, uploads 1.1.0, has the server sign it with the development
signer through CreateOTAUpdate, and watches every device download, verify, reboot,
self-test and report SUCCEEDED. Everything it started is stopped at the end.
"""

from __future__ import annotations

import json
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from overair.cli.client import ApiClients
from overair.cli.provisioning import provision_thing
from overair.core.versions import Version
from overair.server.app import ServerThread
from overair.server.bootstrap import DEV_PROFILE, initialize
from overair.server.settings import load_settings
from overair.sim.firmware import make_firmware
from overair.sim.fleet import Fleet

GROUP = "demo-fleet"
BUCKET = "firmware"
FIRMWARE_SIZE = 256 * 1024


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_demo(devices: int, *, json_output: bool, timeout: float) -> bool:
    console = Console(stderr=json_output)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="overair-demo-") as tmp:
        root = Path(tmp)
        initialize(root / "server", http_port=_free_port(), mqtt_port=_free_port(),
                   download_port=_free_port())
        settings = load_settings(root / "server")
        server = ServerThread(settings)
        console.print(f"[bold]overair demo[/bold]: {devices} simulated device(s), server in {root}")
        server.start()
        try:
            results = _rollout(root, settings, devices, console, timeout)
        finally:
            server.stop()
    seconds = round(time.monotonic() - started, 2)
    succeeded = sum(1 for status in results.values() if status == "SUCCEEDED")
    table = Table(title="job executions")
    table.add_column("thing")
    table.add_column("status")
    for thing, status in sorted(results.items()):
        table.add_row(thing, f"[green]{status}[/green]" if status == "SUCCEEDED" else f"[red]{status}[/red]")
    console.print(table)
    console.print(f"{succeeded}/{devices} devices updated to 1.1.0 in {seconds} s")
    if json_output:
        print(json.dumps({"devices": devices, "succeeded": succeeded,
                          "failed": devices - succeeded, "seconds": seconds}))
    return succeeded == devices


def _rollout(root: Path, settings: Any, devices: int, console: Console, timeout: float) -> dict[str, str]:
    paths = settings.paths
    clients = ApiClients.from_data_dir(paths.root)
    iot, s3 = clients.client("iot"), clients.client("s3")
    factory = root / "factory-1.0.0.bin"
    factory.write_bytes(make_firmware(Version(1, 0, 0), FIRMWARE_SIZE, seed="v1"))
    group = iot.create_thing_group(thingGroupName=GROUP)
    bundles = [provision_thing(iot, f"demo-device-{i}", root / "devices" / f"demo-device-{i}",
                               fleet_ca_pem=paths.fleet_ca_cert.read_bytes(),
                               code_signing_roots_pem=paths.code_signing_root.read_bytes(),
                               revocation_signer_pem=paths.revocation_signer_cert.read_bytes(),
                               deployment_keys_pem=paths.deployment_keys.read_bytes()
                               if paths.deployment_keys.exists() else None,
                               mqtt_host="127.0.0.1", mqtt_port=settings.mqtt_port, group=GROUP,
                               factory_image=factory).parent
               for i in range(1, devices + 1)]
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    put = s3.put_object(Bucket=BUCKET, Key="app/firmware-1.1.0.bin",
                        Body=make_firmware(Version(1, 1, 0), FIRMWARE_SIZE, seed="v2"))

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[phase]}"),
                  console=console, transient=False) as progress:
        tasks = {f"demo-device-{i}": progress.add_task(f"demo-device-{i}", total=1, phase="booting")
                 for i in range(1, devices + 1)}

        def on_progress(thing: str, _job: str, received: int, total: int) -> None:
            progress.update(tasks[thing], completed=received, total=max(total, 1), phase="downloading")

        with Fleet(bundles, progress=on_progress) as fleet:
            fleet.wait(lambda snaps: all(s.connected for s in snaps.values()), timeout=30)
            iot.create_ota_update(
                otaUpdateId="demo-1-1-0", targets=[group["thingGroupArn"]], protocols=["MQTT"],
                targetSelection="SNAPSHOT", roleArn=f"arn:aws:iam::{settings.account_id}:role/overair-ota",
                files=[{"fileName": "/firmware/app.bin", "fileVersion": "1.1.0",
                        "fileLocation": {"s3Location": {"bucket": BUCKET, "key": "app/firmware-1.1.0.bin",
                                                        "version": put["VersionId"]}},
                        "codeSigning": {"startSigningJobParameter": {
                            "signingProfileName": DEV_PROFILE,
                            "destination": {"s3Destination": {"bucket": BUCKET, "prefix": "signed/"}}}}}])
            deadline = time.monotonic() + timeout
            results: dict[str, str] = {}
            while time.monotonic() < deadline:
                info = iot.get_ota_update(otaUpdateId="demo-1-1-0")["otaUpdateInfo"]
                if info["otaUpdateStatus"] == "CREATE_FAILED":
                    console.print(f"[red]OTA update failed[/red]: {escape(str(info.get('errorInfo')))}")
                    break
                if info["otaUpdateStatus"] == "CREATE_COMPLETE":
                    summaries = iot.list_job_executions_for_job(jobId=info["awsIotJobId"])
                    results = {s["thingArn"].rpartition("/")[2]: s["jobExecutionSummary"]["status"]
                               for s in summaries["executionSummaries"]}
                    for thing, snap in fleet.snapshots().items():
                        status = results.get(thing, "?")
                        progress.update(tasks[thing], phase=f"{snap.phase} v{snap.version} {status}")
                    if results and all(s not in ("QUEUED", "IN_PROGRESS") for s in results.values()):
                        break
                time.sleep(0.2)
    return results
