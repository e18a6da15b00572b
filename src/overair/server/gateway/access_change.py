"""One device's access change as the access plugin takes it on its control topic
(plugin/overair_access.c): `seq <n>`, then for each broker identity either its whole
rules (`user`, its `topic` grants and `thing` lines, exactly as in the access file) or
`drop` (it may use nothing). Pure: the same checks as the access file (broker.py), so no
identity or thing name can inject a line."""

from __future__ import annotations

from collections.abc import Mapping

from overair.core.errors import MisuseError
from overair.core.topics import THING_NAME_RE
from overair.server.gateway.broker import ACL_IDENTITY

CONTROL_TOPIC = "$CONTROL/overair-access/v1"
RESPONSE_TOPIC = "$CONTROL/overair-access/v1/response"


def render_change(seq: int, things: Mapping[str, frozenset[str]]) -> bytes:
    """`things`: broker identity -> the things it may use now (empty: drop it)."""
    lines = [f"seq {seq}"]
    for identity, granted in sorted(things.items()):
        if not ACL_IDENTITY.fullmatch(identity):
            raise MisuseError(f"the broker identity {identity!r} cannot be written to the access plugin")
        bad = sorted(t for t in granted if not THING_NAME_RE.fullmatch(t))
        if bad:
            raise MisuseError(f"the things {bad!r} of {identity!r} are not valid thing names")
        if not granted:
            lines.append(f"drop {identity}")
            continue
        lines.append(f"user {identity}")
        lines.extend(f"topic readwrite $aws/things/{thing}/#" for thing in sorted(granted))
        lines.extend(f"thing {thing}" for thing in sorted(granted))
    return ("\n".join(lines) + "\n").encode()


def parse_answer(text: str) -> tuple[int, str | None] | None:
    """`applied <n>` -> (n, None); `refused <n>: why` -> (n, why); anything else None."""
    verb, _, rest = text.partition(" ")
    number, _, why = rest.partition(":")
    if verb not in ("applied", "refused") or not number.isdigit():
        return None
    return int(number), (why.strip() or "refused") if verb == "refused" else None
