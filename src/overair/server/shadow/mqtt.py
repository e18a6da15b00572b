"""The Device Shadow service's MQTT topics (AWS IoT developer guide, "Device Shadow MQTT
topics"): a device publishes to

    $aws/things/<thing>/shadow[/name/<shadow>]/get | update | delete

and the service answers on `<request>/accepted` or `<request>/rejected`, and after an
accepted update also on `update/documents` and (when desired and reported differ)
`update/delta`. The broker's access rules let a device use only its own things' topics
(`$aws/things/<thing>/#`, gateway/broker.py), so the thing in the topic is the
authenticated one; the payload is hostile and bounded (core/shadow.py, core/limits.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from overair.core import shadow as doc
from overair.core.errors import UnavailableError
from overair.core.limits import Limits
from overair.core.shadow import ShadowError
from overair.core.topics import is_thing_name
from overair.server.clock import Clock
from overair.server.shadow.service import CLASSIC, Published, ShadowService

# The service's subscriptions: request topics only, so our own replies (one level
# deeper) never loop back, and none overlaps another subscription of the service.
SUBSCRIPTIONS = tuple(f"$aws/things/+/shadow/{verb}" for verb in ("get", "update", "delete")) + tuple(
    f"$aws/things/+/shadow/name/+/{verb}" for verb in ("get", "update", "delete"))


class ShadowVerb(Enum):
    GET = "get"
    UPDATE = "update"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class ShadowTopic:
    thing: str
    name: str  # CLASSIC ("") for the classic shadow
    verb: ShadowVerb


def prefix(thing: str, name: str) -> str:
    base = f"$aws/things/{thing}/shadow"
    return base if name == CLASSIC else f"{base}/name/{name}"


def parse_topic(topic: str) -> ShadowTopic | None:
    """A shadow request topic, or None (replies and anything else)."""
    parts = topic.split("/")
    if len(parts) < 5 or parts[:2] != ["$aws", "things"] or parts[3] != "shadow":
        return None
    if not is_thing_name(parts[2]):
        return None
    if len(parts) == 5:
        name, verb = CLASSIC, parts[4]
    elif len(parts) == 7 and parts[4] == "name" and doc.is_shadow_name(parts[5]):
        name, verb = parts[5], parts[6]
    else:
        return None
    try:
        return ShadowTopic(parts[2], name, ShadowVerb(verb))
    except ValueError:
        return None


def messages(thing: str, name: str, published: list[Published]) -> list[tuple[str, bytes]]:
    base = prefix(thing, name)
    return [(f"{base}/{p.suffix}", doc.encode(p.body)) for p in published]


class ShadowMqtt:
    def __init__(self, shadows: ShadowService, limits: Limits, clock: Clock) -> None:
        self._shadows = shadows
        self._limits = limits
        self._clock = clock

    def rejected(self, parsed: ShadowTopic, error: ShadowError, token: str | None) -> list[tuple[str, bytes]]:
        body = doc.error_message(error, int(self._clock()), token)
        return [(f"{prefix(parsed.thing, parsed.name)}/{parsed.verb.value}/rejected", doc.encode(body))]

    def handle(self, parsed: ShadowTopic, payload: bytes) -> list[tuple[str, bytes]]:
        token: str | None = None
        try:
            request = doc.parse_request(payload, self._limits)
            token = doc.token_if_any(request, self._limits)
            if parsed.verb is ShadowVerb.GET:
                body = self._shadows.get(parsed.thing, parsed.name, doc.client_token(request, self._limits))
                return messages(parsed.thing, parsed.name, [Published("get/accepted", body)])
            if parsed.verb is ShadowVerb.DELETE:
                body = self._shadows.delete(parsed.thing, parsed.name, request)
                return messages(parsed.thing, parsed.name, [Published("delete/accepted", body)])
            published = self._shadows.update(parsed.thing, parsed.name, request)
            return messages(parsed.thing, parsed.name, published)
        except ShadowError as exc:
            return self.rejected(parsed, exc, token)
        except UnavailableError:
            return self.rejected(parsed, ShadowError(500, "Internal service failure"), token)
