"""Worker threads for device messages, one queue each, a thing always on the same one.

A message waiting for a worker is one small tuple in a `queue.SimpleQueue` (a C queue):
no asyncio future, no concurrent.futures future with its condition and lock, no closure.
`run_in_executor` cost several KiB per waiting message, and waiting messages are what a
rollout piles up when the devices send updates faster than the database takes them
(bench/fleet.py, 3,000 devices: 29,000 waiting, +260 MiB of server memory; 10,000
devices: 1.7 GiB peak). Results go back to the event loop with `call_soon_threadsafe`,
one per message, and leave the loop's queue as fast as the loop runs.
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
Done = Callable[[str, R | None, BaseException | None], None]
_Item = tuple[str, Handler[R], str, bytes, Done[R]]


class ThingWorkers(Generic[R]):
    """`count` threads named `name-i`. `submit(thing, handler, topic, payload, done)` runs
    `handler(topic, payload)` on the thing's thread (so one thing's work is done in the
    order submitted) and then `done(thing, result, error)` on the event loop (exactly one
    of result/error is set)."""

    def __init__(self, name: str, count: int) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queues: list[queue.SimpleQueue[_Item[R] | None]] = [
            queue.SimpleQueue() for _ in range(count)]
        self._threads = [threading.Thread(target=self._run, args=(q,), name=f"{name}-{i}", daemon=True)
                         for i, q in enumerate(self._queues)]

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        for thread in self._threads:
            thread.start()

    def submit(self, thing: str, handler: Handler[R], topic: str, payload: bytes, done: Done[R]) -> None:
        self._queues[zlib.crc32(thing.encode()) % len(self._queues)].put(
            (thing, handler, topic, payload, done))

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
        while (item := inbox.get()) is not _STOP:
            thing, handler, topic, payload, done = item
            result: R | None = None
            error: BaseException | None = None
            try:
                result = handler(topic, payload)
            except Exception as exc:  # reported on the loop, never kills the worker
                error = exc
            loop = self._loop
            if loop is None or loop.is_closed():
                continue
            try:
                loop.call_soon_threadsafe(done, thing, result, error)
            except RuntimeError:  # the loop closed between the check and the call
                log.debug("event loop closed; dropped the answer to a message of %s", thing)
