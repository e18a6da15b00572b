"""Other processes as Linux's /proc shows them (tests that kill servers and their children)."""

from __future__ import annotations

from pathlib import Path


def alive(pid: int) -> bool:
    """Is process `pid` running (not gone, not a zombie)?"""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"
