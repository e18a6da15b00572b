"""gateway/presence.py on the lines Mosquitto 2.0.11 writes (recorded running it with the
access plugin), and the thing each client id belongs to."""

from __future__ import annotations

import pytest

from overair.server.gateway.presence import PresenceEvent, parse_line, thing_of_client

SUBJECT = "serialNumber=5993fb53,CN=overair.witness,O=overair"


@pytest.mark.parametrize(("line", "event"), [
    ("1796506382: New client connected from 127.0.0.1:38605 as p-1 (p2, c1, k30, u'CN=p-1,O=overair').",
     PresenceEvent("p-1", True, address="127.0.0.1", username="CN=p-1,O=overair")),
    ("1796506382: New client connected from ::1:38605 as p-2 (p2, c1, k30).",
     PresenceEvent("p-2", True, address="::1")),
    ("1796506382: Client p-1 disconnected.", PresenceEvent("p-1", False, "CLIENT_INITIATED_DISCONNECT")),
    ("1796506384: Client p-1 closed its connection.", PresenceEvent("p-1", False, "CONNECTION_LOST")),
    ("1796506384: Client p-1 already connected, closing old connection.",
     PresenceEvent("p-1", False, "DUPLICATE_CLIENTID")),
    ("1796506385: Client p-1 been disconnected by administrative action.",
     PresenceEvent("p-1", False, "FORBIDDEN_ACCESS")),
    ("1796506385: Client p-1#2 has exceeded timeout, disconnecting.",
     PresenceEvent("p-1#2", False, "MQTT_KEEP_ALIVE_TIMEOUT")),
    ("1796506385: Client p-1 disconnected due to protocol error.",
     PresenceEvent("p-1", False, "CLIENT_ERROR")),
    ("1796506385: Client p-1 disconnected, not authorised.", None),
    ("1796506381: New connection from 127.0.0.1:36786 on port 33653.", None),
    ("1796506385: overair access: client p-1 may not publish to $aws/things/other/x: disconnecting it", None),
])
def test_lines_become_events(line: str, event: PresenceEvent | None) -> None:
    assert parse_line(line) == event


@pytest.mark.parametrize(("client", "thing"), [
    ("dev-1", "dev-1"), ("dev-1#2", "dev-1"), ("dev-1.jobs", "dev-1"), ("a:b_c-d", "a:b_c-d"),
    ("overair.service", None), (SUBJECT, None), ("#x", None), ("x" * 129, None),
])
def test_client_ids_map_to_their_thing(client: str, thing: str | None) -> None:
    assert thing_of_client(client) == thing
