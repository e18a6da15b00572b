"""Block requests answered on the event loop from memory (gateway/mqtt_driver.py): a
device's job update still in a device worker does not send its block requests the slow
way, but a block request still in a stream worker keeps the device's later block requests
behind it (they are answered in order). The broker connection is replaced by a list of
published answers; the device service by one whose worker calls wait for the test."""

from __future__ import annotations

import asyncio
import ssl
import threading
from typing import Any

from overair.core.limits import Limits
from overair.server.gateway.device_service import DeviceService, Outgoing
from overair.server.gateway.mqtt_driver import ServiceConnection

STREAM = "$aws/things/t1/streams/s-1/get/cbor"
UPDATE = "$aws/things/t1/jobs/j-1/update"


class _Service:
    limits = Limits()
    is_job_update = staticmethod(DeviceService.is_job_update)

    def __init__(self) -> None:
        self.worker_may_go = threading.Event()

    def admit(self, _topic: str, _in_flight: int = 0, _payload: bytes = b"") -> None:
        return None

    def handle_from_cache(self, topic: str, payload: bytes) -> list[Outgoing] | None:
        return None if payload == b"not cached" else [Outgoing(f"{topic}/from-cache", payload, 0)]

    def handle(self, topic: str, payload: bytes) -> list[Outgoing]:
        assert self.worker_may_go.wait(10)
        return [Outgoing(f"{topic}/from-worker", payload, 0)]

    def handle_updates(self, messages: list[tuple[str, bytes]]) -> list[list[Outgoing]]:
        return [self.handle(topic, payload) for topic, payload in messages]


def _connection(service: _Service, published: list[Outgoing]) -> ServiceConnection:
    connection = ServiceConnection("127.0.0.1", 1, ssl.create_default_context(), service)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    connection._loop = loop
    connection._workers.start(loop)
    connection._stream_workers.start(loop)
    connection._write_backlog = lambda: 0  # type: ignore[method-assign]
    connection.publish = published.extend  # type: ignore[method-assign,assignment]
    return connection


def test_a_job_update_in_a_worker_does_not_hold_back_the_devices_block_requests() -> None:
    published: list[Outgoing] = []
    states: dict[str, Any] = {}

    async def run() -> None:
        service = _Service()
        connection = _connection(service, published)
        connection._dispatch(UPDATE, b"progress")  # waits in a device worker
        connection._dispatch(STREAM, b"1")
        states["while the update waits"] = [m.topic for m in published]
        service.worker_may_go.set()
        await asyncio.sleep(0.1)
        states["after"] = [m.topic for m in published]

    asyncio.run(run())
    assert states["while the update waits"] == [f"{STREAM}/from-cache"]
    assert states["after"] == [f"{STREAM}/from-cache", f"{UPDATE}/from-worker"]


def test_a_block_request_in_a_stream_worker_keeps_the_next_ones_in_order() -> None:
    published: list[Outgoing] = []
    states: dict[str, Any] = {}

    async def run() -> None:
        service = _Service()
        connection = _connection(service, published)
        connection._dispatch(STREAM, b"not cached")  # to a stream worker, which waits
        connection._dispatch(STREAM, b"2")
        states["waiting"] = list(published)
        service.worker_may_go.set()
        await asyncio.sleep(0.1)
        states["after"] = [(m.topic.rsplit("/", 1)[1], m.payload) for m in published]

    asyncio.run(run())
    assert states["waiting"] == []
    assert states["after"] == [("from-worker", b"not cached"), ("from-worker", b"2")]
