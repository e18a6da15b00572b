"""MQTT over mutual TLS with paho-mqtt 2.x: the agent's only network driver.

The device proves its identity with its client certificate (the broker takes the
certificate CN as the user name, so the client id is the thing name) and authenticates
the broker against the fleet root CA with host-name checking; TLS 1.2 is the minimum
(threat L1). MQTT 3.1.1 with a clean session, as FreeRTOS devices use. paho's network
thread reconnects on its own; the wait before each attempt is a capped exponential
backoff with full jitter (agent/machine/backoff.py: uniform up to 1 s doubling to
`max_backoff`, reset by a successful CONNACK), set before paho waits, so that a fleet
losing its broker at once does not come back in lock-step; the runtime re-subscribes on
every connect.

Nothing the broker sends may stop the network thread (issue 12): paho re-raises an
exception from a callback in its loop thread unless told not to, which would end the
thread and leave the agent deaf for good. The callbacks here only hand messages over,
a topic that is not UTF-8 (which a hostile broker can send) is dropped with a log line,
and `suppress_exceptions` keeps the loop alive whatever else may go wrong.
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from overair.agent.config import MqttConfig
from overair.agent.machine import backoff
from overair.agent.transport.base import TransportCallbacks

log = logging.getLogger("overair.agent.mqtt")


def tls_context(config: MqttConfig) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the peer and its host name
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cafile=str(config.ca_file))
    context.load_cert_chain(certfile=str(config.client_cert), keyfile=str(config.client_key),
                            password=config.client_key_password)
    return context


class MqttTransport:
    def __init__(self, config: MqttConfig, client_id: str, callbacks: TransportCallbacks, *,
                 min_backoff: int = 1, max_backoff: int = 60) -> None:
        self._config = config
        self._callbacks = callbacks
        self._client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id,
                                   protocol=MQTTProtocolVersion.MQTTv311, clean_session=True)
        self._client.tls_set_context(tls_context(config))
        self._min_backoff, self._max_backoff = min_backoff, max_backoff
        self._failures = 0  # connections lost or refused in a row
        self._jitter = random.SystemRandom()
        self._next_backoff()
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.suppress_exceptions = True  # a callback's error is logged, the loop goes on
        self._client.enable_logger(log)  # where paho logs such errors
        self._lock = threading.Lock()
        self._unacked: list[mqtt.MQTTMessageInfo] = []

    def _next_backoff(self) -> None:
        """paho waits `min_delay` before its next attempt when the delay was just set: a
        full-jitter draw in whole seconds (paho's unit), at least one."""
        delay = backoff.reconnect_delay(self._failures, self._min_backoff, self._max_backoff,
                                        self._jitter.randint)
        self._client.reconnect_delay_set(min_delay=delay, max_delay=max(delay, self._max_backoff))

    def connect(self) -> None:
        self._client.connect_async(self._config.host, self._config.port, self._config.keepalive_seconds)
        self._client.loop_start()

    def disconnect(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def subscribe(self, topic: str, qos: int) -> None:
        self._client.subscribe(topic, qos)

    def unsubscribe(self, topic: str) -> None:
        self._client.unsubscribe(topic)

    def publish(self, topic: str, payload: bytes, qos: int) -> None:
        info = self._client.publish(topic, payload, qos)
        if qos > 0 and info.rc == mqtt.MQTT_ERR_SUCCESS:
            with self._lock:
                self._unacked = [i for i in self._unacked if not i.is_published()]
                self._unacked.append(info)

    def flush(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._lock:
            pending, self._unacked = self._unacked, []
        for info in pending:
            try:
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            except (RuntimeError, ValueError):
                return False
            if not info.is_published():
                return False
        return True

    # paho callbacks (network thread) ------------------------------------------------------

    def _on_connect(self, _client: mqtt.Client, _userdata: Any, _flags: mqtt.ConnectFlags,
                    reason_code: ReasonCode, _properties: Any) -> None:
        if reason_code.is_failure:
            log.warning("connection refused by %s:%s: %s", self._config.host, self._config.port, reason_code)
            return
        self._failures = 0
        self._next_backoff()
        sock = self._client.socket()
        if isinstance(sock, socket.socket):  # ssl.SSLSocket included
            # A GetStream request must leave at once, not wait for the previous ACK (Nagle).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._callbacks.on_connected()

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: mqtt.DisconnectFlags,
                       reason_code: ReasonCode, _properties: Any) -> None:
        self._failures += 1
        self._next_backoff()
        self._callbacks.on_disconnected(str(reason_code))

    def _on_connect_fail(self, _client: mqtt.Client, _userdata: Any) -> None:
        self._failures += 1
        self._next_backoff()

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            topic = message.topic  # decodes the topic: UnicodeDecodeError when it is not UTF-8
        except UnicodeDecodeError:
            log.warning("dropped a message whose topic is not UTF-8 (%d bytes of payload)",
                        len(message.payload))
            return
        self._callbacks.on_message(topic, bytes(message.payload))
