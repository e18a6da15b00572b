"""Where the agent's journal lives (R2, N3): every state change is written atomically
before it is acted on.

On Linux it is one JSON file replaced atomically (temp, fsync, rename). On the simulated
MCU it is a failsafe file of the encrypted flash file system (there is no other file
system on a microcontroller), so the power-cut suite cuts journal writes like every
other flash write. Both are `JournalStore`s; the platform says which
(`Platform.journal_store`).
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from overair.agent.fsutil import atomic_write
from overair.agent.machine.state import Journal
from overair.core import wirejson
from overair.core.errors import DecodeError

log = logging.getLogger("overair.agent.journal")

JOURNAL_FILE = "journal.json"


class JournalStore(Protocol):
    def load(self, *, set_aside: bool = True) -> Journal:
        """The persisted journal (empty if none). An unreadable one is set aside and an
        empty journal returned; with `set_aside=False` (read-only tools) DecodeError."""
        ...

    def save(self, journal: Journal) -> None:
        """Replace the journal atomically: after a power cut it is the old or the new."""
        ...


def encode_journal(journal: Journal) -> bytes:
    return json.dumps(journal.to_json_obj(), sort_keys=True).encode()


def decode_journal(raw: bytes) -> Journal:
    """The journal from its bytes; DecodeError (and nothing else) if it is not one. It
    holds what jobs sent (ids, reasons quoting them), so it is decoded like input."""
    try:
        obj = wirejson.loads(raw, what="journal")
    except DecodeError as exc:
        raise DecodeError(f"journal is not JSON: {exc.message}", code="BadJournal") from exc
    return Journal.from_json_obj(obj)


class FileJournalStore:
    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / JOURNAL_FILE

    def load(self, *, set_aside: bool = True) -> Journal:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return Journal()
        try:
            return decode_journal(raw)
        except DecodeError as exc:
            if not set_aside:
                raise DecodeError(f"journal {self.path} is unreadable: {exc.message}",
                                  code="BadJournal") from exc
            aside = self.path.with_name(f"{self.path.name}.corrupt")
            os.replace(self.path, aside)
            log.error("journal %s is unreadable (%s): moved to %s, starting afresh", self.path, exc, aside)
            return Journal()

    def save(self, journal: Journal) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, encode_journal(journal))


class RecordJournalStore:
    """The journal in one power-safe record of `capacity` bytes (compressed JSON): a
    flash file system's failsafe file. Should the results of finished jobs outgrow the
    record, the oldest are dropped first (the version floor still refuses older images)."""

    def __init__(self, read: Callable[[], bytes | None], write: Callable[[bytes], None],
                 capacity: int) -> None:
        self._read = read
        self._write = write
        self._capacity = capacity

    def load(self, *, set_aside: bool = True) -> Journal:
        raw = self._read()
        if raw is None:
            return Journal()
        try:
            return decode_journal(zlib.decompress(raw))
        except (zlib.error, DecodeError) as exc:
            # The record authenticated, so this is a bug or a format change, not damage.
            if not set_aside:
                raise DecodeError(f"journal record is unreadable: {exc}", code="BadJournal") from exc
            log.error("journal record is unreadable (%s): starting afresh", exc)
            return Journal()

    def save(self, journal: Journal) -> None:
        record = zlib.compress(encode_journal(journal))
        while len(record) > self._capacity and journal.results:
            journal = replace(journal, results=journal.results[1:])
            record = zlib.compress(encode_journal(journal))
            log.warning("journal record full: forgot the oldest finished job")
        self._write(record)
