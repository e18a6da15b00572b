"""Make the broker apply a new ACL and CRL, and return only once it does.

`ConfirmedReload(trigger, witness)(generation)` triggers a reload (SIGHUP to the
Mosquitto that `overair serve` runs, or the operator's reload command for an external
broker) and then asks the ACL witness (gateway/witness.py) until the broker enforces
that generation. A trigger can be lost (Mosquitto drops a SIGHUP that arrives while it
is still reloading), so an unconfirmed reload is triggered again every
`retrigger_seconds`. Past the deadline, or when the broker is down, it raises
UnavailableError: the caller's API request then answers 503, never 200 for an access
change that is not in force. The registry change itself stays committed; the next
reload or the broker's next start applies it.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable, Sequence

from overair.core.errors import UnavailableError
from overair.server.gateway.witness import AclWitness

log = logging.getLogger("overair.broker")
COMMAND_TIMEOUT_SECONDS = 30.0


class ConfirmedReload:
    def __init__(self, trigger: Callable[[], None], witness: AclWitness, timeout: float = 5.0,
                 retrigger_seconds: float = 1.0) -> None:
        self._trigger = trigger
        self._witness = witness
        self._timeout = timeout
        self._retrigger = retrigger_seconds

    def __call__(self, generation: str) -> None:
        deadline = time.monotonic() + self._timeout
        self._trigger()
        retrigger_at = time.monotonic() + self._retrigger
        while True:
            if self._witness.in_force(generation, timeout=max(0.5, deadline - time.monotonic())):
                return
            now = time.monotonic()
            if now >= deadline:
                raise UnavailableError(f"the broker did not apply the new access rules within "
                                       f"{self._timeout:.0f} s")
            if now >= retrigger_at:
                log.info("the broker has not applied the new access rules yet: reloading it again")
                self._trigger()
                retrigger_at = now + self._retrigger
            time.sleep(0.01)


def command_trigger(argv: Sequence[str]) -> Callable[[], None]:
    """Run the operator's reload command for an external broker (e.g. `systemctl reload
    mosquitto`); a failure to run it is the broker being unavailable."""
    command = list(argv)

    def trigger() -> None:
        try:
            done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=COMMAND_TIMEOUT_SECONDS, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise UnavailableError(f"the broker reload command {command[0]!r} failed: {exc}") from exc
        if done.returncode != 0:
            output = (done.stderr or done.stdout).decode(errors="replace").strip()[-300:]
            raise UnavailableError(f"the broker reload command {command[0]!r} exited with status "
                                   f"{done.returncode}: {output or 'no output'}")

    return trigger
