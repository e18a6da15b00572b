"""Block requests wait while the service's unsent output is over the limit
(`Limits.service_write_backlog_bytes`, gateway/mqtt_driver.py): held as requests, in
the order they came, counted against their device's in-flight bound, and answered once
the backlog falls to half the limit. The broker connection is replaced by a backlog
figure and a list of published answers; the device service by one that answers every
block request from memory."""

from __future__ import annotations

import asyncio
import ssl
import threading
from typing import Any

from overair.core.limits import Limits
from overair.server.gateway.device_service import Outgoing
from overair.server.gateway.mqtt_driver import ServiceConnection

LIMIT = 1000


class _Service:
    limits = Limits(service_write_backlog_bytes=LIMIT)

    def __init__(self) -> None:
        self.in_flight_seen: list[int] = []

    def admit(self, _topic: str, in_flight: int = 0, _payload: bytes = b"") -> None:
        self.in_flight_seen.append(in_flight)
        return None

    def handle_from_cache(self, topic: str, payload: bytes) -> list[Outgoing] | None:
        return [Outgoing(f"{topic}/answer", payload, 0)]


def _connection(service: _Service, published: list[Outgoing], backlog: list[int]) -> ServiceConnection:
    """A service connection on the running loop whose broker backlog is `backlog[0]` and
    whose published answers land in `published`."""
    connection = ServiceConnection("127.0.0.1", 1, ssl.create_default_context(), service)  # type: ignore[arg-type]
    connection._loop = asyncio.get_running_loop()
    connection._write_backlog = lambda: backlog[0]  # type: ignore[method-assign]
    connection.publish = published.extend  # type: ignore[method-assign,assignment]
    return connection


def _request(thing: str, n: int) -> tuple[str, bytes]:
    return f"$aws/things/{thing}/streams/s-1/get/cbor", str(n).encode()


def test_block_requests_wait_while_the_backlog_is_over_the_limit_then_go_in_order() -> None:
    published: list[Outgoing] = []
    backlog = [5 * LIMIT]
    states: dict[str, Any] = {}

    async def run() -> None:
        service = _Service()
        connection = _connection(service, published, backlog)
        for thing, n in (("t1", 1), ("t2", 2), ("t1", 3)):
            connection._dispatch(*_request(thing, n))
        # Held requests count against their device's in-flight bound (admission).
        states["admitted with"] = list(service.in_flight_seen)
        await asyncio.sleep(0.05)
        states["held"] = (list(published), connection.waiting(), dict(connection._held))
        backlog[0] = LIMIT  # still over half the limit: nothing moves
        await asyncio.sleep(0.05)
        states["above half"] = (list(published), connection.waiting())
        backlog[0] = LIMIT // 2
        await asyncio.sleep(0.05)
        states["drained"] = (list(published), connection.waiting(), dict(connection._held))
        # With nothing held and the backlog under the limit, a request is answered at once.
        connection._dispatch(*_request("t3", 4))
        states["direct"] = list(published)

    asyncio.run(run())
    assert states["admitted with"] == [0, 0, 1]
    assert states["held"] == ([], 3, {"t1": 2, "t2": 1})
    assert states["above half"] == ([], 3)
    answers, waiting, in_flight = states["drained"]
    assert [a.payload for a in answers] == [b"1", b"2", b"3"]
    assert (waiting, in_flight) == (0, {})
    assert [a.payload for a in states["direct"]] == [b"1", b"2", b"3", b"4"]


def test_a_request_behind_held_ones_waits_even_when_the_backlog_is_low() -> None:
    """Order per device: a new request may not overtake the held ones."""
    published: list[Outgoing] = []
    backlog = [5 * LIMIT]

    async def run() -> None:
        connection = _connection(_Service(), published, backlog)
        connection._dispatch(*_request("t1", 1))
        backlog[0] = 0
        connection._dispatch(*_request("t1", 2))  # before the drain has run
        await asyncio.sleep(0.05)

    asyncio.run(run())
    assert [a.payload for a in published] == [b"1", b"2"]


class _MissingService(_Service):
    """Answers no block request from memory: each goes to a stream worker, which holds it
    until `release` is set."""

    limits = Limits(service_write_backlog_bytes=LIMIT, max_bytes_per_stream_request=400)

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.handled: list[bytes] = []

    def handle_from_cache(self, topic: str, payload: bytes) -> list[Outgoing] | None:
        return None

    def handle(self, topic: str, payload: bytes) -> list[Outgoing]:
        self.release.wait(5)
        self.handled.append(payload)
        return [Outgoing(f"{topic}/answer", payload, 0)]


def test_block_requests_in_the_workers_count_as_their_answers_to_come() -> None:
    """A worker's answer is written without a look at the backlog, so the requests in the
    workers count at `max_bytes_per_stream_request` each: 400 + 400 is under the limit of
    1,000, a third goes in (1,200), the rest wait as requests until the answers are out."""
    published: list[Outgoing] = []
    backlog = [0]
    states: dict[str, Any] = {}

    async def run() -> None:
        service = _MissingService()
        connection = _connection(service, published, backlog)
        connection._stream_workers.start(asyncio.get_running_loop())
        for n in range(5):
            connection._dispatch(*_request(f"t{n}", n))
        states["while held"] = (connection._streams_in_workers, len(connection._deferred))
        service.release.set()
        for _ in range(200):
            await asyncio.sleep(0.01)
            if len(published) == 5:
                break
        states["answered"] = sorted(a.payload for a in published)
        states["after"] = (connection._streams_in_workers, len(connection._deferred), connection.waiting())
        connection._stream_workers.stop()

    asyncio.run(run())
    assert states["while held"] == (3, 2)
    assert states["answered"] == [str(n).encode() for n in range(5)]
    assert states["after"] == (0, 0, 0)
