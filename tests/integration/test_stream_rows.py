"""Cached stream rows (server/streams/service.py), which the event loop answers block
requests from without the database: `renew_rows` reads again those asked for, so that a
change made by another server process sharing the database (no hook runs here) is seen
within a renewal, and a row dropped here meanwhile is not brought back stale."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from overair.server.settings import Settings
from overair.server.storage.db import Database
from overair.server.streams.service import StreamService

FILES = [{"fileId": 0, "s3Location": {"bucket": "firmware", "key": "app.bin"}}]


class _Objects:
    """Every object exists (stream creation checks its files' locations)."""

    def get_object(self, bucket: str, key: str, version_id: str | None = None) -> tuple[Any, bytes]:
        return None, b"image"


def _service(db: Database, tmp_path: Path, database_url: str) -> StreamService:
    settings = Settings(data_dir=tmp_path, account_id="123456789012", database_url=database_url)
    return StreamService(db, settings, _Objects(), time.time)


def test_renewal_brings_in_another_processs_stream_update_and_drops_a_deleted_stream(
        db: Database, tmp_path: Path, database_url: str) -> None:
    here, other = _service(db, tmp_path, database_url), _service(db, tmp_path, database_url)
    here.create_stream("s-1", FILES, "", "")
    here.create_stream("s-2", FILES, "", "")
    assert here.stream_for_delivery("s-1").version == 1
    assert here.stream_for_delivery("s-2").version == 1
    other.update_stream("s-1", None, "new description", None)
    other.delete_stream("s-2")
    assert here.renew_rows() == 2
    renewed = here.cached_stream("s-1")
    assert renewed is not None
    assert renewed.version == 2
    assert here.cached_stream("s-2") is None


def test_only_rows_asked_for_since_the_last_renewal_are_read_again(
        db: Database, tmp_path: Path, database_url: str) -> None:
    streams = _service(db, tmp_path, database_url)
    streams.create_stream("s-1", FILES, "", "")
    streams.stream_for_delivery("s-1")
    assert streams.renew_rows() == 1
    assert streams.renew_rows() == 0  # nobody asked meanwhile
    streams.cached_stream("s-1")
    assert streams.renew_rows() == 1


def test_a_row_dropped_during_a_renewal_is_not_stored_again(
        db: Database, tmp_path: Path, database_url: str, monkeypatch: Any) -> None:
    streams = _service(db, tmp_path, database_url)
    streams.create_stream("s-1", FILES, "", "")
    streams.stream_for_delivery("s-1")
    reading = db.reading

    def update_meanwhile() -> Any:
        monkeypatch.setattr(db, "reading", reading)
        streams.update_stream("s-1", None, "changed here", None)  # drops the cached row
        return reading()

    monkeypatch.setattr(db, "reading", update_meanwhile)
    streams.renew_rows()
    assert streams.cached_stream("s-1") is None  # read afresh by the next request
