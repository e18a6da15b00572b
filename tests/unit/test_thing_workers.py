"""The device workers' queues (server/gateway/thing_workers.py): one thing's messages
are handled in the order they came, on one thread, and every answer (or failure)
comes back on the event loop; a failing handler never stops its worker."""

from __future__ import annotations

import asyncio
import threading

from overair.server.gateway.thing_workers import ThingWorkers


def test_each_things_messages_are_handled_in_order_and_answered_on_the_loop() -> None:
    handled: dict[str, list[int]] = {}
    threads: dict[str, set[str]] = {}
    answers: list[tuple[str, int | None, bool]] = []

    def handler(topic: str, payload: bytes) -> int:
        handled.setdefault(topic, []).append(int(payload))
        threads.setdefault(topic, set()).add(threading.current_thread().name)
        return int(payload)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        finished = asyncio.Event()
        workers: ThingWorkers[int] = ThingWorkers("test", 3)
        workers.start(loop)
        loop_thread = threading.current_thread()

        def done(thing: str, result: int | None, error: BaseException | None) -> None:
            on_loop = threading.current_thread() is loop_thread
            answers.append((thing, result if error is None else -1, on_loop))
            if len(answers) == 10 * 50:
                finished.set()

        for n in range(50):
            for thing in (f"thing-{i}" for i in range(10)):
                workers.submit(thing, handler, thing, str(n).encode(), done)
        await asyncio.wait_for(finished.wait(), 30)
        workers.stop()

    asyncio.run(run())
    assert all(sequence == list(range(50)) for sequence in handled.values())
    assert len(handled) == 10
    assert all(len(names) == 1 for names in threads.values())
    assert all(on_loop for _, _, on_loop in answers)
    for thing in handled:
        assert [n for t, n, _ in answers if t == thing] == list(range(50))


def test_a_failing_handler_is_reported_and_the_worker_goes_on() -> None:
    outcomes: list[tuple[int | None, str | None]] = []

    def handler(_topic: str, payload: bytes) -> int:
        if payload == b"bad":
            raise ValueError("hostile message")
        return len(payload)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        finished = asyncio.Event()
        workers: ThingWorkers[int] = ThingWorkers("test", 1)
        workers.start(loop)

        def done(_thing: str, result: int | None, error: BaseException | None) -> None:
            outcomes.append((result, None if error is None else str(error)))
            if len(outcomes) == 3:
                finished.set()

        for payload in (b"ok", b"bad", b"fine"):
            workers.submit("thing", handler, "topic", payload, done)
        await asyncio.wait_for(finished.wait(), 30)
        workers.stop()

    asyncio.run(run())
    assert outcomes == [(2, None), (None, "hostile message"), (4, None)]


def test_batchable_messages_waiting_in_a_row_are_handled_by_one_batch_call_in_order() -> None:
    """Messages naming the same batch handler that wait one behind the other go to it
    together; a message without it ends the run and is handled alone; answers come back
    one per message, in order."""
    calls: list[list[str]] = []
    outcomes: list[tuple[str, str | None]] = []
    gate = threading.Event()

    def handler(topic: str, _payload: bytes) -> str:
        if topic == "gate":
            assert gate.wait(10)
        calls.append([topic])
        return topic

    def batch(messages: list[tuple[str, bytes]]) -> list[str]:
        calls.append([topic for topic, _ in messages])
        return [topic for topic, _ in messages]

    async def run() -> None:
        loop = asyncio.get_running_loop()
        finished = asyncio.Event()
        workers: ThingWorkers[str] = ThingWorkers("test", 1, max_batch=3)
        workers.start(loop)

        def done(_thing: str, result: str | None, error: BaseException | None) -> None:
            outcomes.append((_thing, result))
            if len(outcomes) == 8:
                finished.set()

        workers.submit("t", handler, "gate", b"", done)  # holds the worker while the rest queue up
        for topic, batched in (("u1", True), ("u2", True), ("alone", False), ("u3", True),
                               ("u4", True), ("u5", True), ("u6", True)):
            workers.submit("t", handler, topic, b"", done, batch if batched else None)
        gate.set()
        await asyncio.wait_for(finished.wait(), 30)
        workers.stop()

    asyncio.run(run())
    assert calls == [["gate"], ["u1", "u2"], ["alone"], ["u3", "u4", "u5"], ["u6"]]
    assert [result for _, result in outcomes] == ["gate", "u1", "u2", "alone", "u3", "u4", "u5", "u6"]


def test_a_failing_batch_is_handled_message_by_message() -> None:
    outcomes: list[tuple[str | None, str | None]] = []
    gate = threading.Event()

    def handler(topic: str, _payload: bytes) -> str:
        if topic == "gate":
            assert gate.wait(10)
        if topic == "bad":
            raise ValueError("hostile message")
        return topic

    def batch(_messages: list[tuple[str, bytes]]) -> list[str]:
        raise RuntimeError("database unavailable")

    async def run() -> None:
        loop = asyncio.get_running_loop()
        finished = asyncio.Event()
        workers: ThingWorkers[str] = ThingWorkers("test", 1)
        workers.start(loop)

        def done(_thing: str, result: str | None, error: BaseException | None) -> None:
            outcomes.append((result, None if error is None else str(error)))
            if len(outcomes) == 4:
                finished.set()

        workers.submit("t", handler, "gate", b"", done)
        for topic in ("a", "bad", "b"):
            workers.submit("t", handler, topic, b"", done, batch)
        gate.set()
        await asyncio.wait_for(finished.wait(), 30)
        workers.stop()

    asyncio.run(run())
    assert outcomes == [("gate", None), ("a", None), (None, "hostile message"), ("b", None)]
