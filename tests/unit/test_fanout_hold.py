"""While a job's notifications go out to more than one batch of things, device messages
wait (gateway/mqtt_driver.py `FANOUT_HOLD_SECONDS`): the fleet hears of the job before
the first devices' requests take the interpreter from the fan-out. Held messages are
counted against their device's in-flight bound, handed on in arrival order once the
fan-out ends (or its hold runs out), and a message arriving meanwhile goes behind them.
The broker connection is replaced by a list of published messages; the device service by
one that answers from memory and whose notification batches wait for the test."""

from __future__ import annotations

import asyncio
import ssl
import threading
from typing import Any

from overair.core import topics
from overair.core.limits import Limits
from overair.server.gateway import mqtt_driver
from overair.server.gateway.device_service import Outgoing
from overair.server.gateway.mqtt_driver import NOTIFY_BATCH, ServiceConnection


class _Service:
    limits = Limits()

    def __init__(self) -> None:
        self.in_flight_seen: list[int] = []
        self.batch_may_go = threading.Event()

    def admit(self, _topic: str, in_flight: int = 0, _payload: bytes = b"") -> None:
        self.in_flight_seen.append(in_flight)
        return None

    def handle_from_cache(self, topic: str, payload: bytes) -> list[Outgoing]:
        return [Outgoing(f"{topic}/answer", payload, 0)]

    def notify_next_many(self, things: list[str], pending: bool = True) -> list[Outgoing]:
        assert self.batch_may_go.wait(10)
        return [message for thing in things
                for message in (Outgoing(topics.notify_next_topic(thing), b"next"),
                                *([Outgoing(topics.notify_topic(thing), b"pending")] if pending else []))]

    def notify_pending_many(self, things: list[str]) -> list[Outgoing]:
        return [Outgoing(topics.notify_topic(thing), b"pending") for thing in things]


def _connection(service: _Service, published: list[Outgoing]) -> ServiceConnection:
    connection = ServiceConnection("127.0.0.1", 1, ssl.create_default_context(), service)  # type: ignore[arg-type]
    connection._loop = asyncio.get_running_loop()
    connection._write_backlog = lambda: 0  # type: ignore[method-assign]
    connection.publish = published.extend  # type: ignore[method-assign,assignment]
    return connection


def _request(thing: str, n: int) -> tuple[str, bytes]:
    return f"$aws/things/{thing}/streams/s-1/get/cbor", str(n).encode()


def _things(count: int) -> list[str]:
    return [f"t{i}" for i in range(count)]


def test_device_messages_wait_for_a_large_fanout_then_go_in_order() -> None:
    published: list[Outgoing] = []
    states: dict[str, Any] = {}

    async def run() -> None:
        service = _Service()
        connection = _connection(service, published)
        fanout = asyncio.ensure_future(connection.notify_next(_things(2 * NOTIFY_BATCH + 1)))
        await asyncio.sleep(0.01)
        for thing, n in (("t1", 1), ("t2", 2), ("t1", 3)):
            connection._dispatch(*_request(thing, n))
        states["admitted with"] = list(service.in_flight_seen)
        await asyncio.sleep(0.05)
        states["held"] = (list(published), connection.waiting(), dict(connection._held))
        service.batch_may_go.set()
        await fanout
        connection._dispatch(*_request("t9", 4))  # while the held ones are handed on: behind them
        await asyncio.sleep(0.05)
        states["after"] = (list(published), connection.waiting(), dict(connection._held))

    asyncio.run(run())
    assert states["admitted with"] == [0, 0, 1]  # held messages count against the bound
    assert states["held"] == ([], 3, {"t1": 2, "t2": 1})
    answers, waiting, held = states["after"]
    things = _things(2 * NOTIFY_BATCH + 1)
    # Every thing's notify-next first; then the held messages in order, and every thing's
    # pending list (read after the last notify-next, sent once read).
    assert [a.topic for a in answers[:len(things)]] == [topics.notify_next_topic(t) for t in things]
    rest = answers[len(things):]
    assert [a.payload for a in rest if not a.topic.endswith("/jobs/notify")] == [b"1", b"2", b"3", b"4"]
    lists = [a.topic for a in rest if a.topic.endswith("/jobs/notify")]
    assert lists == [topics.notify_topic(t) for t in things]
    assert (waiting, held) == (0, {})


def test_a_fanout_that_outlasts_its_hold_lets_device_messages_through(monkeypatch: Any) -> None:
    """A slow database must not stop device traffic: after the hold, messages go on
    while the fan-out is still running."""
    monkeypatch.setattr(mqtt_driver, "FANOUT_HOLD_SECONDS", 0.05)
    published: list[Outgoing] = []
    states: dict[str, Any] = {}

    async def run() -> None:
        service = _Service()
        connection = _connection(service, published)
        fanout = asyncio.ensure_future(connection.notify_next(_things(2 * NOTIFY_BATCH)))
        await asyncio.sleep(0.01)
        connection._dispatch(*_request("t1", 1))
        states["held"] = list(published)
        await asyncio.sleep(0.2)
        states["released"] = list(published)
        connection._dispatch(*_request("t1", 2))
        states["direct"] = list(published)
        service.batch_may_go.set()
        await fanout

    asyncio.run(run())
    assert states["held"] == []
    assert [a.payload for a in states["released"]] == [b"1"]
    assert [a.payload for a in states["direct"]] == [b"1", b"2"]


def test_one_batch_of_notifications_holds_nothing() -> None:
    published: list[Outgoing] = []
    states: dict[str, Any] = {}

    async def run() -> None:
        service = _Service()
        connection = _connection(service, published)
        fanout = asyncio.ensure_future(connection.notify_next(_things(NOTIFY_BATCH)))
        await asyncio.sleep(0.01)
        connection._dispatch(*_request("t1", 1))
        states["answered"] = list(published)
        service.batch_may_go.set()
        await fanout

    asyncio.run(run())
    assert [a.payload for a in states["answered"]] == [b"1"]
    # One batch: each thing's two messages together, as read.
    assert [a.topic for a in published[1:]] == [topic for t in _things(NOTIFY_BATCH) for topic in (
        topics.notify_next_topic(t), topics.notify_topic(t))]
