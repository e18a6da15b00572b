"""Disconnect clients whose access was taken away entirely (threat N4: a compromised
device is cut off in seconds, not at its next reconnect), on a broker that runs without
overair's access plugin (an external one, or where the plugin could not be built; with
it, the reload's re-authentication closes those sessions, plugin/overair_access.c).

Mosquitto re-reads its CRL and ACL on SIGHUP and re-checks the ACL on every message, so
a client that loses some of its things simply stops reaching them; but it keeps
established TLS sessions, so a revoked certificate stays connected. MQTT's session
takeover closes it: the broker disconnects an existing client when another connects
with the same client id [MQTT-3.1.4-2], and with `use_subject_as_username` plus
`use_username_as_clientid` the client id is the certificate's subject. So we connect once
with a certificate for that exact subject, minted from the fleet CA for a few minutes
and never written to a file system (pki.issue_session_closer_cert), and disconnect at
once. The CRL, already reloaded, keeps a revoked device out when it tries to reconnect;
a certificate detached from its last thing reconnects to an ACL that grants nothing.
Only the server can mint such a certificate: a device presenting its own certificate
has its own subject, so it can never take another device's session over.
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
import threading
from collections.abc import Mapping
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography import x509
from paho.mqtt.enums import CallbackAPIVersion

from overair.server import pki
from overair.server.gateway.ephemeral import client_context

log = logging.getLogger("overair.broker")
# Long enough for one connection attempt; the key exists only in this process's memory.
CLOSER_LIFETIME_DAYS = 10 / (24 * 60)


class SessionCloser:
    def __init__(self, fleet_ca: pki.Issued, ca_file: Path, host: str, port: int) -> None:
        self._ca = fleet_ca
        self._ca_file = ca_file
        self._host = host
        self._port = port

    def close_sessions(self, subjects: Mapping[str, x509.Name], timeout: float = 5.0) -> list[str]:
        """Disconnect the clients with these broker identities (identity -> certificate
        subject); returns the identities it could not reach."""
        failed = []
        for identity, subject in sorted(subjects.items()):
            try:
                if not self._take_over(identity, subject, timeout):
                    failed.append(identity)
            except (OSError, ssl.SSLError) as exc:
                log.warning("could not close the session of %s: %s", identity, exc)
                failed.append(identity)
        return failed

    def _take_over(self, identity: str, subject: x509.Name, timeout: float) -> bool:
        issued = pki.issue_session_closer_cert(self._ca, subject, dt.datetime.now(dt.UTC),
                                               days=CLOSER_LIFETIME_DAYS)
        connected = threading.Event()
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=identity,
                             protocol=mqtt.MQTTv311, clean_session=True)
        client.tls_set_context(client_context(issued, self._ca_file))
        client.on_connect = lambda _c, _u, _f, reason, _p: None if reason.is_failure else connected.set()
        client.connect(self._host, self._port, keepalive=10)
        client.loop_start()
        try:
            if not connected.wait(timeout):
                log.warning("session takeover for %s got no CONNACK within %.0f s", identity, timeout)
                return False
            log.info("closed the MQTT session of %s (access withdrawn)", identity)
            return True
        finally:
            client.disconnect()
            client.loop_stop()
