"""Stream definitions and the file bytes behind them.

A stream file points at an object version; the bytes are verified (SHA-256) by the
object store when first read and then kept in a bounded in-memory cache, so serving a
block is a slice, not a disk read: the block server is the hot path of a rollout.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from sqlalchemy import bindparam, select

from overair.core import streamcodec, topics
from overair.core.streamplan import block_bytes
from overair.server.api.contract import already_exists, invalid, not_found
from overair.server.clock import Clock
from overair.server.settings import Settings
from overair.server.storage.db import Database
from overair.server.storage.keyset import page_query, split
from overair.server.storage.schema import Stream

STREAM_ROW_TTL = 2.0
_STREAMS_BY_ID = select(Stream).where(Stream.stream_id.in_(bindparam("ids", expanding=True)))


class ObjectReader(Protocol):
    def get_object(self, bucket: str, key: str, version_id: str | None = None) -> tuple[Any, bytes]: ...


class FileCache:
    """LRU of file bytes bounded by total size."""

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._items: OrderedDict[tuple[str | int, ...], bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[str | int, ...]) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
            return data

    def get_many(self, keys: list[tuple[str | int, ...]]) -> list[bytes | None]:
        with self._lock:
            found = [self._items.get(key) for key in keys]
            for key, data in zip(keys, found, strict=True):
                if data is not None:
                    self._items.move_to_end(key)
            return found

    def put(self, key: tuple[str | int, ...], data: bytes) -> None:
        with self._lock:
            if key in self._items:
                return
            self._items[key] = data
            self._size += len(data)
            while self._size > self._max and len(self._items) > 1:
                _, old = self._items.popitem(last=False)
                self._size -= len(old)

    def clear(self) -> None:
        self.drop_where(lambda _key: True)

    def drop_where(self, doomed: Callable[[tuple[str | int, ...]], bool]) -> None:
        with self._lock:
            for key in [k for k in self._items if doomed(k)]:
                self._size -= len(self._items.pop(key))

    @property
    def bytes_held(self) -> int:
        return self._size

    def drop_stream(self, stream_id: str) -> None:
        with self._lock:
            for key in [k for k in self._items if k[0] == stream_id]:
                self._size -= len(self._items.pop(key))


class StreamService:
    def __init__(self, db: Database, settings: Settings, objects: ObjectReader, clock: Clock,
                 cache_bytes: int = 256 * 1024 * 1024) -> None:
        self._db = db
        self._settings = settings
        self._objects = objects
        self._clock = clock
        self.cache = FileCache(cache_bytes)
        # Encoded data-block messages, shared by every device of a rollout: each block is
        # encoded once, not once per device (bench/stream_throughput).
        self.blocks = FileCache(cache_bytes // 2)
        self._rows: dict[str, tuple[Stream, float]] = {}
        self._rows_lock = threading.Lock()
        self._rows_asked: set[str] = set()  # rows asked for since the last `renew_rows`
        self._rows_dropped = 0  # bumped by `_forget_row`: a renewal read before it stores nothing

    def stream_arn(self, stream_id: str) -> str:
        return self._settings.arn("iot", f"stream/{stream_id}")

    def create_stream(self, stream_id: str, files: list[dict[str, Any]], description: str = "",
                      role_arn: str = "") -> Stream:
        if not topics.is_stream_id(stream_id):
            raise invalid("streamId must be 1-128 characters of [a-zA-Z0-9_-]")
        self._check_files(files)
        now = self._clock()
        with self._db.session() as s:
            if s.get(Stream, stream_id) is not None:
                raise already_exists(f"stream {stream_id}")
            stream = Stream(stream_id=stream_id, arn=self.stream_arn(stream_id), version=1,
                            description=description, files=files, role_arn=role_arn,
                            created_at=now, updated_at=now)
            s.add(stream)
            return stream

    def _check_files(self, files: list[dict[str, Any]]) -> None:
        if not files or len(files) > 50:
            raise invalid("a stream needs 1-50 files")
        seen: set[int] = set()
        for f in files:
            fid = f.get("fileId")
            location = f.get("s3Location")
            if not isinstance(fid, int) or not 0 <= fid <= 255 or fid in seen:
                raise invalid("each stream file needs a distinct fileId in 0-255")
            if not isinstance(location, dict) or not location.get("bucket") or not location.get("key"):
                raise invalid("each stream file needs an s3Location with bucket and key")
            seen.add(fid)
            # Resolve now so that a missing object is an error at creation, not on devices.
            self._objects.get_object(location["bucket"], location["key"], location.get("version"))

    def describe_stream(self, stream_id: str) -> Stream:
        with self._db.reading() as s:
            stream = s.get(Stream, stream_id)
            if stream is None:
                raise not_found(f"stream {stream_id}")
            return stream

    def stream_for_delivery(self, stream_id: str) -> Stream:
        """describe_stream for the hot path of block requests: kept for a moment, since
        every GetStream of every device needs it (UpdateStream/DeleteStream in this
        process drop it at once; the version check catches anything older)."""
        now = time.monotonic()
        with self._rows_lock:
            cached = self._rows.get(stream_id)
            self._rows_asked.add(stream_id)
            if cached is not None and cached[1] > now:
                return cached[0]
        stream = self.describe_stream(stream_id)
        with self._rows_lock:
            if len(self._rows) > 10_000:
                self._rows.clear()
            self._rows[stream_id] = (stream, now + STREAM_ROW_TTL)
        return stream

    def cached_stream(self, stream_id: str) -> Stream | None:
        """The stream row if it is cached and fresh; never reads the database."""
        with self._rows_lock:
            cached = self._rows.get(stream_id)
            self._rows_asked.add(stream_id)
        return cached[0] if cached is not None and cached[1] > time.monotonic() else None

    def renew_rows(self) -> int:
        """Read again the cached rows asked for since the last call (a deleted stream's is
        dropped), so that the event loop's fast path (`cached_stream`) keeps finding them
        fresh: an expired row sent the block requests arriving before a worker had read
        it again to the workers, each a thread hand-off (bench/fleet.py). Returns how many
        rows were read."""
        with self._rows_lock:
            wanted = sorted(self._rows_asked & self._rows.keys())
            self._rows_asked.clear()
            dropped = self._rows_dropped
        if not wanted:
            return 0
        now = time.monotonic()
        with self._db.reading() as s:
            rows = {row.stream_id: row for row in s.scalars(_STREAMS_BY_ID, {"ids": wanted})}
        with self._rows_lock:
            if dropped != self._rows_dropped:
                return 0  # UpdateStream or DeleteStream here meanwhile: read when next asked
            for stream_id in wanted:
                if stream_id in rows:
                    self._rows[stream_id] = (rows[stream_id], now + STREAM_ROW_TTL)
                else:
                    self._rows.pop(stream_id, None)
        return len(wanted)

    def cached_file_bytes(self, stream: Stream, file_id: int) -> bytes | None:
        """The file's bytes if they are cached; never reads the object store."""
        return self.cache.get((stream.stream_id, stream.version, file_id))

    def _forget_row(self, stream_id: str) -> None:
        with self._rows_lock:
            self._rows.pop(stream_id, None)
            self._rows_dropped += 1

    def list_streams(self) -> list[Stream]:
        with self._db.reading() as s:
            return list(s.scalars(select(Stream).order_by(Stream.created_at, Stream.stream_id)))

    def page_streams(self, after: tuple[float, str] | None, size: int) -> tuple[list[Stream], bool]:
        """ListStreams by creation time then id, one page (keyset: api/paging.py)."""
        query = page_query(select(Stream), [Stream.created_at, Stream.stream_id], after, size)
        with self._db.reading() as s:
            return split(list(s.scalars(query)), size)

    def update_stream(self, stream_id: str, files: list[dict[str, Any]] | None,
                      description: str | None, role_arn: str | None) -> Stream:
        if files is not None:
            self._check_files(files)
        with self._db.session() as s:
            stream = s.get(Stream, stream_id)
            if stream is None:
                raise not_found(f"stream {stream_id}")
            if files is not None:
                stream.files = files
            if description is not None:
                stream.description = description
            if role_arn is not None:
                stream.role_arn = role_arn
            stream.version += 1
            stream.updated_at = self._clock()
        self.cache.drop_stream(stream_id)
        self.blocks.drop_stream(stream_id)
        self._forget_row(stream_id)
        return stream

    def forget_object(self, _bucket: str, _key: str) -> None:
        """An object's bytes were deleted: stream files are keyed by stream, not object,
        so every cached file goes (deletions are rare; the next request reads again)."""
        self.cache.clear()
        self.blocks.clear()

    def delete_stream(self, stream_id: str) -> None:
        with self._db.session() as s:
            stream = s.get(Stream, stream_id)
            if stream is None:
                raise not_found(f"stream {stream_id}")
            s.delete(stream)
        self.cache.drop_stream(stream_id)
        self.blocks.drop_stream(stream_id)
        self._forget_row(stream_id)

    def file_bytes(self, stream: Stream, file_id: int) -> bytes:
        key = (stream.stream_id, stream.version, file_id)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        for f in stream.files:
            if f["fileId"] == file_id:
                location = f["s3Location"]
                _, data = self._objects.get_object(location["bucket"], location["key"],
                                                   location.get("version"))
                self.cache.put(key, data)
                return data
        raise not_found(f"file {file_id} in stream {stream.stream_id}")

    def data_blocks(self, stream: Stream, file_id: int, data: bytes, block_size: int, blocks: list[int],
                    fmt: str) -> list[bytes]:
        """The encoded data-block messages for `blocks` of the file `data` (cached). One
        request's blocks share their key's prefix and one look at the cache: per block,
        the ORM attribute reads and lock were a tenth of a rollout's block answers
        (bench/fleet.py, py-spy)."""
        prefix = (stream.stream_id, stream.version, file_id, "block", block_size, fmt)
        found = self.blocks.get_many([(*prefix, block) for block in blocks])
        encoded: list[bytes] = []
        for block, cached in zip(blocks, found, strict=True):
            if cached is None:
                fresh = streamcodec.encode_data_block(
                    streamcodec.DataBlock(file_id, block, block_bytes(data, block, block_size)), fmt)
                self.blocks.put((*prefix, block), fresh)
                encoded.append(fresh)
            else:
                encoded.append(cached)
        return encoded

    def file_sizes(self, stream: Stream) -> list[tuple[int, int]]:
        return [(f["fileId"], len(self.file_bytes(stream, f["fileId"]))) for f in stream.files]
