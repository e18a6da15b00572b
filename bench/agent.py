"""What one device agent costs: resident memory, and CPU seconds per MiB downloaded and
verified, measured on a real `overair-agent run` process.

    .venv/bin/python -m bench.agent [--size-mib 3.5]

A server runs in this process (its own Mosquitto, mutual TLS); one agent runs as a
child process from its bundle, exactly as on a device. The agent's RSS and CPU time are
read from /proc before the update, and when its execution has SUCCEEDED: the difference
is the cost of one update of `--size-mib` (download in 4 KiB CBOR blocks, staging
writes, SHA-256 and ECDSA verification, activation, in-process reboot, self-test). The
limit, measured in the same run, is the unavoidable work on the same bytes: SHA-256 of
the image plus one ECDSA P-256 signature check, in this process.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.server_harness import running_server

from overair.core import codesign
from overair.core.versions import Version
from overair.server import pki
from overair.server.bootstrap import DEV_PROFILE
from overair.sim.firmware import make_firmware

BUCKET = "firmware"  # the bucket the default OTA service role may read (least privilege)
TICKS = os.sysconf("SC_CLK_TCK")


def _proc(pid: int) -> tuple[float, int]:
    """(CPU seconds used, resident KiB) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime
    rss = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    return cpu, rss


def _limit(image: bytes) -> float:
    """CPU seconds for SHA-256 of the image and one ECDSA P-256 verification."""
    issued = pki.make_root_ca("bench", dt.datetime.now(dt.UTC))
    signature = codesign.sign_digest(issued.key, codesign.sha256(image))
    started = time.process_time()
    codesign.verify_digest(issued.cert, codesign.sha256(image), signature)
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # Devices hold at most 1024 blocks of 4 KiB (the FreeRTOS bitmap limit): < 4 MiB.
    parser.add_argument("--size-mib", type=float, default=3.5)
    args = parser.parse_args()
    size = int(args.size_mib * 1024 * 1024)
    image = make_firmware(Version(1, 1, 0), size, seed="bench-agent")
    with tempfile.TemporaryDirectory(prefix="overair-bench-agent-") as tmp:
        root = Path(tmp)
        with running_server(root / "server") as srv:
            iot, s3 = srv.client("iot"), srv.client("s3")
            factory = root / "factory.bin"
            factory.write_bytes(make_firmware(Version(1, 0, 0), 4096, seed="factory"))
            bundle = srv.provision("bench-agent", root / "device", factory_image=factory)
            agent = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "overair-agent"),
                    "run",
                    "--config",
                    str(bundle / "agent.toml"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                time.sleep(3.0)  # connected and idle
                cpu_before, rss_idle = _proc(agent.pid)
                s3.create_bucket(Bucket=BUCKET)
                s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
                version = s3.put_object(Bucket=BUCKET, Key="fw.bin", Body=image)["VersionId"]
                started = time.monotonic()
                iot.create_ota_update(
                    otaUpdateId="bench-agent",
                    targets=[iot.describe_thing(thingName="bench-agent")["thingArn"]],
                    protocols=["MQTT"],
                    roleArn=f"arn:aws:iam::{srv.settings.account_id}:role/overair-ota",
                    files=[
                        {
                            "fileName": "/fw.bin",
                            "fileLocation": {
                                "s3Location": {"bucket": BUCKET, "key": "fw.bin", "version": version}
                            },
                            "codeSigning": {"startSigningJobParameter": {"signingProfileName": DEV_PROFILE}},
                        }
                    ],
                )
                peak = rss_idle
                status = ""
                while status not in ("SUCCEEDED", "FAILED") and time.monotonic() - started < 600:
                    time.sleep(0.2)
                    peak = max(peak, _proc(agent.pid)[1])
                    try:
                        status = iot.describe_job_execution(
                            jobId="AFR_OTA-bench-agent", thingName="bench-agent"
                        )["execution"]["status"]
                    except iot.exceptions.ResourceNotFoundException:
                        status = ""
                elapsed = time.monotonic() - started
                cpu_after, rss_after = _proc(agent.pid)
            finally:
                agent.terminate()
                agent.wait(20)
    if status != "SUCCEEDED":
        raise SystemExit(f"the update did not succeed ({status or 'no status'})")
    mib = size / 2**20
    per_mib = (cpu_after - cpu_before) / mib
    limit_per_mib = _limit(image) / mib
    print(f"one agent process, image {mib:.1f} MiB over MQTT (4 KiB CBOR blocks, 8 per request), mutual TLS")
    print(
        f"resident memory: idle {rss_idle / 1024:.1f} MiB, peak during the update {peak / 1024:.1f} MiB, "
        f"after {rss_after / 1024:.1f} MiB"
    )
    print(f"update took {elapsed:.2f} s; agent CPU {cpu_after - cpu_before:.2f} s = {per_mib:.3f} CPU s/MiB")
    print(f"limit (SHA-256 + ECDSA verify of the same bytes): {limit_per_mib:.4f} CPU s/MiB")
    print(f"ratio limit / agent: {limit_per_mib / per_mib:.3f}")


if __name__ == "__main__":
    main()
