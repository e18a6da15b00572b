"""The fleet indexing configuration in the database (one row; core/indexing.py's logic)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import func, select

from overair.core import indexing
from overair.core.indexing import IndexingConfig, InvalidConfiguration
from overair.server.api.contract import invalid
from overair.server.clock import Clock
from overair.server.storage.db import Database
from overair.server.storage.schema import FleetIndexing, ThingGroup


class IndexingStore:
    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock
        # Called after a change that alters what is indexed (dynamic groups rebuild).
        self.on_change: Callable[[], None] = lambda: None
        # The server is the one writer of this row: read once, then kept (every query and
        # every membership batch asks for it).
        self._cached: IndexingConfig | None = None
        self._lock = threading.Lock()

    def get(self) -> IndexingConfig:
        with self._lock:
            if self._cached is not None:
                return self._cached
        with self._db.reading() as s:
            row = s.get(FleetIndexing, 1)
            config = indexing.DEFAULT if row is None else indexing.from_stored(row.config)
        with self._lock:
            self._cached = self._cached or config
            return self._cached

    def update(self, thing_spec: Mapping[str, Any] | None, group_spec: Mapping[str, Any] | None) -> None:
        with self._db.session() as s:
            row = s.get(FleetIndexing, 1, with_for_update=True)
            current = indexing.DEFAULT if row is None else indexing.from_stored(row.config)
            try:
                new = current
                if thing_spec is not None:
                    new = indexing.parse_thing(thing_spec, new)
                if group_spec is not None:
                    new = indexing.parse_group(group_spec, new)
            except InvalidConfiguration as exc:
                raise invalid(exc.message) from exc
            dynamic = s.scalar(select(func.count()).select_from(ThingGroup)
                               .where(ThingGroup.query_string.is_not(None))) or 0
            if dynamic and not new.things_indexed:
                # Dynamic groups live on the thing index (AWS: they "require fleet
                # indexing enabled"); turning it off would empty them silently.
                raise invalid(f"{dynamic} dynamic thing group(s) use the thing index; delete them before "
                              "setting thingIndexingMode OFF")
            if row is None:
                row = FleetIndexing(id=1, config={}, updated_at=self._clock())
                s.add(row)
            row.config, row.updated_at = indexing.to_stored(new), self._clock()
            changed = new != current
        with self._lock:
            self._cached = new
        if changed:
            self.on_change()
