"""The application the device exists for, run by the agent (`[app] command`).

The runtime reboots in-process, so it also owns the application's life: the command is
started after every boot, on the image that boot selected, and stopped before every
reboot (activation, rollback) and when the agent stops. The agent does not restart an
application that exits by itself: a crash of the new image is what the self-test (the
`[self_test] command` can check that the application is up) and the boot counter are
for (R1), and restarting the whole unit is the service manager's job (systemd:
`Restart=on-failure` on the agent's unit; the application is its child and goes with it).

The command gets the image it runs through the environment: OVERAIR_THING_NAME,
OVERAIR_VERSION, OVERAIR_SLOT, OVERAIR_TRIAL ("1" while the image is not committed).
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from overair.agent.platform.base import BootInfo

log = logging.getLogger("overair.agent.app")

STOP_GRACE_SECONDS = 5.0


class AppRunner:
    def __init__(self, command: Sequence[str], *, cwd: Path, thing_name: str,
                 extra_env: Mapping[str, str] | None = None,
                 on_crash: Callable[[int], None] | None = None) -> None:
        self.command = tuple(command)
        self.on_crash = on_crash  # an exit with a non-zero code, not caused by stop() (health reports)
        self.cwd = cwd
        self.thing_name = thing_name
        self.extra_env = dict(extra_env or {})
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self.starts = 0  # how many times the application was started (status, tests)

    @property
    def running(self) -> bool:
        process = self._process
        return process is not None and process.poll() is None

    def start(self, boot: BootInfo) -> None:
        if not self.command:
            return
        self.stop()
        env = {**os.environ, **self.extra_env, "OVERAIR_THING_NAME": self.thing_name,
               "OVERAIR_VERSION": str(boot.version), "OVERAIR_SLOT": boot.slot,
               "OVERAIR_TRIAL": "1" if boot.trial else "0"}
        try:
            process = subprocess.Popen(self.command, cwd=self.cwd, env=env, stdin=subprocess.DEVNULL)
        except OSError as exc:
            # Not fatal for the agent: it must stay up to receive the update that fixes this.
            log.error("the application %r could not start: %s", self.command[0], exc)
            return
        with self._lock:
            self._process = process
            self.starts += 1
        log.info("application started (pid %d) on %s from slot %s", process.pid, boot.version, boot.slot)
        threading.Thread(target=self._watch, args=(process,), name="app-watch", daemon=True).start()

    def _watch(self, process: subprocess.Popen[bytes]) -> None:
        code = process.wait()
        with self._lock:
            ours = self._process is process
        if ours:  # not stopped by us
            log.warning("the application (pid %d) exited with %d", process.pid, code)
            if code != 0 and self.on_crash is not None:
                self.on_crash(code)

    def stop(self) -> None:
        with self._lock:
            process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.info("application (pid %d) stopped", process.pid)
