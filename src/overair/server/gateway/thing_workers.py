"""Worker threads for device messages, one queue each, a thing always on the same one.

A message waiting for a worker is one small tuple in a `queue.SimpleQueue` (a C queue):
no asyncio future, no concurrent.futures future with its condition and lock, no closure.
`run_in_executor` cost several KiB per waiting message, and waiting messages are what a
rollout piles up when the devices send updates faster than the database takes them
(bench/fleet.py, 3,000 devices: 29,000 waiting, +260 MiB of server memory; 10,000
devices: 1.7 GiB peak). Results go back to the event loop with `call_soon_threadsafe`,
one per message, and leave the loop's queue as fast as the loop runs.

Messages submitted with a `batch` handler (a device's job status updates) that wait in a
queue one behind the other are handled by one call of it, up to `max_batch` at a time:
the device service then writes a burst of progress reports in one transaction instead of
one each (bench/job_updates.py). A batch is a run of consecutive messages of one queue,
so each thing's messages are still handled in the order they came.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import zlib
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger("overair.devices")

R = TypeVar("R")
_STOP = None


Handler = Callable[[str, bytes], R]
# Handles several (topic, payload) messages in order; returns one result each.
BatchHandler = Callable[[list[tuple[str, bytes]]], list[R]]
Done = Callable[[str, R | None, BaseException | None], None]
_Item = tuple[str, Handler[R], str, bytes, Done[R], BatchHandler[R] | None]
MAX_BATCH = 64


class ThingWorkers(Generic[R]):
    """`count` threads named `name-i`. `submit(thing, handler, topic, payload, done)` runs
    `handler(topic, payload)` on the thing's thread (so one thing's work is done in the
    order submitted) and then `done(thing, result, error)` on the event loop (exactly one
    of result/error is set)."""

    def __init__(self, name: str, count: int, max_batch: int = MAX_BATCH) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._max_batch = max_batch
        self._queues: list[queue.SimpleQueue[_Item[R] | None]] = [
            queue.SimpleQueue() for _ in range(count)]
        self._threads = [threading.Thread(target=self._run, args=(q,), name=f"{name}-{i}", daemon=True)
                         for i, q in enumerate(self._queues)]

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        for thread in self._threads:
            thread.start()

    def submit(self, thing: str, handler: Handler[R], topic: str, payload: bytes, done: Done[R],
               batch: BatchHandler[R] | None = None) -> None:
        """`batch`, if given, may handle this message together with the messages next to
        it in the queue that name the same batch handler (it must do what `handler` would
        do to each, in order); `handler` alone is used when the batch handler fails."""
        self._queues[zlib.crc32(thing.encode()) % len(self._queues)].put(
            (thing, handler, topic, payload, done, batch))

    def waiting(self) -> int:
        """Messages not taken by a worker yet (for the metrics; approximate)."""
        return sum(q.qsize() for q in self._queues)

    def stop(self) -> None:
        """Workers end after the message in hand; waiting messages are dropped (the
        broker connection is closing: their answers could not be sent anyway)."""
        for q in self._queues:
            while True:
                try:
                    q.get_nowait()
                except queue.Empty:
                    break
            q.put(_STOP)

    def _run(self, inbox: queue.SimpleQueue[_Item[R] | None]) -> None:
        carried: _Item[R] | None = None  # taken from the queue while a batch was gathered
        while True:
            item = carried if carried is not None else inbox.get()
            carried = None
            if item is _STOP:
                return
            batch = item[5]
            if batch is None:
                self._answer([(item, *self._one(item))])
                continue
            run = [item]
            while len(run) < self._max_batch:
                try:
                    following = inbox.get_nowait()
                except queue.Empty:
                    break
                if following is _STOP or following[5] is not batch:
                    carried = following
                    break
                run.append(following)
            self._answer(self._many(run, batch))

    @staticmethod
    def _one(item: _Item[R]) -> tuple[R | None, BaseException | None]:
        try:
            return item[1](item[2], item[3]), None
        except Exception as exc:  # reported on the loop, never kills the worker
            return None, exc

    def _many(self, run: list[_Item[R]], batch: BatchHandler[R]
              ) -> list[tuple[_Item[R], R | None, BaseException | None]]:
        if len(run) > 1:
            try:
                results = batch([(item[2], item[3]) for item in run])
                if len(results) == len(run):
                    return [(item, result, None) for item, result in zip(run, results, strict=True)]
                log.error("a batch handler answered %d of %d messages", len(results), len(run))
            except Exception:
                log.exception("a batch of %d device messages failed; handling them one by one", len(run))
        return [(item, *self._one(item)) for item in run]

    def _answer(self, outcomes: list[tuple[_Item[R], R | None, BaseException | None]]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            # One wake-up of the loop for the whole batch.
            loop.call_soon_threadsafe(_deliver, outcomes)
        except RuntimeError:  # the loop closed between the check and the call
            log.debug("event loop closed; dropped %d answer(s)", len(outcomes))


def _deliver(outcomes: list[tuple[_Item[R], R | None, BaseException | None]]) -> None:
    for item, result, error in outcomes:
        try:
            item[4](item[0], result, error)
        except Exception:  # one answer's failure must not lose the others
            log.exception("answering a message of %s failed", item[0])
