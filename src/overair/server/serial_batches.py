"""Items applied in batches by one worker thread, in order with other work given to it.

The broker's connection events arrive one by one on the event loop; writing each in a
transaction of its own cost a thousand devices' reboots 2 s of the server's interpreter
(bench/fleet.py profile: `Connectivity.apply`, 6.8%). Here an item joins the batch still
waiting for the worker, so a burst becomes one transaction; a batch is closed once the
worker takes it, so nothing joins a batch being applied, and once it holds `max_batch`
items (`Limits.serial_batch`), so that one transaction stays bounded however long the
worker was held up; the next item opens the next batch.

Order: batches and the other work handed to the same one-thread executor through
`submit_after` run in the order they were handed over; an item added after a
`submit_after` call is applied after that work (e.g. a broker restart's "every thing is
disconnected" must not wipe the connections its new broker reported after it).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger("overair.server")


class SerialBatches(Generic[T]):
    def __init__(self, executor: ThreadPoolExecutor, apply: Callable[[list[T]], None], what: str,
                 max_batch: int) -> None:
        self._executor = executor
        self._max_batch = max_batch
        self._apply = apply
        self._what = what  # for the log line of a failed batch
        self._lock = threading.Lock()
        self._open: list[T] | None = None  # the batch submitted and not yet taken

    def add(self, item: T) -> None:
        """Any thread; never waits for the worker."""
        with self._lock:
            if self._open is not None and len(self._open) < self._max_batch:
                self._open.append(item)
                return
            batch = self._open = [item]
            self._executor.submit(self._run, batch).add_done_callback(self._log_failure)

    def submit_after(self, work: Callable[[], R]) -> Future[R]:
        """Run `work` on the worker after every item added so far, before any added later."""
        with self._lock:
            self._open = None
            return self._executor.submit(work)

    def _run(self, batch: list[T]) -> None:
        with self._lock:
            if self._open is batch:
                self._open = None
        self._apply(batch)

    def _log_failure(self, future: Future[None]) -> None:
        exc = future.exception() if not future.cancelled() else None
        if exc is not None:
            log.error("recording %s failed: %s", self._what, exc)
