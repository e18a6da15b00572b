"""Reads of many keys asked for at once by many threads, done as a few batched reads.

When a rollout starts, every device's first download request misses the access cache
(streams/access.py) at the same moment: 1,000 devices were 1,000 reads of their live
executions, each on a worker thread of its own, queued for the database's connections
(bench/fleet.py --protocol HTTP). Here the first thread to ask becomes the reader: it
reads every key asked for so far in one `read_many` call (jobs/deliveries.py reads 500
things per statement) and hands each waiting thread its answer; keys asked for while it
reads go into its next batch.

A key joins only a batch whose read has not started, so every answer was read after it
was asked for: a caller that noted the access generation before asking may cache the
answer under it (an execution change after the read started bumps the generation, and
the cache then refuses the stale answer).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class CoalescedReads(Generic[K, V]):
    def __init__(self, read_many: Callable[[list[K]], dict[K, V]], max_batch: int) -> None:
        self._read_many = read_many
        self._max_batch = max_batch
        self._turn = threading.Condition()
        self._waiting: dict[K, Future[V]] = {}  # asked for, read not started
        self._reading = False  # one batch is read at a time
        self.reads = 0  # read_many calls (tests, bench)

    def get(self, key: K) -> V:
        """`key`'s value, read after this call began. The caller reads batches (its own
        and, while its own waits, the next ones) whenever no one else is reading."""
        with self._turn:
            future = self._waiting.get(key)
            if future is None:
                future = self._waiting[key] = Future()
        while True:
            with self._turn:
                if future.done():
                    return future.result()
                if self._reading:
                    self._turn.wait()
                    continue
                self._reading = True
                keys = list(self._waiting)[:self._max_batch]
                batch = {k: self._waiting.pop(k) for k in keys}
            try:
                self._read(batch)
            finally:
                with self._turn:
                    self._reading = False
                    self._turn.notify_all()

    def _read(self, batch: dict[K, Future[V]]) -> None:
        self.reads += 1
        try:
            values = self._read_many(list(batch))
        except Exception as exc:  # every caller in the batch gets the failure, as if it had read
            for future in batch.values():
                future.set_exception(exc)
            return
        for k, future in batch.items():
            if k in values:
                future.set_result(values[k])
            else:
                future.set_exception(KeyError(k))
