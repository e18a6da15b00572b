"""Disconnect devices whose access was taken away (threat N4: a compromised device is cut
off in seconds, not at its next reconnect).

Mosquitto re-reads its CRL and ACL on SIGHUP but keeps established connections: a
revoked device that is already connected stays connected, and a detached one keeps its
TCP session open. MQTT's session takeover closes it: the broker disconnects an existing
client when another connects with the same client id [MQTT-3.1.4-2], and with
`use_username_as_clientid` the client id is the certificate's CN. So we connect once with
a certificate for that CN, minted from the fleet CA for a few minutes and never written
to a file system, and disconnect at once. The CRL, already reloaded, keeps the device out when it
tries to reconnect; a detached certificate reconnects to an ACL that grants nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import ssl
import threading
from collections.abc import Iterable
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives import serialization
from paho.mqtt.enums import CallbackAPIVersion

from overair.server import pki

log = logging.getLogger("overair.broker")
# Long enough for one connection attempt; the key exists only in this process's memory.
CLOSER_LIFETIME_DAYS = 10 / (24 * 60)


def _load_chain_from_memory(context: ssl.SSLContext, pem: bytes) -> None:
    """`ssl` loads a certificate chain only from a path: give it an anonymous in-memory
    file (Linux memfd) so the key never touches a file system."""
    fd = os.memfd_create("overair-closer", os.MFD_CLOEXEC)
    try:
        os.write(fd, pem)
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


class SessionCloser:
    def __init__(self, fleet_ca: pki.Issued, ca_file: Path, host: str, port: int) -> None:
        self._ca = fleet_ca
        self._ca_file = ca_file
        self._host = host
        self._port = port

    def close_sessions(self, common_names: Iterable[str], timeout: float = 5.0) -> list[str]:
        """Disconnect the clients with these CNs; returns the CNs it could not reach."""
        failed = []
        for cn in sorted(set(common_names)):
            try:
                if not self._take_over(cn, timeout):
                    failed.append(cn)
            except (OSError, ssl.SSLError) as exc:
                log.warning("could not close the session of %s: %s", cn, exc)
                failed.append(cn)
        return failed

    def _context(self, cn: str) -> ssl.SSLContext:
        issued = pki.issue_client_cert(self._ca, cn, dt.datetime.now(dt.UTC), days=CLOSER_LIFETIME_DAYS)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cafile=str(self._ca_file))
        pem = issued.cert.public_bytes(serialization.Encoding.PEM) + issued.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        _load_chain_from_memory(context, pem)
        return context

    def _take_over(self, cn: str, timeout: float) -> bool:
        connected = threading.Event()
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=cn,
                             protocol=mqtt.MQTTv311, clean_session=True)
        client.tls_set_context(self._context(cn))
        client.on_connect = lambda *_args: connected.set()
        client.connect(self._host, self._port, keepalive=10)
        client.loop_start()
        try:
            if not connected.wait(timeout):
                log.warning("session takeover for %s got no CONNACK within %.0f s", cn, timeout)
                return False
            log.info("closed the MQTT session of %s (access withdrawn)", cn)
            return True
        finally:
            client.disconnect()
            client.loop_stop()
