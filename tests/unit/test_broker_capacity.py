"""Pure parts of gateway/capacity.py: /proc text in, numbers out."""

from __future__ import annotations

from overair.server.gateway.capacity import (
    RESERVED_DESCRIPTORS,
    Limit,
    count_established,
    device_capacity,
    parse_open_files,
)

LIMITS = """Limit                     Soft Limit           Hard Limit           Units
Max cpu time              unlimited            unlimited            seconds
Max open files            1024                 524288               files
Max locked memory         8388608              8388608              bytes
"""

# Two server-side sockets of port 8883 (0x22B3) established, one listening, one
# client-side socket whose *remote* port is 8883, one on another port.
TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:22B3 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 0100007F:22B3 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 2 1
   2: 0100007F:22B3 0100007F:9C41 01 00000000:00000000 00:00000000 00000000     0        0 3 1
   3: 0100007F:9C40 0100007F:22B3 01 00000000:00000000 00:00000000 00000000     0        0 4 1
   4: 0100007F:1F90 0100007F:9C42 01 00000000:00000000 00:00000000 00000000     0        0 5 1
"""


def test_open_file_limits_are_read_from_proc_limits() -> None:
    assert parse_open_files(LIMITS) == Limit(1024, 524288)
    unlimited = "Max open files            unlimited            unlimited            files\n"
    assert parse_open_files(unlimited) == Limit(None, None)
    assert parse_open_files("no such line") is None


def test_capacity_leaves_the_brokers_own_descriptors_out() -> None:
    assert device_capacity(Limit(1024, 4096)) == 1024 - RESERVED_DESCRIPTORS
    assert device_capacity(Limit(10, 10)) == 0
    assert device_capacity(Limit(None, None)) is None


def test_only_established_connections_to_the_port_count() -> None:
    assert count_established(TCP, 8883) == 2
    assert count_established(TCP, 8080) == 1
    assert count_established(TCP, 1883) == 0
    assert count_established("header only\n", 8883) == 0
    assert count_established("header\n garbage\n", 8883) == 0
