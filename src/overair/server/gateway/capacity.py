"""How many devices the broker can hold, and how many it holds (issue 20, item 4).

Every device connection costs Mosquitto one file descriptor. Most systems start
processes with a soft limit of 1,024 descriptors (and a far higher hard limit), so
without a raise the 1,000th or so device is refused at accept while everything looks
healthy. `overair serve` therefore raises its own soft limit to the hard limit before it
starts the broker, which inherits it; `capacity()` reads what the broker really got
(/proc/PID/limits) and `connections()` counts its established connections on the
device port (/proc/net/tcp and tcp6), so /health can report one against the other.

Parsing is pure (text in, numbers out); reading /proc is kept to the two functions at
the bottom. On a system without /proc both answer None and /health says so.
"""

from __future__ import annotations

import logging
import re
import resource
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("overair.broker")

# Descriptors the broker needs besides device connections: listeners, its log and
# persistence files, the CRL/ACL reads, overair's own service and witness sessions.
RESERVED_DESCRIPTORS = 32
# /health warns from this share of the capacity on.
WARN_AT = 0.9

_OPEN_FILES = re.compile(r"^Max open files\s+(?P<soft>\d+|unlimited)\s+(?P<hard>\d+|unlimited)", re.MULTILINE)
_ESTABLISHED = "01"


@dataclass(frozen=True, slots=True)
class Limit:
    soft: int | None  # None: unlimited
    hard: int | None


def raise_descriptor_limit() -> Limit:
    """Raise this process's soft descriptor limit to its hard limit (children inherit
    it); returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:  # a hard limit the kernel will not grant as soft
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, hard, exc)
    return Limit(None if soft == resource.RLIM_INFINITY else soft,
                 None if hard == resource.RLIM_INFINITY else hard)


def parse_open_files(limits_text: str) -> Limit | None:
    """The `Max open files` line of /proc/PID/limits."""
    found = _OPEN_FILES.search(limits_text)
    if found is None:
        return None
    soft, hard = found["soft"], found["hard"]
    return Limit(None if soft == "unlimited" else int(soft), None if hard == "unlimited" else int(hard))


def device_capacity(limit: Limit) -> int | None:
    """Device connections a broker with this limit can hold (None: no limit)."""
    if limit.soft is None:
        return None
    return max(0, limit.soft - RESERVED_DESCRIPTORS)


def count_established(proc_net_tcp: str, port: int) -> int:
    """Established TCP connections whose local port is `port`, from the text of
    /proc/net/tcp or /proc/net/tcp6."""
    wanted = f"{port:04X}"
    count = 0
    for line in proc_net_tcp.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4:
            continue
        local, state = fields[1], fields[3]
        if state == _ESTABLISHED and local.rpartition(":")[2] == wanted:
            count += 1
    return count


def capacity(pid: int, proc: Path = Path("/proc")) -> int | None:
    """The device capacity of the running broker `pid` (None: unknown or unlimited)."""
    try:
        limit = parse_open_files((proc / str(pid) / "limits").read_text())
    except OSError:
        return None
    return None if limit is None else device_capacity(limit)


def connections(port: int, proc: Path = Path("/proc")) -> int | None:
    """Established connections to the device port on this host (None: no /proc)."""
    total, seen = 0, False
    for name in ("tcp", "tcp6"):
        try:
            total += count_established((proc / "net" / name).read_text(), port)
            seen = True
        except OSError:
            continue
    return total if seen else None
