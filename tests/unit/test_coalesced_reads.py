"""Batched reads of what many threads ask for at once (jobs/coalesced_reads.py): the
access decisions of a rollout's first download requests (delivery/http_download.py)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from overair.server.jobs.coalesced_reads import CoalescedReads


def test_many_threads_asking_at_once_share_a_few_reads() -> None:
    release = threading.Event()
    batches: list[list[str]] = []

    def read_many(keys: list[str]) -> dict[str, str]:
        batches.append(keys)
        release.wait(5)  # the first read holds everyone else back: they queue up
        return {k: k.upper() for k in keys}

    reads = CoalescedReads(read_many, max_batch=500)
    with ThreadPoolExecutor(200) as pool:  # all 200 ask at once
        futures = [pool.submit(reads.get, f"thing-{i}") for i in range(200)]
        while not batches:
            threading.Event().wait(0.01)
        threading.Event().wait(0.2)
        release.set()
        answers = [f.result(timeout=10) for f in futures]
    assert answers == [f"THING-{i}" for i in range(200)]
    assert len(batches) <= 3, [len(b) for b in batches]  # one per thread without coalescing
    assert sorted(k for b in batches for k in b) == sorted(f"thing-{i}" for i in range(200))


def test_n4_a_key_asked_during_its_read_is_read_again() -> None:
    # The caller caches the answer under the access generation it noted before asking:
    # an answer from a read that began before the ask could predate an execution change.
    started, release = threading.Event(), threading.Event()
    reads_of: dict[str, int] = {}

    def read_many(keys: list[str]) -> dict[str, int]:
        for k in keys:
            reads_of[k] = reads_of.get(k, 0) + 1
        if reads_of["x"] == 1:
            started.set()
            release.wait(5)
        return {k: reads_of[k] for k in keys}

    reads = CoalescedReads(read_many, max_batch=500)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(reads.get, "x")
        assert started.wait(5)
        second = pool.submit(reads.get, "x")  # asked while the first read is under way
        threading.Event().wait(0.1)
        release.set()
        assert first.result(timeout=5) == 1
        assert second.result(timeout=5) == 2


def test_a_failed_read_fails_its_callers_and_the_next_read_goes_on() -> None:
    calls = 0

    def read_many(keys: list[str]) -> dict[str, int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("database unavailable")
        return dict.fromkeys(keys, 7)

    reads = CoalescedReads(read_many, max_batch=500)
    with pytest.raises(RuntimeError, match="database unavailable"):
        reads.get("a")
    assert reads.get("a") == 7
    def read_nothing(keys: list[str]) -> dict[str, int]:
        return {}

    with pytest.raises(KeyError):  # a key the read left out
        CoalescedReads(read_nothing, max_batch=5).get("missing")


def test_batches_hold_at_most_max_batch_keys() -> None:
    release = threading.Event()
    sizes: list[int] = []

    def read_many(keys: list[str]) -> dict[str, int]:
        sizes.append(len(keys))
        release.wait(5)
        return dict.fromkeys(keys, 1)

    reads = CoalescedReads(read_many, max_batch=10)
    with ThreadPoolExecutor(40) as pool:
        futures = [pool.submit(reads.get, str(i)) for i in range(40)]
        threading.Event().wait(0.2)
        release.set()
        assert all(f.result(timeout=10) == 1 for f in futures)
    assert max(sizes) <= 10
    assert sum(sizes) == 40
