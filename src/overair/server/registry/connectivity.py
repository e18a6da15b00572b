"""Which things are connected, since when, and why each last left (issue 15), from the
broker's connection events (gateway/presence.py), for GetThingConnectivityData.

A thing is connected while any of its client ids is (`dev-1`, `dev-1#2`, ...). Events
arrive in the broker's order and are applied by one worker thread (server/app.py), so
recording them never holds up the event loop that carries device traffic; a row is
written only when a thing's state changes. The broker is overair's child and dies with
it, so at start every thing recorded as connected is recorded as disconnected
(SERVER_INITIATED_DISCONNECT) at that moment.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select, update

from overair.server.clock import Clock
from overair.server.gateway.presence import PresenceEvent, thing_of_client
from overair.server.storage.db import Database
from overair.server.storage.schema import Thing, ThingConnectivity


class Connectivity:
    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock
        self._live: dict[str, set[str]] = {}  # thing -> its client ids connected now
        # Called with the things whose state was written (dynamic thing groups).
        self.on_change: Callable[[list[str]], None] = lambda _things: None

    def restarted(self) -> None:
        with self._db.session() as s:
            was_connected = list(s.scalars(select(ThingConnectivity.thing_name)
                                           .where(ThingConnectivity.connected.is_(True))))
            s.execute(update(ThingConnectivity).where(ThingConnectivity.connected.is_(True))
                      .values(connected=False, changed_at=self._clock(),
                              disconnect_reason="SERVER_INITIATED_DISCONNECT"))
        self._live.clear()
        if was_connected:
            self.on_change(was_connected)

    def apply(self, events: list[PresenceEvent]) -> None:
        """Called by one thread only, in the broker's order."""
        changes: dict[str, tuple[bool, str]] = {}
        for event in events:
            thing = thing_of_client(event.client_id)
            if thing is None:
                continue
            live = self._live.setdefault(thing, set())
            was = bool(live)
            if event.connected:
                live.add(event.client_id)
            else:
                live.discard(event.client_id)
            if not live:
                del self._live[thing]
            if bool(live) != was or (not live and not event.connected):
                changes[thing] = (bool(live), event.reason)
        if changes:
            self._write(changes)
            self.on_change(list(changes))

    def _write(self, changes: dict[str, tuple[bool, str]]) -> None:
        now = self._clock()
        with self._db.session() as s:
            known = set(s.scalars(select(Thing.name).where(Thing.name.in_(list(changes)))))
            for thing, (connected, reason) in changes.items():
                if thing not in known:
                    continue  # not a thing of this registry (or deleted meanwhile)
                row = s.get(ThingConnectivity, thing)
                if row is None:
                    row = ThingConnectivity(thing_name=thing)
                    s.add(row)
                row.connected, row.changed_at = connected, now
                row.disconnect_reason = "" if connected else reason

    def get(self, thing: str) -> ThingConnectivity | None:
        with self._db.reading() as s:
            return s.get(ThingConnectivity, thing)
