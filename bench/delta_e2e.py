"""Delta vs full update end to end: two real `overair-agent run` processes, a real server.

    .venv/bin/python -m bench.delta_e2e [--pair httptools|c-build]

Both agents install 1.1.0 (full image), then a second OTA update to 1.2.0 is created with
`additionalParameters` `overair:delta` = "true". Agent `delta` takes the patch the server
offers; agent `full` has `[ota] accept_delta = false` and downloads the whole image, in
the same run, from the same update. The images are a realistic pair from bench/delta.py
(`httptools`: httptools' C parser 0.8.0 -> 0.9.0 from PyPI wheels; `c-build`: overair's
access plugin compiled twice with a small change), each wrapped as an overair image.

Printed per agent: bytes downloaded (blocks of the file it fetched, 4 KiB each), CPU
seconds and peak resident memory of the agent process during the second update (read
from /proc every 50 ms), its VmHWM (peak since it started: both agents installed the same
1.1.0 before), and the time from CreateOTAUpdate to its SUCCEEDED; for the
server, the time CreateOTAUpdate took to complete (it makes the patch).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.server_harness import running_server

from bench.agent import _proc
from bench.delta import c_build_pair, httptools_pair
from overair.core.image import build_image
from overair.core.versions import Version
from overair.server.bootstrap import DEV_PROFILE
from overair.server.ota.delta import JOB_DELTAS
from overair.server.storage.schema import Job
from overair.sim.firmware import make_firmware

BUCKET = "firmware"
AGENTS = ("delta", "full")


def _create(srv: Any, ota_id: str, image: bytes, targets: list[str], **extra: Any) -> float:
    iot, s3 = srv.client("iot"), srv.client("s3")
    version = s3.put_object(Bucket=BUCKET, Key=f"{ota_id}.bin", Body=image)["VersionId"]
    started = time.monotonic()
    iot.create_ota_update(
        otaUpdateId=ota_id, targets=targets, protocols=["MQTT"],
        roleArn=f"arn:aws:iam::{srv.settings.account_id}:role/overair-ota",
        files=[{"fileName": "/fw.bin",
                "fileLocation": {"s3Location": {"bucket": BUCKET, "key": f"{ota_id}.bin",
                                                "version": version}},
                "codeSigning": {"startSigningJobParameter": {"signingProfileName": DEV_PROFILE}}}],
        **extra)
    while iot.get_ota_update(otaUpdateId=ota_id)["otaUpdateInfo"]["otaUpdateStatus"] != "CREATE_COMPLETE":
        if time.monotonic() - started > 120:
            raise SystemExit(f"{ota_id}: {iot.get_ota_update(otaUpdateId=ota_id)['otaUpdateInfo']}")
        time.sleep(0.02)
    return time.monotonic() - started


def _hwm(pid: int) -> int:
    """The process's peak resident KiB since it started (VmHWM: no sampling gaps)."""
    return next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if line.startswith("VmHWM:"))


def _status(srv: Any, job_id: str, thing: str) -> str:
    iot = srv.client("iot")
    try:
        return str(iot.describe_job_execution(jobId=job_id, thingName=thing)["execution"]["status"])
    except iot.exceptions.ResourceNotFoundException:
        return ""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", choices=("httptools", "c-build"), default="httptools")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="overair-bench-delta-") as tmp:
        root = Path(tmp)
        pair = httptools_pair() if args.pair == "httptools" else c_build_pair(root)
        v1, v2 = build_image(Version(1, 1, 0), pair.source), build_image(Version(1, 2, 0), pair.target)
        with running_server(root / "server") as srv:
            iot, s3 = srv.client("iot"), srv.client("s3")
            s3.create_bucket(Bucket=BUCKET)
            s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
            factory = root / "factory.bin"
            factory.write_bytes(make_firmware(Version(1, 0, 0), 4096, seed="factory"))
            processes: dict[str, subprocess.Popen[bytes]] = {}
            try:
                for name in AGENTS:
                    bundle = srv.provision(f"bench-{name}", root / name, factory_image=factory)
                    if name == "full":
                        config = bundle / "agent.toml"
                        text = config.read_text().replace("[ota]\n", "[ota]\naccept_delta = false\n")
                        config.write_text(text)
                    processes[name] = subprocess.Popen(
                        [str(Path(sys.executable).parent / "overair-agent"), "run", "--config",
                         str(bundle / "agent.toml")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                targets = [iot.describe_thing(thingName=f"bench-{n}")["thingArn"] for n in AGENTS]
                time.sleep(3.0)  # connected and idle
                _create(srv, "bench-v1", v1, targets)
                deadline = time.monotonic() + 300
                while any(_status(srv, "AFR_OTA-bench-v1", f"bench-{n}") != "SUCCEEDED" for n in AGENTS):
                    if time.monotonic() > deadline:
                        raise SystemExit("1.1.0 was not installed")
                    time.sleep(0.2)
                time.sleep(1.0)
                before = {n: _proc(p.pid) for n, p in processes.items()}
                peak = {n: before[n][1] for n in AGENTS}
                started = time.monotonic()
                create_s = _create(srv, "bench-v2", v2, targets,
                                   additionalParameters={"overair:delta": "true"})
                done: dict[str, float] = {}
                hwm: dict[str, int] = {}
                after: dict[str, tuple[float, int]] = {}
                while len(done) < len(AGENTS) and time.monotonic() - started < 600:
                    for n, p in processes.items():
                        if n in done:
                            continue
                        peak[n] = max(peak[n], _proc(p.pid)[1])
                        status = _status(srv, "AFR_OTA-bench-v2", f"bench-{n}")
                        if status in ("SUCCEEDED", "FAILED"):
                            if status == "FAILED":
                                raise SystemExit(f"agent {n}: the update FAILED")
                            done[n], after[n] = time.monotonic() - started, _proc(p.pid)
                            hwm[n] = _hwm(p.pid)
                    time.sleep(0.05)
                with srv.server.db.reading() as s:
                    job = s.get(Job, "AFR_OTA-bench-v2")
                    assert job is not None
                    made = job.config[JOB_DELTAS]
            finally:
                for p in processes.values():
                    p.terminate()
                    p.wait(20)
    if len(done) < len(AGENTS):
        raise SystemExit("the update did not finish on every agent")
    patch = int(made[0]["size"])
    wire = {"delta": -(-patch // 4096) * 4096, "full": -(-len(v2) // 4096) * 4096}
    print(f"pair {pair.name}: image 1.2.0 {len(v2)} bytes, patch {patch} bytes "
          f"({patch / len(v2):.3f} of the image); CreateOTAUpdate with the patch took {create_s:.2f} s")
    print(f"{'agent':<8}{'downloaded B':>14}{'ratio':>8}{'CPU s':>8}{'peak RSS MiB':>14}"
          f"{'+RSS MiB':>10}{'VmHWM MiB':>11}{'to SUCCEEDED s':>16}")
    for n in AGENTS:
        cpu = after[n][0] - before[n][0]
        print(f"{n:<8}{wire[n]:>14}{wire[n] / wire['full']:>8.3f}{cpu:>8.2f}{peak[n] / 1024:>14.1f}"
              f"{(peak[n] - before[n][1]) / 1024:>10.1f}{hwm[n] / 1024:>11.1f}{done[n]:>16.2f}")


if __name__ == "__main__":
    main()
