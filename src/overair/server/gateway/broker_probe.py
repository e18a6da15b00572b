"""Before overair uses an external broker, prove it enforces what device security rests
on (threats N4 and L1; finding: `serve --broker` silently dropped device isolation and
revocation while reporting the broker up).

overair cannot read an external broker's configuration, so it tests the behaviour, with
certificates minted in memory from the fleet CA for this check only:

1. the broker applies overair's ACL: the ACL witness (gateway/witness.py) sees the
   generation overair just wrote in force, and a topic no ACL grants refused;
2. a certificate is known by its whole subject: a probe certificate granted one topic by
   its subject can use it, while a *twin* with the same CN and another subject can
   neither read it nor publish into it (what a device minted with another thing's name
   would try);
3. the client id is the subject: a second connection with the probe's subject but a
   different client id takes the probe's session over, which is how overair cuts off a
   revoked device (gateway/session_close.py);
4. the broker uses overair's CRL: a certificate whose serial is in it is refused.

Every check is decided by what arrives before an echo the probe itself sends (the broker
delivers one client's messages in order), never by how long nothing arrived, except
the revoked certificate's refusal, which is waited for. Any failure refuses the start
with a message naming the setting the broker lacks (docs/security.md, External broker).
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import ssl
import threading
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from overair.core.errors import MisuseError, OverairError
from overair.server import pki
from overair.server.gateway.broker import AclRule
from overair.server.gateway.ephemeral import client_context

log = logging.getLogger("overair.broker")
PROBE_CN = "overair.probe"
PROBE_LIFETIME_DAYS = 1 / 24
WAIT_SECONDS = 10.0
REQUIREMENTS = ("the broker must authenticate clients with overair's fleet CA (cafile, require_certificate "
                "true), name them by certificate subject (use_subject_as_username true, "
                "use_username_as_clientid true), enforce overair's ACL and CRL (acl_file, crlfile) and "
                "reload them when overair runs broker_reload_command; see docs/security.md, External broker")


class BrokerNotEnforcing(MisuseError):
    code = "BrokerNotEnforcing"


class _Client:
    """One probe connection and what it received, in order."""

    def __init__(self, issued: pki.Issued, ca_file: Path, host: str, port: int) -> None:
        self.received: list[tuple[str, bytes]] = []
        self.connack = threading.Event()
        self.accepted = False
        self.gone = threading.Event()
        self.acked = threading.Condition()
        self._client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                   client_id=f"overair-probe-{secrets.token_hex(6)}",
                                   protocol=mqtt.MQTTv311, clean_session=True)
        self._client.tls_set_context(client_context(issued, ca_file))
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = lambda *_a: self.gone.set()
        self._client.on_message = lambda _c, _u, m: self._on_message(m.topic, bytes(m.payload))
        self._host, self._port = host, port

    def _on_connect(self, _c: object, _u: object, _f: object, reason: ReasonCode, _p: object) -> None:
        self.accepted = not reason.is_failure
        self.connack.set()

    def _on_message(self, topic: str, payload: bytes) -> None:
        with self.acked:
            self.received.append((topic, payload))
            self.acked.notify_all()

    def connect(self) -> bool:
        """True once the broker accepts it; False if it refuses or drops it."""
        self._client.reconnect_delay_set(min_delay=60, max_delay=60)  # one attempt is enough
        try:
            self._client.connect(self._host, self._port, keepalive=30)
        except (OSError, ssl.SSLError):
            return False
        self._client.loop_start()
        for _ in range(int(WAIT_SECONDS * 20)):
            if self.connack.wait(0.05) or self.gone.is_set():
                break
        return self.accepted and not self.gone.is_set()

    def subscribe(self, topic: str) -> None:
        done = threading.Event()
        self._client.on_subscribe = lambda *_a: done.set()
        self._client.subscribe(topic, qos=1)
        if not done.wait(WAIT_SECONDS):
            raise BrokerNotEnforcing("the external broker did not acknowledge a subscription")

    def publish(self, topic: str, payload: bytes) -> None:
        info = self._client.publish(topic, payload, qos=1)
        info.wait_for_publish(WAIT_SECONDS)
        if not info.is_published():
            raise BrokerNotEnforcing("the external broker did not acknowledge a publish")

    def wait_for(self, topic: str, payload: bytes) -> bool:
        with self.acked:
            return self.acked.wait_for(lambda: (topic, payload) in self.received, WAIT_SECONDS)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class ExternalBrokerProbe:
    def __init__(self, fleet_ca: pki.Issued, ca_file: Path, host: str, port: int, base_topic: str) -> None:
        now = dt.datetime.now(dt.UTC)
        self._ca, self._ca_file, self._host, self._port = fleet_ca, ca_file, host, port
        self.device = pki.issue_client_cert(fleet_ca, PROBE_CN, now, days=PROBE_LIFETIME_DAYS)
        self.twin = pki.issue_client_cert(fleet_ca, PROBE_CN, now, days=PROBE_LIFETIME_DAYS)
        self.revoked = pki.issue_client_cert(fleet_ca, PROBE_CN, now, days=PROBE_LIFETIME_DAYS)
        self.probe_topics = f"{base_topic}/probe/#"
        self.own_topic = f"{base_topic}/probe/own"
        self.echo_topic = f"{base_topic}/probe/echo"

    def _identity(self, issued: pki.Issued) -> str:
        identity = pki.broker_username(issued.cert.subject)
        assert identity is not None
        return identity

    def rules(self) -> dict[str, list[AclRule]]:
        """The ACL lines the probe needs: the probe device may use its own topic and the
        echo; its twin (same CN) only read the echo."""
        return {self._identity(self.device): [AclRule("readwrite", self.own_topic),
                                              AclRule("readwrite", self.echo_topic)],
                self._identity(self.twin): [AclRule("read", self.echo_topic)]}

    def revoked_serials(self) -> list[int]:
        return [self.revoked.cert.serial_number]

    def run(self, confirm_acl: Callable[[], None]) -> None:
        """Raise BrokerNotEnforcing unless the broker passes every check above.
        `confirm_acl` reloads the broker and confirms overair's current ACL is in force."""
        where = f"the external broker at {self._host}:{self._port}"
        try:
            confirm_acl()
        except OverairError as exc:
            raise BrokerNotEnforcing(f"{where} does not enforce overair's ACL: {exc.message}; "
                                     f"{REQUIREMENTS}") from exc
        self._isolation(where)
        self._revocation(where)
        log.info("%s enforces overair's ACL, certificate identities and CRL", where)

    def _client(self, issued: pki.Issued) -> _Client:
        return _Client(issued, self._ca_file, self._host, self._port)

    def _isolation(self, where: str) -> None:
        device, twin = self._client(self.device), self._client(self.twin)
        try:
            if not device.connect() or not twin.connect():
                raise BrokerNotEnforcing(f"{where} refused a valid fleet certificate; {REQUIREMENTS}")
            for client in (device, twin):
                client.subscribe(self.probe_topics)
            nonce = secrets.token_hex(8).encode()
            twin.publish(self.own_topic, b"twin-" + nonce)
            device.publish(self.own_topic, b"device-" + nonce)
            device.publish(self.echo_topic, nonce)
            if not (device.wait_for(self.echo_topic, nonce) and twin.wait_for(self.echo_topic, nonce)):
                raise BrokerNotEnforcing(f"{where} did not deliver to a certificate the topics overair's ACL "
                                         f"gives its subject; {REQUIREMENTS}")
            if (self.own_topic, b"device-" + nonce) not in device.received:
                raise BrokerNotEnforcing(f"{where} does not grant a certificate what overair's ACL gives its "
                                         f"subject; {REQUIREMENTS}")
            if (self.own_topic, b"twin-" + nonce) in device.received:
                raise BrokerNotEnforcing(f"{where} let a certificate with another's CN publish into that "
                                         f"certificate's topics; {REQUIREMENTS}")
            if any(topic != self.echo_topic for topic, _ in twin.received):
                raise BrokerNotEnforcing(f"{where} let a certificate with another's CN read that "
                                         f"certificate's topics; {REQUIREMENTS}")
            self._takeover(where, device)
        finally:
            device.close()
            twin.close()

    def _takeover(self, where: str, device: _Client) -> None:
        closer_cert = pki.issue_session_closer_cert(self._ca, self.device.cert.subject,
                                                    dt.datetime.now(dt.UTC), days=PROBE_LIFETIME_DAYS)
        closer = self._client(closer_cert)
        try:
            closer.connect()
            if not device.gone.wait(WAIT_SECONDS):
                raise BrokerNotEnforcing(f"{where} does not make the certificate subject the client id, so "
                                         f"overair cannot disconnect a revoked device; {REQUIREMENTS}")
        finally:
            closer.close()

    def _revocation(self, where: str) -> None:
        revoked = self._client(self.revoked)
        try:
            if revoked.connect():
                raise BrokerNotEnforcing(f"{where} accepted a certificate overair's CRL revokes; "
                                         f"{REQUIREMENTS}")
        finally:
            revoked.close()
