"""The one CBOR decoder for anything a device (or a server, for the agent) sends.

A general CBOR library decodes far more than MQTT file delivery uses, and on hostile
input that surface is the risk: cbor2 turns semantic tags into Python objects (tag 35
compiles a device-chosen regular expression, tag 36 runs the e-mail parser, tags 28/29
build cyclic structures, tag 2 builds integers of any size), accepts unhashable map keys
and lets a later duplicate key silently win over an earlier one. File delivery
(device-protocol.md §3) needs none of it: a request or a data block is one map of short
text keys to integers, text and byte strings.

`loads` therefore decodes exactly that subset of RFC 8949 and refuses the rest with a
`DecodeError` (code `InvalidCbor`): integers (major types 0 and 1), byte and text strings
(definite or indefinite length), arrays and maps (definite or indefinite), false, true,
null and floats. It refuses tags, other simple values, map keys that are not text or
integers, duplicate keys, nesting deeper than the limit, more items than the limit and
trailing bytes. Every length is checked against the bytes actually left before anything
is allocated, so the work is linear in the input, which the caller has already bounded
(`Limits.max_stream_request_bytes` on the server). It raises nothing but `DecodeError`.

Encoding stays with cbor2: what we write is ours.
"""

from __future__ import annotations

import struct
from typing import Any

from overair.core.errors import DecodeError
from overair.core.limits import DEFAULT_LIMITS, Limits

CODE = "InvalidCbor"
_BREAK = object()  # the "break" stop code ending an indefinite-length item
_SIMPLE = {20: False, 21: True, 22: None}


def loads(data: bytes | bytearray | memoryview, *, limits: Limits = DEFAULT_LIMITS,
          what: str = "CBOR") -> Any:
    """Decode one CBOR data item that fills `data` exactly."""
    reader = _Reader(bytes(data), limits.max_cbor_depth, limits.max_cbor_items, what)
    value = reader.item(0)
    if value is _BREAK:
        raise reader.error("a break code where a data item was expected")
    if reader.pos != len(reader.data):
        raise reader.error(f"{len(reader.data) - reader.pos} bytes after the data item")
    return value


class _Reader:
    def __init__(self, data: bytes, max_depth: int, max_items: int, what: str) -> None:
        self.data = data
        self.pos = 0
        self.max_depth = max_depth
        self.items_left = max_items
        self.what = what

    def error(self, message: str) -> DecodeError:
        return DecodeError(f"{self.what}: {message} (at byte {self.pos})", code=CODE)

    def take(self, count: int) -> bytes:
        if count > len(self.data) - self.pos:
            raise self.error(f"{count} bytes announced, {len(self.data) - self.pos} left")
        chunk = self.data[self.pos:self.pos + count]
        self.pos += count
        return chunk

    def head(self) -> tuple[int, int, int | None]:
        """(major type, additional info, argument); the argument is None for an
        indefinite length (additional info 31)."""
        (initial,) = self.take(1)
        major, info = initial >> 5, initial & 0x1F
        if info < 24:
            return major, info, info
        if info <= 27:
            return major, info, int.from_bytes(self.take(1 << (info - 24)), "big")
        if info == 31:
            return major, info, None
        raise self.error(f"reserved additional information {info}")

    def item(self, depth: int) -> Any:
        if depth > self.max_depth:
            raise self.error(f"nested deeper than {self.max_depth} levels")
        self.items_left -= 1
        if self.items_left < 0:
            raise self.error("too many data items")
        major, info, argument = self.head()
        if major == 0:
            return self.definite(argument)
        if major == 1:
            return -1 - self.definite(argument)
        if major in (2, 3):
            return self.string(major, argument)
        if major == 4:
            return self.array(argument, depth)
        if major == 5:
            return self.map(argument, depth)
        if major == 6:
            raise self.error("tags are not accepted")
        return self.simple(info, argument)

    def definite(self, argument: int | None) -> int:
        if argument is None:
            raise self.error("an integer cannot have an indefinite length")
        return argument

    def string(self, major: int, argument: int | None) -> bytes | str:
        if argument is not None:
            raw = self.take(argument)
        else:  # indefinite: definite chunks of the same major type up to a break
            chunks = []
            while True:
                chunk_major, _, chunk_length = self.head()
                if chunk_major == 7 and chunk_length is None:
                    break
                if chunk_major != major or chunk_length is None:
                    raise self.error("an indefinite string holds something other than definite chunks")
                chunks.append(self.take(chunk_length))
            raw = b"".join(chunks)
        if major == 2:
            return raw
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.error(f"text is not UTF-8: {exc.reason}") from None

    def array(self, argument: int | None, depth: int) -> list[Any]:
        values: list[Any] = []
        for _ in self.members(argument):
            value = self.item(depth + 1)
            if value is _BREAK:
                if argument is not None:
                    raise self.error("a break code inside a definite-length array")
                return values
            values.append(value)
        return values

    def map(self, argument: int | None, depth: int) -> dict[Any, Any]:
        values: dict[Any, Any] = {}
        for _ in self.members(argument):
            key = self.item(depth + 1)
            if key is _BREAK:
                if argument is not None:
                    raise self.error("a break code inside a definite-length map")
                return values
            if isinstance(key, bool) or not isinstance(key, str | int):
                raise self.error("map keys must be text or integers")
            if key in values:
                raise self.error(f"duplicate map key {key!r:.40}")
            value = self.item(depth + 1)
            if value is _BREAK:
                raise self.error("a map key without a value")
            values[key] = value
        return values

    def members(self, argument: int | None) -> range:
        if argument is None:
            return range(self.items_left + 1)  # ends at the break, or fails on the item limit
        if argument > self.items_left:
            raise self.error(f"{argument} members announced; the limit is {self.items_left}")
        return range(argument)

    def simple(self, info: int, argument: int | None) -> Any:
        if info in (25, 26, 27):
            assert argument is not None
            width = {25: 2, 26: 4, 27: 8}[info]
            fmt = {25: ">e", 26: ">f", 27: ">d"}[info]
            return struct.unpack(fmt, argument.to_bytes(width, "big"))[0]
        if argument is None:
            self.items_left += 1  # a break is not an item
            return _BREAK
        if info < 24 and argument in _SIMPLE:
            return _SIMPLE[argument]
        raise self.error(f"simple value {argument} is not accepted")
