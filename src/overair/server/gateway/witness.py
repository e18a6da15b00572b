"""Proof that the broker enforces the ACL overair wrote last (finding: an access change
must not be reported done before the broker applies it).

Every time the server writes the broker's ACL it names a fresh random *generation*, and
the ACL grants the server's witness identity (a fleet certificate minted in memory at
start, CN `overair.witness`: '.' is in no thing name) exactly one generation topic. The
witness, connected for the server's lifetime and subscribed to its own topics, then
publishes, in order and at QoS 1: a message to a generation topic no ACL ever grants,
one to the current generation's topic, and one to its always-granted echo topic.
Mosquitto handles one client's packets in order and delivers them to a subscriber in
order, and re-checks the ACL at each publish and delivery, so when the echo comes back:

- the current generation's message came back too  -> the broker enforces that ACL;
- it did not                                       -> not yet (the reload is pending);
- the never-granted message came back              -> the broker enforces no ACL at all.

No sleeps decide anything: each attempt is answered by the echo. This works the same
for the Mosquitto that `overair serve` runs and for an external broker that reads
overair's ACL file (docs/security.md, "External broker").
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from overair.core.errors import UnavailableError
from overair.server import pki
from overair.server.gateway.access_change import CONTROL_TOPIC, RESPONSE_TOPIC, parse_answer
from overair.server.gateway.broker import AclRule
from overair.server.gateway.ephemeral import client_context

log = logging.getLogger("overair.broker")
WITNESS_CN = "overair.witness"
# The witness's certificate lives as long as the server process (in memory only).
WITNESS_LIFETIME_DAYS = 825
NEVER_GRANTED = "never-granted"
READY = "ready"  # the echo that tells the witness it is connected and subscribed


class AclWitness:
    def __init__(self, fleet_ca: pki.Issued, ca_file: Path, host: str, port: int) -> None:
        issued = pki.issue_client_cert(fleet_ca, WITNESS_CN, dt.datetime.now(dt.UTC),
                                       days=WITNESS_LIFETIME_DAYS)
        identity = pki.broker_username(issued.cert.subject)
        assert identity is not None
        self.identity = identity
        # This server run's namespace: several runs (or servers) never read each other's.
        self.base = f"overair/broker/{secrets.token_hex(8)}"
        self._host, self._port = host, port
        self._received: dict[str, set[str]] = {}  # attempt nonce -> topics it came back on
        self._changed = threading.Condition()
        self._connected = False
        self._answers: dict[int, str | None] = {}  # access change seq -> None (applied) or why refused
        # MQTT 5: a refused PUBLISH (the never-granted one) is answered PUBACK 0x87, where
        # the access plugin closes an MQTT 3.1.1 connection, as AWS does.
        self._client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=identity,
                                   protocol=mqtt.MQTTv5)
        self._client.tls_set_context(client_context(issued, ca_file))
        self._client.reconnect_delay_set(min_delay=1, max_delay=2)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    def generation_topic(self, generation: str) -> str:
        return f"{self.base}/generation/{generation}"

    @property
    def echo_topic(self) -> str:
        return f"{self.base}/echo"

    def rules(self, generation: str) -> list[AclRule]:
        """What the ACL of `generation` grants the witness."""
        # It may read all its topics (with the access plugin a SUBSCRIBE beyond them is
        # refused); what proves a generation is being allowed to *publish* into it.
        return [AclRule("read", f"{self.base}/#"),
                AclRule("readwrite", self.generation_topic(generation)),
                AclRule("readwrite", self.echo_topic),
                # The access plugin's control topic (gateway/access_change.py): the witness
                # is the one client that may send it changes, and read its answers.
                AclRule("write", CONTROL_TOPIC), AclRule("read", RESPONSE_TOPIC)]

    # Connection ---------------------------------------------------------------------
    def start(self) -> None:
        self._client.connect_async(self._host, self._port, keepalive=30)
        self._client.loop_start()

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    @property
    def connected(self) -> bool:
        return self._connected

    def _on_connect(self, client: mqtt.Client, _u: object, _f: object, reason: ReasonCode,
                    _p: object) -> None:
        if reason.is_failure:
            log.warning("the broker refused the ACL witness: %s", reason)
            return
        sock = client.socket()
        if isinstance(sock, socket.socket):
            # Each check and access change is a small publish right after a small PUBACK:
            # with Nagle's algorithm it waits for the broker's delayed ACK (~40 ms).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.subscribe([(f"{self.base}/#", 1), (RESPONSE_TOPIC, 1)])
        # Then an echo of its own marks it connected (broker_health reads that), without
        # waiting for the next access change to ask.
        client.publish(self.echo_topic, READY.encode(), qos=1)

    def _on_disconnect(self, *_args: object) -> None:
        with self._changed:
            self._connected = False
            self._changed.notify_all()

    def _on_message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        nonce = bytes(message.payload).decode(errors="replace")
        if message.topic == RESPONSE_TOPIC:
            answer = parse_answer(nonce)
            if answer is not None:
                with self._changed:
                    self._answers[answer[0]] = answer[1]
                    self._changed.notify_all()
            return
        with self._changed:
            if message.topic == self.echo_topic and nonce == READY:
                self._connected = True
            elif nonce in self._received:
                self._received[nonce].add(message.topic)
            self._changed.notify_all()

    def _wait(self, predicate: Callable[[], bool], deadline: float) -> bool:
        with self._changed:
            return self._changed.wait_for(predicate, max(0.0, deadline - time.monotonic()))

    def _ready(self, deadline: float) -> None:
        """Connected and subscribed: an echo of its own has come back since it connected."""
        reached = False
        while not self._connected:
            if self._client.is_connected():
                reached = True
                self._client.publish(self.echo_topic, READY.encode(), qos=1)
            if self._wait(lambda: self._connected, min(deadline, time.monotonic() + 0.2)):
                return
            if time.monotonic() >= deadline:
                if reached:
                    raise UnavailableError("the broker accepts the ACL witness but never delivers it the "
                                           "topics overair's ACL grants its certificate subject")
                raise UnavailableError(f"the ACL witness cannot reach the broker at "
                                       f"{self._host}:{self._port}")

    # The check ----------------------------------------------------------------------
    def in_force(self, generation: str, timeout: float = 5.0) -> bool:
        """True if the broker now enforces the ACL of `generation`, False if not yet.
        UnavailableError if it does not answer, or enforces no ACL at all."""
        deadline = time.monotonic() + timeout
        self._ready(deadline)
        nonce = secrets.token_hex(8)
        with self._changed:
            self._received[nonce] = set()
        try:
            for topic in (self.generation_topic(NEVER_GRANTED), self.generation_topic(generation),
                          self.echo_topic):
                self._client.publish(topic, nonce.encode(), qos=1)
            if not self._wait(lambda: self.echo_topic in self._received[nonce], deadline):
                raise UnavailableError("the broker did not deliver the ACL witness's echo in time")
            with self._changed:
                came_back = self._received[nonce]
        finally:
            with self._changed:
                self._received.pop(nonce, None)
        if self.generation_topic(NEVER_GRANTED) in came_back:
            raise UnavailableError("the broker delivered a message its ACL forbids: it does not enforce "
                                   "overair's ACL (see docs/security.md, External broker)")
        return self.generation_topic(generation) in came_back

    # Access changes through the plugin's control topic -------------------------------
    def change(self, seq: int, payload: bytes, timeout: float = 5.0) -> None:
        """Send an access change to the access plugin and return once it answers that it
        applied it: its answer is the broker's own acknowledgement, sent after the rules
        changed. UnavailableError if it refuses or does not answer in time."""
        deadline = time.monotonic() + timeout
        self._ready(deadline)
        with self._changed:
            self._answers.pop(seq, None)
        self._client.publish(CONTROL_TOPIC, payload, qos=1)
        try:
            if not self._wait(lambda: seq in self._answers, deadline):
                raise UnavailableError("the broker's access plugin did not answer an access change in time")
            with self._changed:
                refused = self._answers[seq]
        finally:
            with self._changed:
                self._answers.pop(seq, None)
        if refused is not None:
            raise UnavailableError(f"the broker's access plugin refused an access change: {refused}")
