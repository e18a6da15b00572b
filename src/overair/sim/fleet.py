"""Many agents in one process: for `overair demo`, tests and benchmarks.

Each device is a full agent (`Runtime`) with its own bundle, data directory, mutual-TLS
MQTT connection and runtime thread; they share nothing but the process. Tens of
devices are fine this way; the broker sees exactly what it would see from real ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from overair.agent.config import AgentConfig, load_config
from overair.agent.runtime import AgentSnapshot, Runtime, SelfTestHook

FleetProgress = Callable[[str, str, int, int], None]  # (thing name, job id, received, total)
FleetPredicate = Callable[[dict[str, AgentSnapshot]], bool]


class Fleet:
    def __init__(self, bundles: Sequence[Path | str], *, progress: FleetProgress | None = None,
                 self_test_hook: SelfTestHook | None = None) -> None:
        """`bundles`: bundle directories (holding `agent.toml`) or agent TOML files."""
        self.configs: list[AgentConfig] = [load_config(Path(b)) for b in bundles]
        names = [c.thing_name for c in self.configs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"several bundles for the same thing: {', '.join(duplicates)}")
        self.runtimes: dict[str, Runtime] = {
            config.thing_name: Runtime(config, progress=self._progress_for(config.thing_name, progress),
                                       self_test_hook=self_test_hook)
            for config in self.configs
        }

    @staticmethod
    def _progress_for(thing: str, progress: FleetProgress | None) -> Callable[[str, int, int], None] | None:
        if progress is None:
            return None

        def report(job_id: str, received: int, total: int) -> None:
            progress(thing, job_id, received, total)

        return report

    def __enter__(self) -> Fleet:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def start(self) -> None:
        for runtime in self.runtimes.values():
            runtime.start()

    def stop(self, timeout: float = 10.0) -> None:
        for runtime in self.runtimes.values():
            runtime.stop(timeout=0)  # signal all first, then wait: they stop in parallel
        deadline = time.monotonic() + timeout
        for runtime in self.runtimes.values():
            runtime.stop(timeout=max(0.0, deadline - time.monotonic()))

    def snapshots(self) -> dict[str, AgentSnapshot]:
        return {name: runtime.snapshot() for name, runtime in self.runtimes.items()}

    def wait(self, predicate: FleetPredicate, timeout: float, poll: float = 0.05) -> bool:
        """Wait until `predicate(snapshots)` holds; False if `timeout` seconds pass first."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate(self.snapshots()):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll)
