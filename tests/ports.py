"""Loopback ports for the servers the tests start (overair, Mosquitto, PostgreSQL,
SeaweedFS, HAProxy, nginx), which are told a port number before they bind it.

Asking the kernel for a free port (bind to port 0, close) and handing the number on is a
race: another test process (a pytest-xdist worker, another checkout's run) may be handed
the same number before either binds it, and the kernel hands out the same range for
every outgoing connection's local port. So ports come from below the kernel's ephemeral
range (`ip_local_port_range`), where the kernel never picks one, in blocks of `BLOCK`
ports, and a process owns a block by holding an exclusive `flock` on that block's file
in a directory all test processes share. The lock lasts as long as the process (the
kernel drops it when the process ends, however it ends), so two processes can never be
handed the same port, and within a process each port is handed out once. A port that
something else on the machine already uses is skipped (it does not bind).
"""

from __future__ import annotations

import fcntl
import os
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

BLOCK = 50
FLOOR = 20_000  # well above the registered ports of common services
# One directory per user: its lock files must be writable by every process that shares it.
LOCK_DIR = Path(tempfile.gettempdir()) / f"overair-test-ports-{os.getuid()}"


def _ephemeral_floor() -> int:
    """The lowest port the kernel picks by itself (Linux's default is 32768)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _bindable(port: int) -> bool:
    # Without SO_REUSEADDR: a port with a connection still in TIME_WAIT counts as taken,
    # as it would for a server that does not set the option.
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class _Allocator:
    def __init__(self) -> None:
        self._lock = threading.Lock()  # servers started from threads draw ports too
        self._reset()

    def _reset(self) -> None:
        self._held: list[tuple[int, int]] = []  # (block start, lock file descriptor)
        self._ports: Iterator[int] = iter(())
        self._pid = os.getpid()

    def _blocks(self) -> list[int]:
        ceiling = _ephemeral_floor()
        if ceiling - FLOOR < BLOCK:
            raise RuntimeError(f"no room for test ports below the ephemeral range (from {ceiling})")
        starts = list(range(FLOOR, ceiling - BLOCK + 1, BLOCK))
        # Processes start their search at different blocks, so they seldom contend for a lock.
        first = os.getpid() % len(starts)
        return starts[first:] + starts[:first]

    def _reserve_block(self) -> Iterator[int]:
        LOCK_DIR.mkdir(mode=0o700, exist_ok=True)
        held = {start for start, _ in self._held}
        for start in self._blocks():
            if start in held:
                continue
            fd = os.open(LOCK_DIR / f"{start}.lock", os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self._held.append((start, fd))  # kept open: closing it would drop the lock
            return iter(range(start, start + BLOCK))
        # Every block is owned: hand this process's own ports out again (each skipped
        # while still bound). A run draws far fewer ports than the range holds.
        return (port for start, _ in self._held for port in range(start, start + BLOCK))

    def port(self) -> int:
        with self._lock:
            if os.getpid() != self._pid:
                # A forked child shares its parent's locks and blocks: it takes its own.
                self._reset()
            for _ in range(100 * BLOCK):
                port = next(self._ports, None)
                if port is None:
                    self._ports = self._reserve_block()
                    continue
                if _bindable(port):
                    return port
            raise RuntimeError(f"no free loopback port in {FLOOR}-{_ephemeral_floor() - 1}")


_ALLOCATOR = _Allocator()


def free_port() -> int:
    """A loopback port no other test process is handed and no earlier call returned."""
    return _ALLOCATOR.port()


def free_ports(count: int) -> list[int]:
    return [free_port() for _ in range(count)]
