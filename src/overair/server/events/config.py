"""UpdateEventConfigurations' row in the database (core/events.py's logic), read once
and then kept: the recorder asks for it on every change it sees."""

from __future__ import annotations

import threading

from overair.core import events
from overair.core.events import EventConfig, InvalidEventConfiguration
from overair.server.api.contract import invalid
from overair.server.clock import Clock
from overair.server.storage.db import Database
from overair.server.storage.schema import EventConfiguration


class EventConfigStore:
    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock
        self._cached: EventConfig | None = None
        self._lock = threading.Lock()

    def get(self) -> EventConfig:
        with self._lock:
            if self._cached is not None:
                return self._cached
        with self._db.reading() as s:
            row = s.get(EventConfiguration, 1)
            config = events.DEFAULT if row is None else events.from_stored(row.enabled)
        with self._lock:
            self._cached = self._cached or config
            return self._cached

    def enabled_types(self) -> frozenset[str]:
        return self.get().enabled

    def dates(self) -> tuple[float | None, float | None]:
        """(creationDate, lastModifiedDate): when the configuration was first and last
        changed; none before the first UpdateEventConfigurations."""
        with self._db.reading() as s:
            row = s.get(EventConfiguration, 1)
            return (None, None) if row is None else (row.created_at, row.updated_at)

    def update(self, spec: object) -> None:
        now = self._clock()
        with self._db.session() as s:
            row = s.get(EventConfiguration, 1, with_for_update=True)
            current = events.DEFAULT if row is None else events.from_stored(row.enabled)
            try:
                new = events.parse_update(spec, current)
            except InvalidEventConfiguration as exc:
                raise invalid(exc.message) from exc
            if row is None:
                row = EventConfiguration(id=1, enabled=[], created_at=now, updated_at=now)
                s.add(row)
            row.enabled, row.updated_at = events.to_stored(new), now
        with self._lock:
            self._cached = new
