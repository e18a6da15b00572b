"""What the server process holds at its memory peak during a rollout (bench/fleet.py).

A thread samples the process every 0.5 s: its resident memory, glibc's heap (bytes in
use and bytes freed but kept by the allocator, summed over every arena: `mallinfo2`),
and the queues of the service's broker connection (device messages waiting for a
worker or held back, bytes written to the broker and not sent yet, QoS 1 messages
waiting for their PUBACK). The sample with the largest RSS is the one reported, so
that the peak can be told apart: Python objects and buffers (in use) from allocator
fragmentation (free but not returned to the system).
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


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


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

    def describe(self) -> str:
        return (f"at {self.at:.1f} s: RSS {self.rss / MIB:.0f} MiB; glibc heap in use "
                f"{self.heap_in_use / MIB:.0f} MiB, free but kept {self.heap_free / MIB:.0f} MiB, "
                f"mmapped {self.heap_mmapped / MIB:.0f} MiB; device messages waiting {self.waiting} "
                f"(held back {self.held}), unsent to the broker {self.write_backlog / MIB:.1f} MiB, "
                f"QoS 1 awaiting PUBACK {self.unacked_qos1}")


class MemorySampler:
    def __init__(self, connection: Any, t0: float, every: float = 0.5) -> None:
        self._connection = connection
        self._t0 = t0
        self._every = every
        self._stop = threading.Event()
        self.peak: MemorySample | None = None
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
        while not self._stop.wait(self._every):
            sample = self._sample()
            if self.peak is None or sample.rss > self.peak.rss:
                self.peak = sample
