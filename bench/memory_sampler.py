"""What the server process holds at its memory peak during a rollout (bench/fleet.py).

A thread samples the process every 0.5 s: its resident memory, glibc's heap (bytes in
use and bytes freed but kept by the allocator, summed over every arena: `mallinfo2`),
and the queues of the service's broker connection (device messages waiting for a
worker or held back, bytes written to the broker and not sent yet, QoS 1 messages
waiting for their PUBACK). The sample with the largest RSS is the one reported, so
that the peak can be told apart: Python objects and buffers (in use) from allocator
fragmentation (free but not returned to the system). At each new peak it also reads
SQLite's own allocations (`sqlite3_memory_used` and its high-water mark, from the library
the sqlite3 module uses) and the process's anonymous mappings grouped by size with their
resident bytes (/proc/self/smaps; the kernel merges adjacent ones, so a size is a hint:
glibc's per-thread heaps are at most 64 MiB, thread stacks 8 MiB, CPython's small-object
arenas 1 MiB each, the main heap is "[heap]").
"""

from __future__ import annotations

import ctypes
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIB = 1024 * 1024


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
        "keepcost")]


def _mallinfo2() -> tuple[int, int, int]:
    """(bytes in use, bytes free in the arenas, bytes in mmapped chunks); zeros without glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        info = libc.mallinfo2()
    except (OSError, AttributeError):
        return 0, 0, 0
    return int(info.uordblks), int(info.fordblks), int(info.hblkhd)


def _sqlite_memory() -> tuple[int, int]:
    """(bytes SQLite has allocated now, the most it had at once); zeros if unknown."""
    try:
        library = ctypes.CDLL("libsqlite3.so.0")
        library.sqlite3_memory_used.restype = ctypes.c_int64
        library.sqlite3_memory_highwater.restype = ctypes.c_int64
        return int(library.sqlite3_memory_used()), int(library.sqlite3_memory_highwater(0))
    except (OSError, AttributeError):
        return 0, 0


def anonymous_mappings(smaps: str) -> dict[int, tuple[int, int]]:
    """Anonymous mappings of an smaps text by size in KiB -> (count, resident KiB); the
    main heap counts as anonymous, its size given as -1."""
    groups: dict[int, tuple[int, int]] = {}
    size, anonymous = 0, False
    for line in smaps.splitlines():
        head = line.split(None, 1)[0] if line else ""
        if "-" in head and not head.endswith(":"):  # a mapping's header line
            fields = line.split()
            start, end = (int(part, 16) for part in fields[0].split("-"))
            size, anonymous = (end - start) // 1024, len(fields) < 6 or fields[5] == "[heap]"
            if len(fields) >= 6 and fields[5] == "[heap]":
                size = -1
        elif head == "Rss:" and anonymous:
            count, resident = groups.get(size, (0, 0))
            groups[size] = (count + 1, resident + int(line.split()[1]))
    return groups


def _describe_mappings(groups: dict[int, tuple[int, int]], top: int = 6) -> str:
    largest = sorted(groups.items(), key=lambda item: -item[1][1])[:top]
    return ", ".join(
        f"{'[heap]' if size < 0 else f'{count} x {size / 1024:.2f} MiB'}: {resident / 1024:.0f} MiB resident"
        for size, (count, resident) in largest)


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _rss() -> int:
    return _status("VmRSS")


@dataclass
class MemorySample:
    at: float  # seconds from t0
    rss: int
    heap_in_use: int
    heap_free: int
    heap_mmapped: int
    waiting: int  # device messages waiting for a worker or held back
    held: int  # of those, block requests held back by the write backlog
    write_backlog: int  # bytes written to the broker connection, not sent yet
    unacked_qos1: int  # QoS 1 publishes waiting for their PUBACK (gmqtt keeps each packet)
    sqlite: int = 0  # bytes SQLite has allocated (read at a new peak)
    sqlite_peak: int = 0  # the most SQLite had allocated at once, up to this sample
    threads: int = 0
    mappings: str = ""  # the anonymous mappings holding the most, by size (read at a new peak)
    mappings_at: float = 0.0  # when they were read (the peak they were read at)

    def describe(self) -> str:
        return (f"at {self.at:.1f} s: RSS {self.rss / MIB:.0f} MiB; glibc heap in use "
                f"{self.heap_in_use / MIB:.0f} MiB, free but kept {self.heap_free / MIB:.0f} MiB, "
                f"mmapped {self.heap_mmapped / MIB:.0f} MiB; device messages waiting {self.waiting} "
                f"(held back {self.held}), unsent to the broker {self.write_backlog / MIB:.1f} MiB, "
                f"QoS 1 awaiting PUBACK {self.unacked_qos1}; SQLite {self.sqlite / MIB:.1f} MiB "
                f"(its peak so far {self.sqlite_peak / MIB:.1f} MiB); "
                f"{self.threads} threads; anonymous mappings (read at {self.mappings_at:.1f} s): "
                f"{self.mappings}")


@dataclass(frozen=True)
class PeakBetweenSamples:
    """The process's peak RSS (VmHWM) rose past every sample: when, and around what."""

    hwm: int
    before: MemorySample
    after: MemorySample

    def describe(self) -> str:
        return (f"peak RSS (VmHWM) {self.hwm / MIB:.0f} MiB reached between samples at "
                f"{self.before.at:.1f} and {self.after.at:.1f} s (RSS {self.before.rss / MIB:.0f} -> "
                f"{self.after.rss / MIB:.0f} MiB, device messages waiting {self.before.waiting} -> "
                f"{self.after.waiting}, unsent to the broker {self.before.write_backlog / MIB:.1f} -> "
                f"{self.after.write_backlog / MIB:.1f} MiB)")


class MemorySampler:
    def __init__(self, connection: Any, t0: float, every: float = 0.5) -> None:
        self._connection = connection
        self._t0 = t0
        self._every = every
        self._stop = threading.Event()
        self.peak: MemorySample | None = None
        # The last rise of VmHWM above the sampled RSS: a peak shorter than a sample's
        # interval (the largest sample can be far below the process's peak).
        self.between: PeakBetweenSamples | None = None
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def start(self) -> MemorySampler:
        self._thread.start()
        return self

    def stop(self) -> MemorySample | None:
        self._stop.set()
        self._thread.join(5)
        return self.peak

    def _sample(self) -> MemorySample:
        conn = self._connection
        in_use, free, mmapped = _mallinfo2()
        # Read without the event loop's lock: approximate, as any metric.
        client = getattr(conn, "_client", None)
        storage = getattr(client, "_persistent_storage", None)
        return MemorySample(time.perf_counter() - self._t0, _rss(), in_use, free, mmapped,
                            conn.waiting() if conn is not None else 0,
                            len(getattr(conn, "_deferred", ())),
                            conn._write_backlog() if conn is not None else 0,
                            len(getattr(storage, "_messages", ())))

    def _run(self) -> None:
        previous: MemorySample | None = None
        hwm = _status("VmHWM")
        while not self._stop.wait(self._every):
            sample = self._sample()
            now_hwm = _status("VmHWM")
            # Past both samples by more than the RSS moves within a read (a few pages).
            if previous is not None and now_hwm > hwm and now_hwm > max(previous.rss, sample.rss) + 4 * MIB:
                self.between = PeakBetweenSamples(now_hwm, previous, sample)
            hwm, previous = now_hwm, sample
            if self.peak is None or sample.rss > self.peak.rss:
                sample.sqlite, sample.sqlite_peak = _sqlite_memory()
                sample.threads = threading.active_count()
                if self.peak is None or sample.rss > self.peak.rss * 1.05:  # smaps costs a few ms
                    sample.mappings = _describe_mappings(anonymous_mappings(
                        Path("/proc/self/smaps").read_text()))
                    sample.mappings_at = sample.at
                else:
                    sample.mappings, sample.mappings_at = self.peak.mappings, self.peak.mappings_at
                self.peak = sample
