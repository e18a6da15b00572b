"""One agent at a time on a device's storage (agent/fsutil.py `DataDirLock`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from overair.agent.fsutil import DataDirLock
from overair.core.errors import MisuseError


def test_a_second_agent_on_the_same_storage_is_refused_until_the_first_stops(tmp_path: Path) -> None:
    first, second = DataDirLock(tmp_path / "state"), DataDirLock(tmp_path / "state")
    first.acquire()
    with pytest.raises(MisuseError) as busy:
        second.acquire()
    assert busy.value.code == "AgentAlreadyRunning"
    first.release()
    second.acquire()  # free again
    second.release()


def test_agents_on_different_storage_do_not_block_each_other(tmp_path: Path) -> None:
    a, b = DataDirLock(tmp_path / "a"), DataDirLock(tmp_path / "b")
    a.acquire()
    b.acquire()
    a.release()
    b.release()
