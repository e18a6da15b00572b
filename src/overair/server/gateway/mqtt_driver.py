"""The service's own MQTT connection (gmqtt, asyncio) around `DeviceService`.

Each incoming message is handled in a worker thread picked by the thing name, so one
device's requests are answered in the order it sent them while different devices are
served in parallel. Replies are published from the event loop.

The message callback runs on the event loop that also keeps the broker connection
alive, so nothing a device sends may raise out of it or make it wait: each message is
first admitted against its device's budget (`DeviceService.admit`, which also refuses a
thing with too many messages already waiting for a worker), and any defect past that is
logged and the message dropped, never propagated into gmqtt.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import ssl
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from gmqtt import Client as GmqttClient
from gmqtt import Subscription
from gmqtt.mqtt.constants import MQTTv311

from overair.core import claimwire, topics
from overair.core.errors import UnavailableError
from overair.server.gateway.device_service import DeviceService, Outgoing
from overair.server.gateway.thing_workers import ThingWorkers
from overair.server.pki import SERVICE_IDENTITY
from overair.server.shadow import mqtt as shadow_mqtt

log = logging.getLogger("overair.devices")
DRAIN_POLL_SECONDS = 0.005  # how often held block requests look at the backlog again
NOTIFY_BATCH = 500  # things per notify-next database read (within SQLite's 999 bound parameters)
# While a job's notifications go out to more than one batch of things, device messages
# wait (at most this long) instead of taking the interpreter from the fan-out. 10,000
# things take ~3.5 s alone (20 batches); at 2 s the devices notified first took the
# interpreter for the rest, and the last batch left 10.8-13.5 s after CreateOTAUpdate
# (3.8 s at 5 s, the rollout as long: bench/fleet.py, docs/scaling.md).
FANOUT_HOLD_SECONDS = 5.0
REPLAY_CHUNK = 500  # held messages handed on per event-loop turn once a fan-out ends


class ClaimHandler(Protocol):
    """The device provisioning MQTT API (server/provisioning/device.py ClaimService)."""

    def admit(self, topic: str) -> list[Outgoing] | None: ...

    def handle(self, topic: str, payload: bytes) -> list[Outgoing]: ...


class ServiceConnection:
    def __init__(self, host: str, port: int, ssl_context: ssl.SSLContext, service: DeviceService,
                 workers: int = 4) -> None:
        self._host = host
        self._port = port
        self._ssl = ssl_context
        self._service = service
        self._workers: ThingWorkers[list[Outgoing]] = ThingWorkers("devices", workers)
        # Job status updates waiting one behind the other are handled together (their
        # progress reports in one transaction). One function object, so the workers see
        # consecutive updates as one batch (each `obj.method` access makes a new one).
        self._update_batches = self._handle_updates
        # Block requests read only caches and never wait behind a job update's database
        # write: they have workers of their own (still one per thing, so in order).
        self._stream_workers: ThingWorkers[list[Outgoing]] = ThingWorkers("streams", workers)
        # A job's notifications have a worker of their own: in the devices' workers the
        # later batches waited behind the traffic of the devices notified first (10,000
        # devices: the last was told 258 s after CreateOTAUpdate; bench/fleet.py).
        self._notify_executor = ThreadPoolExecutor(1, thread_name_prefix="notify")
        self._client = GmqttClient(SERVICE_IDENTITY)
        self._client.on_message = self._on_message
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        # Connections to the broker made and lost (the metrics endpoint reads them), and
        # the SUBSCRIBE of device topics whose SUBACK re-notifies the devices.
        self.connects = 0
        self.losses = 0
        self._connected = False
        self._renotify_mid: int | None = None
        # Things connected to the broker now (server/app.py: its presence events): told
        # again too, a pending job or not. A device whose SUCCEEDED the server recorded
        # but whose PUBACK the dying broker never sent asks `$next/get` to see it
        # recorded, and without a pending job it would not be in the list above.
        self.connected_things: Callable[[], Iterable[str]] = lambda: ()
        # Called on the event loop after every (re)connect, e.g. to republish what the
        # broker lost in a restart (server/app.py: the retained revocation list).
        self.on_connected: Callable[[], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Messages per thing handed to a worker and not answered yet (event loop only).
        self._in_worker: dict[str, int] = {}
        # Of those, block requests in a stream worker (event loop only), per thing and in all.
        self._streams_in_worker: dict[str, int] = {}
        self._streams_in_workers = 0
        # What a block request's answer may add to the output: a request in a worker is
        # counted at this much until its answer is written (`_output_backlog`).
        self._answer_bytes = service.limits.max_bytes_per_stream_request
        # Block requests held back while the service's unsent output is over the limit
        # (event loop only), oldest first, and how many per thing: they count against the
        # thing's in-flight bound like messages in a worker.
        self._deferred: collections.deque[tuple[str, str, bytes]] = collections.deque()
        self._held: dict[str, int] = {}
        self._backlog_limit = service.limits.service_write_backlog_bytes
        self._drain_scheduled = False
        # Device messages held while a large notification fan-out runs (event loop only),
        # in arrival order; counted in `_held` like the block requests above. 10,000
        # devices: the first ones notified sent `$next/get`, status updates and block
        # requests, and eight device workers shared the interpreter with the one notify
        # worker, so the last notification left 11.2 s after CreateOTAUpdate instead of
        # the fan-out's own 1.6 s (bench/fleet.py). A device gains nothing from an answer
        # before the rest of the fleet has heard of the job.
        self._fanouts = 0
        self._hold_until = 0.0
        self._fanout_held: collections.deque[tuple[str, str, bytes]] = collections.deque()
        self._pending_lists: set[asyncio.Task[None]] = set()  # read and sent after a fan-out
        self._replay_scheduled = False
        # Fleet provisioning by claim (server/provisioning/device.py), when wired: the
        # requests the access plugin moves to the service, in a worker of their own
        # (minting a key takes milliseconds; jobs traffic must not wait behind it).
        self.claims: ClaimHandler | None = None
        self._claim_executor = ThreadPoolExecutor(1, thread_name_prefix="claims")
        self._tasks: set[asyncio.Future[Any]] = set()  # claim requests in their worker

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._workers.start(self._loop)
        self._stream_workers.start(self._loop)
        self._client.set_config({"reconnect_retries": -1, "reconnect_delay": 1})
        try:
            await self._client.connect(self._host, self._port, ssl=self._ssl, version=MQTTv311,
                                       keepalive=30)
        except (OSError, ssl.SSLError) as exc:
            self._workers.stop()
            self._stream_workers.stop()
            raise UnavailableError(f"cannot connect to the broker at {self._host}:{self._port}: "
                                   f"{exc}") from exc

    def _on_connect(self, client: Any, _flags: Any, _rc: Any, _properties: Any) -> None:
        # Subscribing here also restores the subscriptions after a reconnect. At QoS 0:
        # MQTT orders messages only within one QoS, and Mosquitto holds QoS 1 deliveries
        # behind a window of `max_inflight_messages` (20) while QoS 0 ones go out at once,
        # so under load a device's `self_test: ready` (QoS 1) reached the service after the
        # `$next/get` it sent once rebooted (QoS 0), and it was told to test nothing
        # (bench/fleet.py: 11% of 1,000 devices). The session is clean, so QoS 1 bought no
        # durability either: a message is lost with the link at any QoS.
        mid = client.subscribe([Subscription(t, qos=0)
                                for t in (*topics.SERVICE_SUBSCRIPTIONS, *shadow_mqtt.SUBSCRIPTIONS)])
        if self.claims is not None:
            client.subscribe([Subscription(claimwire.REQUEST_SUBSCRIPTION, qos=1)])
        self._connected = True
        self.connects += 1
        if self.connects == 1:
            log.info("service connected to the broker and subscribed")
        else:
            # Devices that reconnected to the restarted broker before this SUBSCRIBE
            # asked `$next/get` into the void (nobody subscribed; the broker drops it),
            # and wait for an answer they will never get: the node-loss test saw 3 of
            # 10 devices wait until their timeout. Once the SUBACK says the service
            # hears them, each thing with a pending job is told it on notify-next, the
            # answer it waited for (a device asking later is heard: it is after the SUBACK);
            # so is every thing connected now (`connected_things`), pending job or not.
            self._renotify_mid = int(mid)
            log.warning("service reconnected to the broker (connection %d); subscribing again", self.connects)
        if self.on_connected is not None:
            self.on_connected()

    def _on_disconnect(self, _client: Any, _packet: Any, _exc: Any = None) -> None:
        if self._connected:
            self._connected = False
            self.losses += 1
            log.error("service lost its broker connection (loss %d); reconnecting", self.losses)

    def _on_subscribe(self, _client: Any, mid: int, _qos: Any, _properties: Any) -> None:
        if mid == self._renotify_mid:
            self._renotify_mid = None
            future = asyncio.ensure_future(self._renotify())
            self._tasks.add(future)
            future.add_done_callback(self._tasks.discard)

    async def _renotify(self) -> None:
        assert self._loop is not None
        try:
            pending = await self._loop.run_in_executor(self._notify_executor,
                                                       self._service.things_with_pending)
            things = sorted({*pending, *self.connected_things()})
            await self.notify_next(things)
        except Exception:
            log.exception("telling devices their jobs again after the reconnect failed")
            return
        log.warning("service subscribed again after the reconnect; told %d thing(s) their next job again",
                    len(things))

    def metrics(self) -> dict[str, float]:
        return {"overair_service_broker_connected": 1.0 if self._connected else 0.0,
                "overair_service_broker_connects_total": float(self.connects),
                "overair_service_broker_connection_losses_total": float(self.losses)}

    @staticmethod
    def _is_stream(topic: str) -> bool:
        parts = topic.split("/", 4)
        return len(parts) > 3 and parts[3] == "streams"

    def _on_message(self, _client: Any, topic: str, payload: bytes, _qos: int, _props: Any) -> int:
        try:
            self._dispatch(topic, payload)
        except Exception:
            log.exception("dropped a device message on %r", str(topic)[:200])
        return 0

    def _dispatch(self, topic: str, payload: bytes) -> None:
        assert self._loop is not None
        if self.claims is not None and topic.startswith(claimwire.REQUEST_PREFIX):
            refusal = self.claims.admit(topic)
            if refusal is not None:
                self.publish(refusal)
                return
            future = self._loop.run_in_executor(self._claim_executor, self.claims.handle, topic,
                                                bytes(payload))
            self._tasks.add(future)
            future.add_done_callback(self._claim_answered)
            return
        thing = topics.thing_of(topic)
        in_flight = self._in_worker.get(thing, 0) + self._held.get(thing, 0)
        refusal = self._service.admit(topic, in_flight, bytes(payload))
        if refusal is not None:
            self.publish(refusal)
            return
        if self._holding():
            self._held[thing] = self._held.get(thing, 0) + 1
            self._fanout_held.append((thing, topic, bytes(payload)))
            return
        self._route(thing, topic, payload)

    def _holding(self) -> bool:
        """Device messages wait: a large fan-out is running (for at most
        FANOUT_HOLD_SECONDS), or messages held by one are still being handed on (a new
        message goes behind them, in order)."""
        assert self._loop is not None
        return bool(self._fanout_held) or (self._fanouts > 0 and self._loop.time() < self._hold_until)

    def _replay(self) -> None:
        """Hand the messages held during a fan-out on, REPLAY_CHUNK per loop turn (device
        traffic and broker pings go on between chunks), once the fan-out has ended or
        its hold has run out."""
        assert self._loop is not None
        self._replay_scheduled = False
        if self._fanouts > 0 and self._loop.time() < self._hold_until:
            return  # the fan-out's end or its deadline calls again
        for _ in range(min(REPLAY_CHUNK, len(self._fanout_held))):
            self._hand_on(self._fanout_held, self._route)
        if self._fanout_held:
            self._schedule_replay()

    def _schedule_replay(self, delay: float = 0.0) -> None:
        assert self._loop is not None
        if delay > 0:
            self._loop.call_later(delay, self._replay)
        elif not self._replay_scheduled:
            self._replay_scheduled = True
            self._loop.call_soon(self._replay)

    def _route(self, thing: str, topic: str, payload: bytes) -> None:
        if self._is_stream(topic) and (self._deferred or self._output_backlog() > self._backlog_limit):
            # An answer is 8 blocks of 4 KiB; a request ~100 bytes. When the broker takes
            # our output slower than devices ask (a fleet starting its download at once),
            # hold the requests rather than their answers: 10,000 devices' answers are
            # 320 MiB. Pausing our reads instead would make Mosquitto drop device messages
            # (QoS 0 beyond max_queued_messages; broker_log.dropping_client).
            self._held[thing] = self._held.get(thing, 0) + 1
            self._deferred.append((thing, topic, bytes(payload)))
            self._schedule_drain()
            return
        self._handle_admitted(thing, topic, payload)

    def _handle_admitted(self, thing: str, topic: str, payload: bytes) -> None:
        if self._is_stream(topic):
            # A block request answerable from memory is answered here, on the loop, unless
            # an earlier block request of the same thing is still in a stream worker (a
            # device's block requests are answered in order). The thing's job updates do
            # not hold it back: they run in other workers and were never ordered with its
            # block requests, which only read caches (an execution that ends drops its
            # cached access at once, N4). Waiting for them sent 318,000 of 320,000 block
            # requests of a 10,000-device rollout through the stream workers, behind
            # progress reports queued for seconds (bench/fleet.py).
            if not self._streams_in_worker.get(thing):
                answer = self._service.handle_from_cache(topic, bytes(payload))
                if answer is not None:
                    self.publish(answer)
                    return
            self._in_worker[thing] = self._in_worker.get(thing, 0) + 1
            self._streams_in_worker[thing] = self._streams_in_worker.get(thing, 0) + 1
            self._streams_in_workers += 1
            self._stream_workers.submit(thing, self._service.handle, topic, bytes(payload),
                                        self._stream_published)
            return
        self._in_worker[thing] = self._in_worker.get(thing, 0) + 1
        self._workers.submit(thing, self._service.handle, topic, bytes(payload), self._published,
                             self._update_batches if self._service.is_job_update(topic) else None)

    def _handle_updates(self, messages: list[tuple[str, bytes]]) -> list[list[Outgoing]]:
        return self._service.handle_updates(messages)

    def _claim_answered(self, future: asyncio.Future[list[Outgoing]]) -> None:
        self._tasks.discard(future)
        if not future.cancelled() and future.exception() is None:
            try:
                self.publish(future.result())
            except Exception:
                log.exception("publishing a claim answer failed")

    def _write_backlog(self) -> int:
        """Bytes written to the broker connection and not yet sent."""
        transport = getattr(getattr(self._client, "_connection", None), "_transport", None)
        return int(transport.get_write_buffer_size()) if transport is not None else 0

    def _output_backlog(self) -> int:
        """The unsent bytes, and what the block requests in the stream workers will add.
        Their answers are written without a look at the backlog: at 10,000 devices the
        first block request of each (a cache miss, so a worker's) passed the check while
        the backlog was low, and their answers took it to 80 MiB a few seconds later
        (server RSS 929 MiB; bench/fleet.py, memory sampler)."""
        return self._write_backlog() + self._streams_in_workers * self._answer_bytes

    def _schedule_drain(self) -> None:
        if not self._drain_scheduled and self._loop is not None:
            self._drain_scheduled = True
            self._loop.call_later(DRAIN_POLL_SECONDS, self._drain)

    def _drain(self) -> None:
        """Hand held block requests on, oldest first, while the backlog is under half
        the limit; look again shortly if some are left."""
        self._drain_scheduled = False
        while self._deferred and self._output_backlog() <= self._backlog_limit // 2:
            self._hand_on(self._deferred, self._handle_admitted)
        if self._deferred:
            self._schedule_drain()

    def _hand_on(self, held: collections.deque[tuple[str, str, bytes]],
                 to: Callable[[str, str, bytes], None]) -> None:
        """The oldest held message goes on to `to`; it no longer counts as held."""
        thing, topic, payload = held.popleft()
        _count_down(self._held, thing)
        try:
            to(thing, topic, payload)
        except Exception:
            log.exception("dropped a held device message on %r", topic[:200])

    def waiting(self) -> int:
        """Device messages waiting for a worker or held back by the backlog."""
        return (self._workers.waiting() + self._stream_workers.waiting() + len(self._deferred)
                + len(self._fanout_held))

    def _stream_published(self, thing: str, answer: list[Outgoing] | None,
                          error: BaseException | None) -> None:
        _count_down(self._streams_in_worker, thing)
        self._streams_in_workers -= 1
        self._published(thing, answer, error)

    def _published(self, thing: str, answer: list[Outgoing] | None, error: BaseException | None) -> None:
        _count_down(self._in_worker, thing)
        if error is not None:
            log.error("device message handler failed: %s", error)
            return
        try:
            self.publish(answer or [])
        except Exception:
            log.exception("publishing a reply to %s failed", thing)

    def publish(self, messages: Iterable[Outgoing]) -> None:
        """Publish in order. Consecutive messages of one QoS go out as one write: one TLS
        record run and one send instead of one per message. For QoS 0 (a GetStream answer
        is 8 or more data blocks) that was most of the service's cost per block
        (bench/stream_throughput); for QoS 1, a job's notifications (two per thing)
        published one by one through gmqtt were a fifth of notifying 10,000 things."""
        batch: list[Outgoing] = []
        for message in messages:
            if batch and message.qos != batch[0].qos:
                self._write(batch)
                batch = []
            batch.append(message)
        self._write(batch)

    def _write(self, batch: list[Outgoing]) -> None:
        """One run of messages of one QoS."""
        if not batch:
            return
        if batch[0].qos == 0:
            self._write_qos0(batch)
        elif batch[0].qos == 1:
            self._write_qos1(batch)
        else:
            for message in batch:
                self._client.publish(message.topic, message.payload, qos=message.qos)

    def _write_qos1(self, batch: list[Outgoing]) -> None:
        """QoS 1 messages framed here, each with a packet id from gmqtt's allocator and
        kept in its store of unacknowledged messages, as its `publish` does: its PUBACK
        handling frees both, and a reconnect sends them again."""
        connection = getattr(self._client, "_connection", None)
        ids = getattr(getattr(connection, "_protocol", None), "id_generator", None)
        unacknowledged = getattr(self._client, "_persistent_storage", None)
        if connection is None or ids is None or unacknowledged is None or len(batch) == 1:
            for message in batch:
                self._client.publish(message.topic, message.payload, qos=1)
            return
        packets = []
        for message in batch:
            packet_id = ids.next_id()
            packet = qos1_publish_packet(message.topic, packet_id, message.payload)
            unacknowledged.push_message(packet_id, packet)
            packets.append(packet)
        connection.send_package(b"".join(packets))

    def _write_qos0(self, batch: list[Outgoing]) -> None:
        # gmqtt (pinned) has no batch publish; its connection's send_package writes raw
        # bytes. Without a live connection, publish one by one (gmqtt then reports it).
        connection = getattr(self._client, "_connection", None)
        if connection is None or len(batch) == 1:
            for message in batch:
                self._client.publish(message.topic, message.payload, qos=0)
            return
        connection.send_package(qos0_publish_packets(batch))

    def publish_retained(self, topic: str, payload: bytes) -> None:
        """Publish from the event loop, retained at QoS 1 (every later subscriber gets it)."""
        self._client.publish(topic, payload, qos=1, retain=True)

    def publish_retained_threadsafe(self, topic: str, payload: bytes) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.publish_retained, topic, payload)

    def publish_threadsafe(self, messages: list[Outgoing]) -> None:
        """Publish from another thread (e.g. shadow messages of an iot-data call)."""
        if self._loop is not None and messages:
            self._loop.call_soon_threadsafe(self.publish, messages)

    async def notify_pending(self, things: Iterable[str]) -> None:
        """Push `notify` to things whose pending list changed but whose next job did not:
        each looked up on the thing's worker, in order with its own requests."""
        self._submit_pending(things)

    def _submit_pending(self, things: Iterable[str]) -> None:
        for thing in things:
            self._workers.submit(thing, self._pending, thing, b"", self._pending_done)

    def _pending(self, thing: str, _payload: bytes) -> list[Outgoing]:
        return self._service.notify_pending(thing)

    def _pending_done(self, thing: str, answer: list[Outgoing] | None, error: BaseException | None) -> None:
        if error is not None:
            log.error("notifying %s of its pending jobs failed: %s", thing, error)
            return
        self.publish(answer or [])

    def notify_pending_threadsafe(self, things: list[str]) -> None:
        if self._loop is not None and things:
            self._loop.call_soon_threadsafe(self._submit_pending, things)

    async def notify_next(self, things: Iterable[str]) -> None:
        """Push notify-next to things whose next job changed (after a job is created).

        Looked up NOTIFY_BATCH things per database read, in a worker of its own: one
        lookup per thing made notifying 10,000 devices take 17 s. A batch is
        not ordered with each thing's own requests (those run in the thing's worker);
        that ordering would not help anyway, since a device that asks `$next/get` while
        the job is being created gets the job from the answer and from this push alike."""
        assert self._loop is not None
        loop = self._loop
        pending = list(things)
        batches = [pending[i:i + NOTIFY_BATCH] for i in range(0, len(pending), NOTIFY_BATCH)]
        hold = len(batches) > 1  # one batch is one read and one write: nothing to win
        if hold:
            self._fanouts += 1
            if self._fanouts == 1:
                self._hold_until = loop.time() + FANOUT_HOLD_SECONDS
                self._schedule_replay(FANOUT_HOLD_SECONDS)
        # With several batches, each thing's `notify` (its pending list, which FreeRTOS
        # devices do not even subscribe to) is read and sent once every thing has its
        # notify-next, and after the hold: half the messages, their PUBACKs, the broker's
        # routing of them and the building of the lists (a fifth of a batch's time) no
        # longer delay the last notify-next.
        notified: list[str] = []
        try:
            # Each batch goes out as soon as it is read, while the worker reads the next
            # one (its database steps overlap the loop's writes): two batches at most in
            # memory.
            def read(batch: list[str]) -> asyncio.Future[list[Outgoing]]:
                return loop.run_in_executor(self._notify_executor, functools.partial(
                    self._service.notify_next_many, batch, pending=not hold))

            read_so_far = 0
            reading = read(batches[0]) if batches else None
            while reading is not None:
                ready = await reading
                done = batches[read_so_far]
                read_so_far += 1
                reading = read(batches[read_so_far]) if read_so_far < len(batches) else None
                self.publish(ready)
                notified.extend(done)
        finally:
            if hold:
                self._fanouts -= 1
                if self._fanouts == 0:
                    self._schedule_replay()
                if notified:
                    task = loop.create_task(self._publish_pending_lists(notified))
                    self._pending_lists.add(task)  # the loop keeps only a weak reference
                    task.add_done_callback(self._pending_lists.discard)

    async def _publish_pending_lists(self, things: list[str]) -> None:
        """Each thing's `notify` after a large fan-out, NOTIFY_BATCH things per read."""
        assert self._loop is not None
        for i in range(0, len(things), NOTIFY_BATCH):
            batch = things[i:i + NOTIFY_BATCH]
            try:
                lists = await self._loop.run_in_executor(
                    self._notify_executor, self._service.notify_pending_many, batch)
            except Exception:  # the notify-next went out; the lists are informational
                log.exception("could not read the pending lists of %d things", len(batch))
                continue
            self.publish(lists)

    def notify_next_threadsafe(self, things: list[str]) -> None:
        if self._loop is not None and things:
            asyncio.run_coroutine_threadsafe(self.notify_next(things), self._loop)

    async def stop(self) -> None:
        self._connected = False  # the disconnect asked for is not a lost connection
        try:
            await asyncio.wait_for(self._client.disconnect(), 5)
        except (TimeoutError, OSError):
            log.warning("broker did not acknowledge the disconnect")
        for task in list(self._pending_lists):
            task.cancel()
        self._workers.stop()
        self._stream_workers.stop()
        for executor in (self._notify_executor, self._claim_executor):
            executor.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(self._service.close)  # the audit counts still open


def _count_down(counts: dict[str, int], key: str) -> None:
    left = counts.get(key, 1) - 1
    if left:
        counts[key] = left
    else:
        counts.pop(key, None)


def qos0_publish_header(topic: str, payload_length: int) -> bytes:
    """An MQTT 3.1.1 PUBLISH at QoS 0, not retained, up to its payload: fixed header,
    remaining length, topic (no packet id at QoS 0)."""
    name = topic.encode()
    remaining = 2 + len(name) + payload_length
    length = bytearray()
    while True:
        byte, remaining = remaining % 128, remaining // 128
        length.append(byte | (0x80 if remaining else 0))
        if not remaining:
            break
    return b"".join((b"\x30", bytes(length), len(name).to_bytes(2, "big"), name))


def qos0_publish_packet(topic: str, payload: bytes) -> bytes:
    return qos0_publish_header(topic, len(payload)) + payload


def qos1_publish_packet(topic: str, packet_id: int, payload: bytes) -> bytes:
    """An MQTT 3.1.1 PUBLISH at QoS 1, not retained, not a duplicate: the QoS 0 framing
    with the QoS bits set and the packet id after the topic."""
    header = qos0_publish_header(topic, len(payload) + 2)
    return b"".join((b"\x32", header[1:], packet_id.to_bytes(2, "big"), payload))


def qos0_publish_packets(messages: list[Outgoing]) -> bytes:
    """The PUBLISH packets of `messages`, one after the other. A GetStream answer is 8
    blocks to one topic, all but maybe the last of one size: their header is made once
    (made per block, it was 4% of the server's interpreter time at 10,000 devices)."""
    headers: dict[tuple[str, int], bytes] = {}
    parts: list[bytes] = []
    for message in messages:
        key = (message.topic, len(message.payload))
        header = headers.get(key)
        if header is None:
            header = headers[key] = qos0_publish_header(*key)
        parts.append(header)
        parts.append(message.payload)
    return b"".join(parts)
