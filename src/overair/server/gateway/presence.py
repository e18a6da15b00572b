"""Device connections and disconnections, recognised in Mosquitto's log: pure, lines in,
events out (issue 15: "which devices are offline and since when").

Mosquitto 2.0.11 logs, with `connection_messages true` (gateway/broker.py), and as
observed running it with the access plugin:

    New client connected from 127.0.0.1:39717 as dev-1 (p2, c1, k30, u'...').
    Client dev-1 disconnected.                                  (DISCONNECT sent)
    Client dev-1 closed its connection.                         (socket closed without one)
    Client dev-1 already connected, closing old connection.     (a takeover; the new one follows)
    Client dev-1 been disconnected by administrative action.    (the access plugin: a PUBLISH
                                                                 outside its topics)
    Client dev-1 has exceeded timeout, disconnecting.           (keep-alive)

Each becomes AWS's disconnect reason (GetThingConnectivityData's `disconnectReason`):
CLIENT_INITIATED_DISCONNECT, CONNECTION_LOST, DUPLICATE_CLIENTID, FORBIDDEN_ACCESS,
MQTT_KEEP_ALIVE_TIMEOUT; any other "Client <id> disconnected..." line is CLIENT_ERROR.
A refused CONNECT ("disconnected, not authorised") never connected, so it is no event.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from overair.server.pki import SERVICE_IDENTITY

_PREFIX = re.compile(r"^\d+: ")
_CONNECTED = re.compile(r"^New client connected from (?P<address>\S+) as (?P<client>\S+) \("
                        r"(?:[^)']*u'(?P<username>[^']*)')?")
_CLIENT = r"^Client (?P<client>\S+) "
_ENDING_TEXTS = (
    (r"disconnected, not authorised\.$", ""),
    (r"disconnected\.$", "CLIENT_INITIATED_DISCONNECT"),
    (r"closed its connection\.$", "CONNECTION_LOST"),
    (r"already connected, closing old connection\.$", "DUPLICATE_CLIENTID"),
    (r"been disconnected by administrative action\.$", "FORBIDDEN_ACCESS"),
    (r"has exceeded timeout, disconnecting\.$", "MQTT_KEEP_ALIVE_TIMEOUT"),
    (r"disconnected", "CLIENT_ERROR"),
)
_ENDINGS = tuple((re.compile(_CLIENT + text), reason) for text, reason in _ENDING_TEXTS)
# Characters of a thing name (core/topics.py THING_NAME_RE); a device's client id is its
# thing's name, or that name followed by a character outside these (docs/compatibility.md).
_THING_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_-")


@dataclass(frozen=True, slots=True)
class PresenceEvent:
    client_id: str
    connected: bool
    reason: str = ""  # for a disconnection: AWS's disconnectReason
    # For a connection: the peer's address (without its port) and the username the
    # broker logged (the certificate's subject with the access plugin), when known.
    address: str = ""
    username: str = ""


def parse_line(line: str) -> PresenceEvent | None:
    message = _PREFIX.sub("", line.strip(), count=1)
    found = _CONNECTED.match(message)
    if found:
        return PresenceEvent(found["client"], True, address=found["address"].rsplit(":", 1)[0],
                             username=found["username"] or "")
    for pattern, reason in _ENDINGS:
        found = pattern.match(message)
        if found:
            return PresenceEvent(found["client"], False, reason) if reason else None
    return None


def thing_of_client(client_id: str) -> str | None:
    """The thing a device's client id names; None for the server's own connections
    (the service's reserved id, the witness's subject)."""
    if client_id == SERVICE_IDENTITY or "=" in client_id:
        return None
    end = 0
    while end < len(client_id) and client_id[end] in _THING_CHARS:
        end += 1
    return client_id[:end] if 1 <= end <= 128 else None
