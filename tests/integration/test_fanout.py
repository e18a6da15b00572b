"""The fan-out between server processes (jobs/fanout.py) over a real PostgreSQL: what
one process announces reaches every other one, in order and split below NOTIFY's
payload limit, and never comes back to its sender; SQLite has nobody to tell."""

from __future__ import annotations

import logging
import queue
import time
from pathlib import Path

import pytest

from overair.server.jobs.fanout import NoFanout, PostgresFanout, fanout_for
from tests.postgres_harness import PostgresCluster

Inbox = queue.Queue[tuple[str, list[str]]]


def _postgres_fanout(url: str) -> PostgresFanout:
    fanout = fanout_for(url)
    assert isinstance(fanout, PostgresFanout)
    return fanout


def _receiver(fanout: PostgresFanout) -> Inbox:
    received: Inbox = queue.Queue()
    fanout.start(lambda kind, names: received.put((kind, names)), on_reconnect=lambda: None)
    return received


def _drain_until_listening(sender: PostgresFanout, inboxes: list[Inbox]) -> None:
    """LISTEN takes effect once its connection is up: probe until every inbox has one,
    then empty them."""
    deadline = time.monotonic() + 20
    seen = [False] * len(inboxes)
    while not all(seen):
        assert time.monotonic() < deadline, "the listeners did not start"
        sender.announce("pending", ["probe"])
        time.sleep(0.1)
        for i, inbox in enumerate(inboxes):
            while not inbox.empty():
                inbox.get_nowait()
                seen[i] = True
    time.sleep(0.2)
    for inbox in inboxes:
        while not inbox.empty():
            inbox.get_nowait()


def _names_of(inbox: Inbox, kind: str, count: int) -> list[str]:
    got: list[str] = []
    while len(got) < count:
        got_kind, names = inbox.get(timeout=10)
        assert got_kind == kind
        got += names
    return got


def test_announcements_reach_the_other_processes_only(postgres: PostgresCluster) -> None:
    url = postgres.new_database()
    a, b, c = _postgres_fanout(url), _postgres_fanout(url), _postgres_fanout(url)
    try:
        from_a, from_b, from_c = _receiver(a), _receiver(b), _receiver(c)
        _drain_until_listening(a, [from_b, from_c])
        assert from_a.empty()  # its own probes did not come back
        many = [f"thing-{i:05d}-with-a-long-name-to-fill-the-payload" for i in range(2000)]
        a.announce("next", many)
        assert _names_of(from_b, "next", len(many)) == many  # in order, across several payloads
        assert _names_of(from_c, "next", len(many)) == many
        b.announce("deleted", ["firmware/app.bin"])
        assert from_a.get(timeout=10) == ("deleted", ["firmware/app.bin"])
        assert from_c.get(timeout=10) == ("deleted", ["firmware/app.bin"])
        time.sleep(0.2)
        assert from_a.empty()
        assert from_b.empty()
    finally:
        for fanout in (a, b, c):
            fanout.stop()


def test_a_process_stopping_tells_the_others_nothing(postgres: PostgresCluster,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """stop() wakes its own listener on a channel of its own: the others hear nothing
    (a wake-up on the shared channel made each of them warn of a malformed message)."""
    url = postgres.new_database()
    a, b, c = _postgres_fanout(url), _postgres_fanout(url), _postgres_fanout(url)
    try:
        _receiver(a)
        from_b = _receiver(b)
        _drain_until_listening(c, [from_b])
        with caplog.at_level(logging.WARNING, logger="overair.fanout"):
            a.stop()
            # NOTIFYs reach a listener in commit order: once c's marker is in, b has
            # read whatever a's stop sent before it.
            c.announce("pending", ["marker"])
            assert from_b.get(timeout=10) == ("pending", ["marker"])
        assert [r.getMessage() for r in caplog.records if r.name == "overair.fanout"] == []
        assert from_b.empty()
    finally:
        for fanout in (a, b, c):
            fanout.stop()


def test_sqlite_has_nobody_to_tell(tmp_path: Path) -> None:
    assert isinstance(fanout_for(f"sqlite:///{tmp_path / 'overair.db'}"), NoFanout)
