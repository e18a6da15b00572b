"""Refused device connections, recognised in Mosquitto's log. Pure: lines in, events out.

What Mosquitto 2.0 logs at the log types overair configures (error, warning, notice,
information; observed by running 2.0.11), for a connection it refuses:

- the TLS handshake fails as soon as the connection is accepted (a plaintext client,
  garbage, often a missing or untrusted certificate):
  ``Client connection from 127.0.0.1 failed: error:0A0000C7:SSL routines::peer did not
  return a certificate.``
- the handshake fails later, on the first read (an untrusted, revoked or expired
  certificate): ``New connection from 127.0.0.1:36029 on port 8883.`` then
  ``OpenSSL Error[0]: error:0A000086:SSL routines::certificate verify failed`` (more
  ``Error[n]`` lines may follow) then ``Client <unknown> disconnected: Protocol error.``
  The address is only on the first line. With one handshake in flight it is that
  connection's; with several at once from one host, only the host is certain; from
  several hosts the source stays empty rather than possibly wrong.
- the CONNECT is refused: ``Client <id> disconnected, not authorised.``

Mosquitto cannot tell an untrusted from a revoked or expired certificate here (OpenSSL
says "certificate verify failed" for all three), and no client id is known before the
handshake, so those events name the client "unknown". ACL denials (a device publishing
or subscribing outside its topics) are only logged at log_type debug, which would also
log every packet; they are not seen here.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

UNKNOWN_CLIENT = "unknown"
# Handshakes left without an outcome line are forgotten after this many seconds (by
# Mosquitto's own timestamps), so stale ones do not make every later event ambiguous.
PENDING_SECONDS = 30
MAX_PENDING = 256

_LINE = re.compile(r"^(?:(?P<at>\d+): )?(?P<message>.*)$")
_NEW_CONNECTION = re.compile(r"^New connection from (?P<source>.+) on port \d+\.$")
_CONNECTED = re.compile(r"^New client connected from (?P<source>.+) as (?P<client>\S+) \(")
_SSL_ERROR = re.compile(r"^OpenSSL Error\[\d+\]: (?P<reason>.*)$")
_ACCEPT_FAILED = re.compile(r"^Client connection from (?P<source>.+) failed: (?P<reason>.*?)\.?$")
_NOT_AUTHORISED = re.compile(r"^Client (?P<client>\S+) disconnected, not authorised\.$")
_ENDED = re.compile(r"^Client (?P<client>\S+) (?:disconnected|closed its connection)")
_DROPPING = re.compile(r"^(?:\d+: )?Outgoing messages are being dropped for client (?P<client>\S+)\.$")


def dropping_client(line: str) -> str | None:
    """The client Mosquitto starts dropping messages to, from its notice line.

    Mosquitto 2.0 drops a QoS 0 message to a connected client once `max_queued_messages`
    packets wait to be written to it (and a QoS 1 one once its queue is full): source,
    `db__message_insert` and `db__ready_for_flight` in src/database.c, v2.0.11. It logs
    this once per episode. For overair's own service connection (subscribed at QoS 0)
    that means device requests, status updates included, lost without a trace."""
    found = _DROPPING.match(line.rstrip("\r\n"))
    return found["client"] if found else None


@dataclass(frozen=True, slots=True)
class RefusedConnection:
    client_id: str  # UNKNOWN_CLIENT before the handshake completes
    source: str  # "host" or "host:port"; "" when the log does not say
    reason: str  # Mosquitto's / OpenSSL's words


def _host(source: str) -> str:
    return source.rpartition(":")[0] or source


def _client(name: str) -> str:
    return UNKNOWN_CLIENT if name == "<unknown>" else name


class BrokerLogParser:
    """Feed it Mosquitto's log lines in order; it returns the refusals they complete."""

    def __init__(self) -> None:
        self._pending: OrderedDict[str, int] = OrderedDict()  # source -> when it connected
        self._ssl_errors: list[str] = []
        self._ports_uncertain = False
        self._now = 0

    def feed(self, line: str) -> list[RefusedConnection]:
        match = _LINE.match(line.rstrip("\r\n"))
        if match is None:  # pragma: no cover - the pattern matches any line
            return []
        if match["at"]:
            self._now = int(match["at"])
        message = match["message"]
        ssl_error = _SSL_ERROR.match(message)
        if ssl_error:
            self._ssl_errors.append(ssl_error["reason"])
            return []
        events: list[RefusedConnection] = []
        ended = _ENDED.match(message)
        if self._ssl_errors:
            # The line after the OpenSSL errors is normally their connection's end.
            events.append(self._handshake_failed(_client(ended["client"]) if ended else UNKNOWN_CLIENT))
            if ended:
                return events
        events.extend(self._other(message, ended))
        return events

    def _handshake_failed(self, client: str) -> RefusedConnection:
        reason = "; ".join(self._ssl_errors)
        self._ssl_errors = []
        return RefusedConnection(client, self._take_only_pending(), reason)

    def _take_only_pending(self) -> str:
        """The address of the handshake that just ended, as far as the log tells."""
        self._expire()
        if not self._pending:
            return ""
        hosts = {_host(source) for source in self._pending}
        if len(hosts) > 1:
            return ""
        # All from one host: some connection of it ended; dropping the oldest keeps the
        # count right, but from now on which port is which is a guess.
        source = self._pending.popitem(last=False)[0]
        exact = not self._pending and not self._ports_uncertain
        self._ports_uncertain = bool(self._pending)
        return source if exact else _host(source)

    def _other(self, message: str, ended: re.Match[str] | None) -> list[RefusedConnection]:
        if found := _NEW_CONNECTION.match(message):
            self._pending[found["source"]] = self._now
            self._pending.move_to_end(found["source"])
            while len(self._pending) > MAX_PENDING:
                self._pending.popitem(last=False)
            return []
        if found := _CONNECTED.match(message):
            self._pending.pop(found["source"], None)
            self._ports_uncertain = self._ports_uncertain and bool(self._pending)
            return []
        if found := _ACCEPT_FAILED.match(message):
            return [RefusedConnection(UNKNOWN_CLIENT, found["source"], found["reason"])]
        if found := _NOT_AUTHORISED.match(message):
            return [RefusedConnection(_client(found["client"]), self._take_only_pending(), "not authorised")]
        if ended and ended["client"] == "<unknown>" and len(self._pending) == 1:
            self._pending.clear()  # the one handshake in flight ended (a probe, a timeout)
            self._ports_uncertain = False
        return []

    def _expire(self) -> None:
        while self._pending:
            source, since = next(iter(self._pending.items()))
            if self._now - since <= PENDING_SECONDS:
                break
            del self._pending[source]
        self._ports_uncertain = self._ports_uncertain and bool(self._pending)

    def close(self) -> list[RefusedConnection]:
        """At the end of the log: a failure whose outcome line never came."""
        return [self._handshake_failed(UNKNOWN_CLIENT)] if self._ssl_errors else []
