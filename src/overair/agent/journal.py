"""Where the agent's journal lives: one JSON file, replaced atomically (R2, N3)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from overair.agent.fsutil import atomic_write
from overair.agent.machine.state import Journal
from overair.core.errors import DecodeError

log = logging.getLogger("overair.agent.journal")

JOURNAL_FILE = "journal.json"


class JournalStore:
    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / JOURNAL_FILE

    def load(self, *, set_aside: bool = True) -> Journal:
        """The persisted journal; an unreadable one is set aside, never silently lost.

        `set_aside=False` (read-only tools) raises DecodeError instead of moving it.
        """
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return Journal()
        try:
            return Journal.from_json_obj(json.loads(raw))
        except (ValueError, DecodeError) as exc:
            if not set_aside:
                raise DecodeError(f"journal {self.path} is unreadable: {exc}", code="BadJournal") from exc
            aside = self.path.with_name(f"{self.path.name}.corrupt")
            os.replace(self.path, aside)
            log.error("journal %s is unreadable (%s): moved to %s, starting afresh", self.path, exc, aside)
            return Journal()

    def save(self, journal: Journal) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps(journal.to_json_obj(), sort_keys=True).encode())
