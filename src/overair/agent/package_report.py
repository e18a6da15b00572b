"""What the agent runs, reported into the thing's reserved `$package` named shadow.

AWS's Software Package Catalog keeps a device's software inventory in the named shadow
`$package`, one entry per package under `state.reported` (AWS IoT developer guide,
"Reserved named shadow"):

    {"state": {"reported": {"<package>": {"version": "<version>", "attributes": {...}}}}}

with attributes a map of strings. The agent reports the image it runs as the package
`firmware` (the server's name for an OTA image's package, server/packages/inventory.py
DEFAULT_PACKAGE), with the slot and the security counter as attributes:

    {"firmware": {"version": "1.2.0", "attributes": {"slot": "b", "securityCounter": "3"}}}

so SearchIndex on `shadow.name.$package.reported.firmware.version` answers which things
run a version, and the metadata timestamp of that field since when.

Bounded and idempotent: at each connection the agent first reads the shadow (`get`) and
reports only when what it runs differs from what the shadow holds, so a reboot into the
same image or a reconnect writes nothing (and "since when" stays); after an activation,
a rollback or a factory restore it writes once. An update is written again only after
`retry_seconds` without an answer, or on the next connection. The answers are hostile
input: decoded with core/wirejson.py's bounds, matched to our clientToken.

This is separate from the health reports (`overair-health`, agent/health.py).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from overair.core import wirejson
from overair.core.errors import PeerInputError
from overair.core.limits import DEFAULT_LIMITS, Limits
from overair.core.shadow import PACKAGE_SHADOW

log = logging.getLogger("overair.agent.package")
PACKAGE = "firmware"
RETRY_SECONDS = 30.0
Message = tuple[str, bytes]


@dataclass(frozen=True, slots=True)
class Running:
    """What the device runs: its image's version, the slot and the security counter."""

    version: str
    slot: str
    security_counter: int

    def to_reported(self) -> dict[str, Any]:
        return {"version": self.version,
                "attributes": {"slot": self.slot, "securityCounter": str(self.security_counter)}}


def parse_entry(entry: Any) -> Running | None:
    """The package's entry of a `$package` shadow, if it has exactly our fields (None:
    absent or anything else, which is reported over)."""
    if not isinstance(entry, dict):
        return None
    version, attributes = entry.get("version"), entry.get("attributes")
    if not isinstance(version, str) or not isinstance(attributes, dict):
        return None
    slot, counter = attributes.get("slot"), attributes.get("securityCounter")
    if not isinstance(slot, str) or not isinstance(counter, str):
        return None
    if not counter.isascii() or not counter.isdigit() or len(counter) > 20:
        return None
    return Running(version, slot, int(counter))


class PackageReporter:
    def __init__(self, thing: str, *, retry_seconds: float = RETRY_SECONDS,
                 limits: Limits = DEFAULT_LIMITS) -> None:
        self._base = f"$aws/things/{thing}/shadow/name/{PACKAGE_SHADOW}"
        self._retry = retry_seconds
        self._limits = limits
        self._serial = 0
        self._synced = False  # whether `_known` holds the shadow's entry (after a get)
        self._known: Running | None = None
        self._get: tuple[str, float] | None = None  # (clientToken, sent at)
        self._update: tuple[Running, str, float] | None = None  # (report, clientToken, sent at)
        self.reports_sent = 0

    @property
    def synced(self) -> bool:
        """Whether the shadow was read on this connection."""
        return self._synced

    def subscriptions(self) -> list[str]:
        return [f"{self._base}/{verb}/{answer}"
                for verb in ("get", "update") for answer in ("accepted", "rejected")]

    def owns(self, topic: str) -> bool:
        return topic in self.subscriptions()

    def connected(self) -> None:
        """A new connection: read the shadow again before reporting (what was sent on the
        last one may or may not have arrived)."""
        self._synced = False
        self._get = None
        self._update = None

    def _token(self) -> str:
        self._serial += 1
        return f"overair-package-{self._serial}"

    def due(self, running: Running | None, now: float) -> list[Message]:
        """The message to publish now, if any."""
        if running is None:
            return []
        if not self._synced:
            if self._get is not None and now - self._get[1] < self._retry:
                return []
            token = self._token()
            self._get = (token, now)
            return [(f"{self._base}/get", json.dumps({"clientToken": token}).encode())]
        if self._known == running:
            return []
        if self._update is not None and self._update[0] == running and now - self._update[2] < self._retry:
            return []
        token = self._token()
        self._update = (running, token, now)
        self.reports_sent += 1
        body = {"state": {"reported": {PACKAGE: running.to_reported()}}, "clientToken": token}
        return [(f"{self._base}/update", json.dumps(body, separators=(",", ":")).encode())]

    def received(self, topic: str, payload: bytes) -> None:
        """An answer of the shadow service (hostile: bounded, and ours only by token)."""
        try:
            document = wirejson.loads(payload, limits=self._limits,
                                      max_bytes=self._limits.max_shadow_request_bytes,
                                      what="$package shadow answer")
        except PeerInputError as exc:
            log.warning("ignoring an unreadable answer on %s: %s", topic, exc.message)
            return
        if not isinstance(document, dict):
            return
        token = document.get("clientToken")
        suffix = topic[len(self._base) + 1:]
        if self._get is not None and token == self._get[0]:
            self._answer_get(suffix, document)
        elif self._update is not None and token == self._update[1]:
            if suffix == "update/accepted":
                self._known, self._update = self._update[0], None
            elif suffix == "update/rejected":
                log.warning("the $package report was refused (%s %s); retried in %.0f s",
                            document.get("code"), str(document.get("message"))[:200], self._retry)

    def _answer_get(self, suffix: str, document: dict[str, Any]) -> None:
        if suffix == "get/accepted":
            state = document.get("state")
            reported = state.get("reported") if isinstance(state, dict) else None
            self._known = parse_entry(reported.get(PACKAGE)) if isinstance(reported, dict) else None
            self._synced, self._get = True, None
        elif suffix == "get/rejected" and document.get("code") == 404:
            self._known = None  # no `$package` shadow yet
            self._synced, self._get = True, None
