"""tests/ports.py, the loopback ports the test servers are told to bind: never the same
port to two live test processes (pytest-xdist workers, another checkout's run), never
one the kernel hands out by itself, never twice in one process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.ports import FLOOR, _ephemeral_floor, free_port, free_ports

ROOT = Path(__file__).resolve().parents[2]
# A process that draws ports, says which, and keeps them (stays alive) until its stdin
# closes. Every one searches the blocks from the same first block (normally each starts
# at its own), so only the locks keep them apart.
DRAW = """
import sys
import tests.ports as p
blocks = list(range(p.FLOOR, p._ephemeral_floor() - p.BLOCK + 1, p.BLOCK))
p._ALLOCATOR._blocks = lambda: blocks
print(*p.free_ports(int(sys.argv[1])), flush=True)
sys.stdin.read()
"""


def test_a_process_is_never_handed_a_port_twice_and_never_an_ephemeral_one() -> None:
    ports = free_ports(300)  # more than one block
    assert len(set(ports)) == len(ports)
    assert all(FLOOR <= port < _ephemeral_floor() for port in ports)
    assert free_port() not in ports


def test_live_processes_drawing_at_once_never_share_a_port() -> None:
    children = [subprocess.Popen([sys.executable, "-c", DRAW, "120"], cwd=ROOT, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True) for _ in range(3)]
    try:
        mine = free_ports(120)
        drawn = [mine]
        for child in children:
            assert child.stdout is not None
            drawn.append([int(port) for port in child.stdout.readline().split()])
    finally:
        for child in children:
            assert child.stdin is not None
            child.stdin.close()
            child.wait(30)
    assert all(len(ports) == 120 for ports in drawn)
    every = [port for ports in drawn for port in ports]
    assert len(set(every)) == len(every)
