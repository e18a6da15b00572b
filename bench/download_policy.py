"""The fleet download policy under the 100-device test (issue 18, part 3).

    .venv/bin/python -m bench.download_policy [--devices 100] [--size-kib 256]

A server runs in this process (its own Mosquitto, mutual TLS) with `--devices` full
overair agents (`Fleet`) downloading one signed image over HTTPS. Counters are read at
the server every 100 ms (HTTPS answers, job reads, bytes the policy admitted), never
from the agents' clocks.

1. Bytes per second against the cap: `[download_policy] bytes_per_second` set to
   `--cap-kib` KiB/s and a concurrency cap; the fleet's rate while every device
   downloads, and the largest one-second window, compared to the cap, and to the same
   rollout without limits in the same run (what server, broker and agents manage on
   this machine: the limit the cap is compared to when it is above it).
2. The artifact deleted mid-rollout, with the policy (agents: backoff with full jitter,
   retry budget) and without it (agents retrying at once until FreeRTOS's momentum
   abort, 32 requests, which is what the agent did before; no server limits): requests
   per second at the server after the deletion (mean until every device ended, and the
   largest one-second window), and how long until every device ended.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.server_harness import RunningServer, running_server

from overair.agent.runtime import AgentSnapshot
from overair.core.versions import Version
from overair.server.bootstrap import DEV_PROFILE
from overair.server.delivery.budgets import Kind
from overair.server.jobs.deliveries import HTTP_FILES
from overair.sim.firmware import make_firmware
from overair.sim.fleet import Fleet

BUCKET = "firmware"  # the bucket the overair-ota role may read
TERMINAL = ("FAILED", "SUCCEEDED")


@dataclass(frozen=True)
class Sample:
    at: float
    https: int
    reads: int
    bytes_admitted: int


class Sampler:
    """The server's counters every `period` seconds, in a thread."""

    def __init__(self, srv: RunningServer, period: float = 0.1) -> None:
        self._srv, self._period = srv, period
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.now())
            self._stop.wait(self._period)

    def now(self) -> Sample:
        server = self._srv.server
        return Sample(time.monotonic(), sum(server.delivery.answered.values()),
                      server.devices.requests[Kind.JOB_READ], server.downloads.policy.counters.bytes_admitted)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def peak_per_second(samples: list[Sample], field: str, start: float, end: float) -> float:
    """The largest increase of `field` over any one-second window within [start, end]."""
    inside = [s for s in samples if start <= s.at <= end]
    best = 0.0
    for i, first in enumerate(inside):
        last = first
        for later in inside[i:]:
            if later.at - first.at > 1.0:
                break
            last = later
        best = max(best, getattr(last, field) - getattr(first, field))
    return best


@contextmanager
def server(tmp: Path, toml: str) -> Iterator[RunningServer]:
    with running_server(tmp / "server", settings_toml=toml) as srv:
        s3 = srv.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        yield srv


def fleet_rollout(srv: RunningServer, tmp: Path, prefix: str, devices: int, size: int, agent_toml: str,
                  params: dict[str, str]) -> tuple[Fleet, str]:
    iot = srv.client("iot")
    group = iot.create_thing_group(thingGroupName=prefix)
    factory = tmp / "factory.bin"
    factory.write_bytes(make_firmware(Version(1, 0, 0), 64 * 1024, seed="factory"))
    bundles = [srv.provision(f"{prefix}-{i}", tmp / prefix / str(i), group=prefix, factory_image=factory)
               for i in range(devices)]
    for bundle in bundles:
        with (bundle / "agent.toml").open("a") as config:
            config.write(agent_toml)
    fleet = Fleet(bundles)
    fleet.start()
    if not fleet.wait(lambda snaps: all(s.connected for s in snaps.values()), timeout=120):
        raise RuntimeError("the agents did not connect")
    key = f"{prefix}.bin"
    image = make_firmware(Version(2, 0, 0), size, seed=prefix)
    version = srv.client("s3").put_object(Bucket=BUCKET, Key=key, Body=image)["VersionId"]
    iot.create_ota_update(
        otaUpdateId=prefix, targets=[group["thingGroupArn"]], protocols=["HTTP"],
        roleArn=f"arn:aws:iam::{srv.settings.account_id}:role/overair-ota",
        files=[{"fileName": "/fw.bin", "fileLocation": {"s3Location": {"bucket": BUCKET, "key": key,
                                                                      "version": version}},
                "codeSigning": {"startSigningJobParameter": {"signingProfileName": DEV_PROFILE}}}],
        additionalParameters=params)
    while (info := iot.get_ota_update(otaUpdateId=prefix)["otaUpdateInfo"])["otaUpdateStatus"] \
            != "CREATE_COMPLETE":
        if info["otaUpdateStatus"] == "CREATE_FAILED":
            raise RuntimeError(str(info.get("errorInfo")))
        time.sleep(0.05)
    return fleet, str(info["awsIotJobId"])


def all_ended(srv: RunningServer, job_id: str, devices: int) -> bool:
    summaries = srv.client("iot").list_job_executions_for_job(jobId=job_id)["executionSummaries"]
    statuses = [s["jobExecutionSummary"]["status"] for s in summaries]
    return len(statuses) == devices and all(status in TERMINAL for status in statuses)


def bandwidth(tmp: Path, devices: int, size: int, cap: int) -> None:
    """`cap` 0: no limits."""
    toml = f"[download_policy]\nbytes_per_second = {cap}\nmax_concurrent_downloads = {devices // 2}\n" \
        if cap else ""
    with server(tmp, toml) as srv, Sampler(srv) as sampler:
        fleet, job_id = fleet_rollout(srv, tmp, "bw", devices, size, "", {})
        try:
            while not all_ended(srv, job_id, devices):
                time.sleep(0.5)
        finally:
            fleet.stop()
        # From the first bytes admitted to the last (not the verification and reboots after).
        total = sampler.samples[-1].bytes_admitted
        first = next(s for s in sampler.samples if s.bytes_admitted > 0)
        last = next(s for s in sampler.samples if s.bytes_admitted == total)
        mean = (last.bytes_admitted - first.bytes_admitted) / (last.at - first.at)
        peak = peak_per_second(sampler.samples, "bytes_admitted", first.at, last.at)
        counters = srv.server.downloads.policy.counters
        if not cap:
            print(f"bandwidth: {devices} agents, {size // 1024} KiB each, no limits: "
                  f"mean {mean / 1024:.0f} KiB/s, largest 1 s window {peak / 1024:.0f} KiB/s; "
                  f"all done in {last.at - first.at:.1f} s")
            return
        print(f"bandwidth: {devices} agents, {size // 1024} KiB each, cap {cap / 1024:.0f} KiB/s, "
              f"{devices // 2} at once: mean {mean / 1024:.0f} KiB/s ({mean / cap:.2f} of the cap), "
              f"largest 1 s window {peak / 1024:.0f} KiB/s ({peak / cap:.2f}); "
              f"{counters.admitted} requests admitted, refused {dict(counters.refused)}, "
              f"{counters.forced} served by the starvation guard; all done in {last.at - first.at:.1f} s")


def deleted(tmp: Path, devices: int, size: int, *, policy: bool) -> None:
    if policy:
        toml = f"[download_policy]\nmax_concurrent_downloads = {max(1, devices // 4)}\n"
        agents = "retry_base_seconds = 1\nretry_cap_seconds = 30\njob_retry_budget = 8\n"
        params = {"overair:maxDeviceBytesPerSecond": "65536"}
        what = "with the policy (budget 8, backoff 1 s doubling to 30 s, full jitter)"
    else:
        toml, params = "", {}
        # Retry at once, until FreeRTOS's momentum abort: the agent before issue 18.
        agents = "retry_base_seconds = 0.01\nretry_cap_seconds = 0.01\njob_retry_budget = 31\n"
        what = "without (retry at once, 32 requests, no server limits)"
    with server(tmp, toml) as srv, Sampler(srv) as sampler:
        fleet, job_id = fleet_rollout(srv, tmp, "del", devices, size, agents, params)
        try:
            def started(snaps: dict[str, AgentSnapshot]) -> bool:
                return sum(1 for s in snaps.values() if s.blocks_received) >= devices // 4

            if not fleet.wait(started, timeout=300):
                raise RuntimeError("the download did not start")
            (file,) = srv.server.jobs.describe_job(job_id)[0].config[HTTP_FILES]
            srv.client("s3").delete_object(Bucket=file["bucket"], Key=file["key"], VersionId=file["version"])
            start = sampler.now()
            while not all_ended(srv, job_id, devices):
                time.sleep(0.2)
            end = sampler.now()
        finally:
            fleet.stop()
        seconds = end.at - start.at
        https, reads = end.https - start.https, end.reads - start.reads
        print(f"deleted artifact, {devices} agents, {what}: {https} HTTPS requests and {reads} job reads "
              f"in {seconds:.1f} s until every device ended: "
              f"mean {https / seconds:.0f} + {reads / seconds:.0f}/s, "
              f"largest 1 s window {peak_per_second(sampler.samples, 'https', start.at, end.at):.0f} HTTPS + "
              f"{peak_per_second(sampler.samples, 'reads', start.at, end.at):.0f} reads")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--size-kib", type=int, default=256)
    parser.add_argument("--cap-kib", type=int, default=2048)
    parser.add_argument("--steps", default="uncapped,bandwidth,policy,none",
                        help="which measurements, comma-separated (default: all, in this order)")
    args = parser.parse_args()
    size = args.size_kib * 1024
    for step in args.steps.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            if step in ("uncapped", "bandwidth"):
                bandwidth(Path(tmp), args.devices, size, args.cap_kib * 1024 if step == "bandwidth" else 0)
            else:
                deleted(Path(tmp), args.devices, size, policy=step == "policy")


if __name__ == "__main__":
    main()
