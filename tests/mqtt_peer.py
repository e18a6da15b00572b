"""A device or service as a bare paho MQTT client over mutual TLS, recording what it
receives in order, for tests that look at the broker's decisions directly."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

WAIT = 10.0

Received = list[tuple[str, bytes]]


class MqttPeer:
    def __init__(self, context: ssl.SSLContext, port: int, client_id: str) -> None:
        self.received: Received = []
        self.gone = threading.Event()
        self._changed = threading.Condition()
        connected = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        self.client.tls_set_context(context)
        self.client.on_connect = lambda _c, _u, _f, reason, _p: None if reason.is_failure else connected.set()
        self.client.on_disconnect = lambda *_a: self.gone.set()
        self.client.on_message = lambda _c, _u, m: self._record(m.topic, bytes(m.payload))
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        assert connected.wait(WAIT), f"{client_id} was not accepted"

    def _record(self, topic: str, payload: bytes) -> None:
        with self._changed:
            self.received.append((topic, payload))
            self._changed.notify_all()

    def subscribe(self, *topics: str) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *_a: done.set()
        self.client.subscribe([(topic, 1) for topic in topics])
        assert done.wait(WAIT)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(WAIT)

    def wait_until(self, condition: Callable[[Received], bool], what: object) -> None:
        """Block until `condition(received)` holds (at most WAIT seconds)."""
        with self._changed:
            assert self._changed.wait_for(lambda: condition(self.received), WAIT), what

    def things_messages(self) -> Received:
        return [(t, p) for t, p in self.received if t.startswith("$aws/")]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
