"""Keep the Mosquitto that `overair serve` runs alive (finding: a broker that died left
every device offline until a person restarted the server, and nothing said why).

The supervisor watches the child process. When it exits without being asked to, the
supervisor logs the cause (exit status or signal, and the broker's last log lines),
regenerates the broker's ACL and CRL from the registry (so a change committed while it
was down is not lost), and starts it again, waiting `backoff` seconds first: doubling
from `initial_backoff` up to `max_backoff` while restarts keep failing, back to the
start once the broker has stayed up for `stable_seconds`. Devices reconnect by
themselves (the agent, FreeRTOS, any MQTT client retries), the service connection
reconnects and republishes the retained revocation list, and `on_restarted` re-applies
access so that what was committed between the regeneration and the start is in force.

`status()` is what /health shows (state, restarts, last exit) and `metrics()` the
counters a metrics endpoint reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any

from overair.core.errors import OverairError
from overair.server.gateway.broker import Broker, BrokerExit

log = logging.getLogger("overair.broker")

RUNNING = "running"
RESTARTING = "restarting"
STOPPED = "stopped"


class BrokerSupervisor:
    def __init__(self, broker: Broker, ssl_context: ssl.SSLContext, *, prepare: Callable[[], None],
                 on_restarted: Callable[[], None], initial_backoff: float = 0.5, max_backoff: float = 30.0,
                 stable_seconds: float = 60.0) -> None:
        """`prepare` (run in a worker thread) rewrites the broker's files before each
        restart; `on_restarted` (in a worker thread too) runs once it is back."""
        self.broker = broker
        self._ssl = ssl_context
        self._prepare = prepare
        self._on_restarted = on_restarted
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff
        self._stable_seconds = stable_seconds
        self.state = STOPPED
        self.restarts = 0  # successful restarts after an unexpected exit
        self.exits = 0  # unexpected exits and failed restart attempts
        self.last_exit: BrokerExit | None = None
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    @property
    def up(self) -> bool:
        return self.state == RUNNING and self.broker.running

    async def start(self) -> None:
        """The first start: its failure is the server's (it refuses to run)."""
        await self.broker.start(self._ssl)
        self.state = RUNNING
        self._task = asyncio.create_task(self._watch(), name="broker-supervisor")

    async def _watch(self) -> None:
        backoff = self._initial_backoff
        started = time.monotonic()
        while True:
            ended = await self.broker.wait_exit()
            if self._stopping:
                return
            self.state = RESTARTING
            self._record(ended, "exited unexpectedly")
            if time.monotonic() - started >= self._stable_seconds:
                backoff = self._initial_backoff
            while not self._stopping:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                if await self._restart():
                    break
            if self._stopping:
                return
            started = time.monotonic()
            self.restarts += 1
            self.state = RUNNING
            log.warning("mosquitto is back (restart %d); devices reconnect by themselves", self.restarts)
            try:
                await asyncio.to_thread(self._on_restarted)
            except OverairError as exc:
                log.error("after the broker restart, re-applying device access failed: %s", exc.message)

    async def _restart(self) -> bool:
        try:
            await asyncio.to_thread(self._prepare)
            await self.broker.start(self._ssl)
        except (OverairError, OSError) as exc:
            process = self.broker.process
            code = process.returncode if process is not None else None
            reason = exc.message if isinstance(exc, OverairError) else str(exc)
            self._record(BrokerExit(code, time.time(), self.broker.log_tail(), reason),
                         f"could not be restarted ({reason})")
            return False
        return True

    def _record(self, ended: BrokerExit, what: str) -> None:
        self.exits += 1
        self.last_exit = ended
        log.error("mosquitto %s: %s; its last log lines:\n  %s", what, ended.cause,
                  "\n  ".join(ended.log_tail) or "(none)")

    async def stop(self) -> None:
        self._stopping = True
        self.state = STOPPED
        await self.broker.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def status(self) -> dict[str, Any]:
        last = self.last_exit
        return {"state": self.state, "restarts": self.restarts,
                "lastExit": None if last is None else {
                    "cause": last.cause,
                    "at": dt.datetime.fromtimestamp(last.at, dt.UTC).isoformat(timespec="seconds")}}

    def metrics(self) -> dict[str, float]:
        return {"overair_broker_up": 1.0 if self.up else 0.0,
                "overair_broker_restarts_total": float(self.restarts),
                "overair_broker_exits_total": float(self.exits),
                # Mosquitto dropped device messages to the service (broker.Broker._dropping).
                "overair_broker_service_drop_episodes_total": float(self.broker.service_drops)}
