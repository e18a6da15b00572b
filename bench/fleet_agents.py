"""A share of full overair agents in `bench/fleet.py`'s rollout (`--agents K`).

The fleet's protocol-level devices do what the FreeRTOS OTA library does; these are the
real `overair-agent` runtime (`overair.sim.fleet.Fleet`: paho, mutual TLS, LinuxSlots,
signature and deployment-metadata checks, activation, reboot, self-test), provisioned
like `overair thing create` into the same thing group, so the same CreateOTAUpdate
reaches them with the document tailored to their profile. They run in their own
processes (`--agent-processes`), as real devices would not share the server's
interpreter. What it adds to the report: when the agents were notified, finished their
download, and their executions as the API reports them (DescribeJobExecution through
boto3 after the rollout, with the time of each SUCCEEDED), their CPU and peak RSS.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.server_harness import RunningServer

from bench.stream_throughput import ProbeData, ProcessAgents, _proc_cpu, _provision_all
from overair.core.versions import Version
from overair.sim.firmware import make_firmware

MIB = 1024 * 1024


def agent_names(count: int) -> list[str]:
    return [f"bench-agent-{i:04d}" for i in range(count)]


@dataclass
class AgentResult:
    count: int
    processes: int
    provisioning_s: float
    probe: ProbeData
    statuses: dict[str, int]
    succeeded_s: list[float]  # t0 -> each agent's SUCCEEDED, as the API dates it (whole seconds)
    cpu_s: float
    hwm_bytes: int  # the sum over the agents' processes
    t0_wall: float = 0.0
    errors: list[str] = field(default_factory=list)


class AgentShare:
    """K agents in P processes, started and connected before t0 (none when K is 0)."""

    def __init__(self, srv: RunningServer, root: Path, count: int, processes: int, group: str,
                 running: Version, size: int) -> None:
        self.count, self.processes = count, max(1, min(processes, count)) if count else 0
        self._srv = srv
        self._agents: ProcessAgents | None = None
        self._t0_wall = 0.0
        self._cpu0 = 0.0
        self.provisioning_s = 0.0
        if not count:
            return
        factory = root / "factory.bin"
        root.mkdir(parents=True, exist_ok=True)
        factory.write_bytes(make_firmware(running, size, seed="bench-fleet-agent-factory"))
        started = time.perf_counter()
        bundles = _provision_all(srv, root, agent_names(count), factory, group=group)
        self.provisioning_s = time.perf_counter() - started
        self._agents = ProcessAgents(bundles, self.processes).__enter__()
        print(f"{count} overair agents provisioned in {self.provisioning_s:.1f} s and connected "
              f"({self.processes} processes)", flush=True)

    def arm(self) -> None:
        """Just before CreateOTAUpdate: only what happens from here counts."""
        if self._agents is not None:
            self._agents.arm()
            self._cpu0 = self._cpu()
            self._t0_wall = time.time()

    def _cpu(self) -> float:
        return sum(_proc_cpu(pid) for pid in self._agents.pids) if self._agents is not None else 0.0

    def finish(self, job_id: str) -> AgentResult | None:
        """After the rollout: stop the agents and read their executions from the API."""
        if self._agents is None:
            return None
        cpu = self._cpu() - self._cpu0
        hwm = sum(_hwm(pid) for pid in self._agents.pids)
        probe = self._agents.finish()
        self._agents.__exit__()
        iot = self._srv.client("iot")
        statuses: dict[str, int] = {}
        succeeded: list[float] = []
        errors: list[str] = []
        for thing in agent_names(self.count):
            try:
                answer = iot.describe_job_execution(jobId=job_id, thingName=thing)
            except iot.exceptions.ResourceNotFoundException:
                errors.append(f"{thing}: no execution")
                continue
            execution: dict[str, Any] = answer["execution"]
            status = execution["status"]
            statuses[status] = statuses.get(status, 0) + 1
            if status == "SUCCEEDED":
                succeeded.append(execution["lastUpdatedAt"].timestamp() - self._t0_wall)
        return AgentResult(self.count, self.processes, self.provisioning_s, probe, statuses, succeeded, cpu,
                           hwm, self._t0_wall, errors)


def _hwm(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def report(result: AgentResult, t0: float, wall_s: float) -> None:
    """`t0`: the rollout's perf_counter() at CreateOTAUpdate (the agents stamp with the
    same clock: CLOCK_MONOTONIC is shared by the processes of one machine)."""
    probe = result.probe

    def span(values: list[float]) -> str:
        return f"first {min(values) - t0:7.2f} s, last {max(values) - t0:7.2f} s" if values else "never"

    complete = sum(1 for received, total in probe.stored.values() if total and received >= total)
    print(f"overair agents: {result.count} in {result.processes} processes (provisioned in "
          f"{result.provisioning_s:.1f} s); executions (DescribeJobExecution): {result.statuses}"
          f"{'; ' + '; '.join(result.errors[:3]) if result.errors else ''}")
    print(f"  CreateOTAUpdate -> notify-next at the agents:  {span(list(probe.notified.values()))}")
    print(f"  CreateOTAUpdate -> last block at the agents:   {span(list(probe.last_block.values()))} "
          f"({complete}/{result.count} stored every block)")
    if result.succeeded_s:
        print(f"  CreateOTAUpdate -> SUCCEEDED per the API:       first {min(result.succeeded_s):7.0f} s, "
              f"median {statistics.median(result.succeeded_s):5.0f} s, last {max(result.succeeded_s):5.0f} s "
              "(whole seconds: the API's dates)")
    print(f"  agents' processes: CPU {result.cpu_s:.1f} s from t0 ({100 * result.cpu_s / wall_s:.0f}% of one "
          f"core), peak RSS {result.hwm_bytes / MIB:.0f} MiB in all")
