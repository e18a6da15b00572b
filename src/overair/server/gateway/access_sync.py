"""Registry changes that affect device access take effect at the broker before the API
call that made them returns.

Attaching a certificate to a thing, detaching it, or changing its status rewrites the
broker's ACL and CRL and makes Mosquitto reload them. If the API answered first, a
device started right after provisioning could connect before the reload, have its
subscriptions refused, and wait forever for a job (that was overair demo's flakiness).

`AccessSync.changed()` is a group commit: callers that arrive while a reload is running
are all covered by the next one, so a burst of provisioning costs a few reloads, not
one per call.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("overair.broker")


class AccessSync:
    def __init__(self, apply: Callable[[], None]) -> None:
        """`apply` regenerates the broker's files and returns once the broker uses them."""
        self._apply = apply
        self._apply_lock = threading.Lock()  # one apply at a time
        self._counts = threading.Lock()
        self._requested = 0
        self._applied = 0

    def changed(self) -> None:
        """Block until a change committed before this call is enforced by the broker."""
        with self._counts:
            self._requested += 1
            mine = self._requested
        with self._apply_lock:
            with self._counts:
                if self._applied >= mine:
                    return  # an apply that started after our change already covered it
                target = self._requested
            try:
                self._apply()
            except Exception:
                # The change is committed in the database; the next apply (or the next
                # start) regenerates everything from it, so nothing is lost.
                log.exception("could not apply a device access change to the broker")
                return
            with self._counts:
                self._applied = max(self._applied, target)
