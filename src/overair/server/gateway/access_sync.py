"""Registry changes that affect device access take effect at the broker before the API
call that made them returns, or that call fails.

Attaching a certificate to a thing, detaching it, or changing its status rewrites the
broker's ACL and CRL and has the broker apply them (gateway/reload.py confirms it). If
the API answered first, a device started right after provisioning could connect before
the reload, have its messages refused, and wait forever for a job (that was overair
demo's flakiness); and if the API answered 200 while the broker was down, an operator
would believe a revoked device cut off when nothing had been applied.

`AccessSync.changed()` is a group commit: callers that arrive while an apply is running
are all covered by the next one, so a burst of provisioning costs a few reloads, not
one per call. When an apply fails (broker down, reload not confirmed), every caller it
was meant to cover gets its UnavailableError (503): the registry change is committed,
and the next apply, or the broker's restart, which regenerates everything from the
registry, puts it in force. Nothing is lost and nothing is reported done early.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from overair.core.errors import UnavailableError

log = logging.getLogger("overair.broker")
T = TypeVar("T")


class AccessSync:
    def __init__(self, apply: Callable[[], None]) -> None:
        """`apply` regenerates the broker's files and returns once the broker enforces
        them; it raises UnavailableError when it cannot."""
        self._apply = apply
        self._apply_lock = threading.Lock()  # one apply at a time
        self._counts = threading.Lock()
        self._requested = 0
        self._applied = 0
        self._failed_through = 0  # the last request a failed apply was meant to cover
        self._failure: UnavailableError | None = None

    def changed(self) -> None:
        """Block until a change committed before this call is enforced by the broker;
        UnavailableError if it could not be confirmed."""
        with self._counts:
            self._requested += 1
            mine = self._requested
        with self._apply_lock:
            with self._counts:
                if self._applied >= mine:
                    return  # an apply that started after our change already covered it
                if self._failed_through >= mine and self._failure is not None:
                    raise self._failure  # an apply meant to cover us failed just now
                target = self._requested
            try:
                self._apply()
            except UnavailableError as exc:
                log.warning("device access change committed but not confirmed at the broker: %s",
                            exc.message)
                failure = UnavailableError(f"the change is saved but the broker could not confirm it: "
                                           f"{exc.message}; it is applied when the broker is back",
                                           code="ServiceUnavailableException")
                with self._counts:
                    self._failed_through = max(self._failed_through, target)
                    self._failure = failure
                raise failure from exc
            with self._counts:
                self._applied = max(self._applied, target)

    def one(self, change: Callable[[], None]) -> None:
        """Apply one device's change on its own (the access plugin's control topic: its
        cost does not grow with the fleet), serialized with every other apply, so the
        last change applied is computed from the registry after every earlier commit.
        UnavailableError (503) if the broker could not confirm it."""
        with self._apply_lock:
            try:
                change()
            except UnavailableError as exc:
                log.warning("device access change committed but not confirmed at the broker: %s",
                            exc.message)
                raise UnavailableError(f"the change is saved but the broker could not confirm it: "
                                       f"{exc.message}; it is applied when the broker is back",
                                       code="ServiceUnavailableException") from exc

    def exclusively(self, work: Callable[[], T]) -> T:
        """Run `work` with no apply running (the supervisor regenerates the broker's
        files this way before it restarts the broker)."""
        with self._apply_lock:
            return work()
