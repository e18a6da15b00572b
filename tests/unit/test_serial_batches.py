"""Items given to one worker in batches (server/serial_batches.py): a burst becomes one
batch, nothing joins a batch being applied, and work handed over with `submit_after`
runs after every item added before it and before every item added after it."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from overair.server.serial_batches import SerialBatches


def _occupy(worker: ThreadPoolExecutor) -> threading.Event:
    """Keep the worker busy until the returned event is set."""
    busy, release = threading.Event(), threading.Event()

    def hold() -> None:
        busy.set()
        release.wait(5)

    worker.submit(hold)
    assert busy.wait(5)
    return release


def _burst(items: int, max_batch: int) -> list[list[int]]:
    """The batches applied when `items` are added while the worker is busy."""
    applied: list[list[int]] = []
    with ThreadPoolExecutor(1) as worker:
        release = _occupy(worker)
        batches: SerialBatches[int] = SerialBatches(worker, applied.append, "numbers", max_batch)
        for n in range(items):
            batches.add(n)
        release.set()
        batches.submit_after(lambda: None).result(5)
    return applied


def test_items_added_while_the_worker_is_busy_are_applied_as_one_batch() -> None:
    assert _burst(5, max_batch=100) == [[0, 1, 2, 3, 4]]


def test_a_burst_longer_than_max_batch_is_applied_in_batches_of_at_most_max_batch_in_order() -> None:
    assert _burst(7, max_batch=3) == [[0, 1, 2], [3, 4, 5], [6]]


def test_work_submitted_after_items_runs_between_the_items_before_and_after_it() -> None:
    seen: list[str] = []
    with ThreadPoolExecutor(1) as worker:
        release = _occupy(worker)
        batches: SerialBatches[str] = SerialBatches(worker, seen.extend, "events", 100)
        batches.add("connected before the restart")
        done = batches.submit_after(lambda: seen.append("RESTART"))
        batches.add("connected after the restart")
        release.set()
        done.result(5)
        batches.submit_after(lambda: None).result(5)
    assert seen == ["connected before the restart", "RESTART", "connected after the restart"]


def test_a_failing_batch_is_logged_and_later_items_are_still_applied() -> None:
    applied: list[list[int]] = []

    def apply(items: list[int]) -> None:
        if items == [1]:
            raise RuntimeError("database unavailable")
        applied.append(items)

    with ThreadPoolExecutor(1) as worker:
        batches: SerialBatches[int] = SerialBatches(worker, apply, "numbers", 100)
        batches.add(1)
        batches.submit_after(lambda: None).result(5)
        batches.add(2)
        batches.submit_after(lambda: None).result(5)
    assert applied == [[2]]
