"""Where the nginx download front caches overair's decisions (delivery/nginx_front.py
`decision_directory`): a private directory in shared memory, made fresh at each start,
and removed at the next start should a server not have stopped cleanly, but never a
directory that is not one overair made there. Real file system; the shared memory
directory is a test's own."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from overair.core.limits import Limits
from overair.server.delivery import nginx_front


@pytest.fixture
def shm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "shm"
    path.mkdir()
    monkeypatch.setattr(nginx_front, "SHARED_MEMORY", path)
    return path


def _workdir(tmp_path: Path) -> Path:
    workdir = tmp_path / "front"
    workdir.mkdir(mode=0o700)
    return workdir


def test_decisions_go_to_a_new_private_directory_in_shared_memory(tmp_path: Path, shm: Path) -> None:
    workdir = _workdir(tmp_path)
    (workdir / "decisions" / "a").mkdir(parents=True)  # where earlier versions kept them
    first = nginx_front.decision_directory(workdir)
    info = first.lstat()
    assert (first.parent, stat.S_IMODE(info.st_mode), info.st_uid) == (shm, 0o700, os.geteuid())
    assert first.name.startswith(nginx_front.DECISIONS_PREFIX)
    assert not (workdir / "decisions").exists()
    (first / "a").write_text("a decision")
    second = nginx_front.decision_directory(workdir)  # the next start: the last one is gone
    assert second != first
    assert not first.exists()
    assert second.is_dir()
    nginx_front.remove_recorded_decisions(workdir)  # the stop
    assert not second.exists()
    assert list(shm.iterdir()) == []


def test_a_directory_someone_else_made_in_shared_memory_is_never_used(tmp_path: Path, shm: Path) -> None:
    # A name chosen in advance by another local user could be made there first, and whoever
    # can write where nginx reads its cached decisions can forge grants (threat N4).
    planted = shm / f"{nginx_front.DECISIONS_PREFIX}planted"
    planted.mkdir(mode=0o777)
    made = nginx_front.decision_directory(_workdir(tmp_path))
    assert made != planted
    assert planted.is_dir()


@pytest.mark.parametrize("recorded", ["elsewhere", "symlink", "other-name", "file"])
def test_only_a_directory_overair_made_in_shared_memory_is_removed(tmp_path: Path, shm: Path,
                                                                   recorded: str) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("data")
    target = {
        "elsewhere": victim,
        "symlink": shm / f"{nginx_front.DECISIONS_PREFIX}link",
        "other-name": shm / "someone-elses",
        "file": shm / f"{nginx_front.DECISIONS_PREFIX}file",
    }[recorded]
    if recorded == "symlink":
        target.symlink_to(victim)
    elif recorded == "other-name":
        target.mkdir()
    elif recorded == "file":
        target.write_text("not a directory")
    workdir = _workdir(tmp_path)
    (workdir / nginx_front.DECISIONS_RECORD).write_text(str(target))
    nginx_front.remove_recorded_decisions(workdir)
    assert (victim / "keep").read_text() == "data"
    assert target.exists()
    assert not (workdir / nginx_front.DECISIONS_RECORD).exists()


def test_without_shared_memory_decisions_stay_in_the_fronts_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nginx_front, "SHARED_MEMORY", tmp_path / "absent")
    workdir = _workdir(tmp_path)
    assert nginx_front.decision_directory(workdir) == workdir / "decisions"
    assert stat.S_IMODE((workdir / "decisions").stat().st_mode) == 0o700


def test_decisions_take_at_most_a_quarter_of_shared_memory(tmp_path: Path, shm: Path) -> None:
    # /dev/shm is shared (Docker's is 64 MiB; PostgreSQL's dynamic shared memory lives
    # there): the front's cache must not fill it.
    made = nginx_front.decision_directory(_workdir(tmp_path))
    size = os.statvfs(shm).f_blocks * os.statvfs(shm).f_frsize
    assert nginx_front.decisions_bound(made) == max(nginx_front.DECISIONS_MIN_BYTES,
                                                   min(nginx_front.DECISIONS_MAX_BYTES, size // 4))
    assert nginx_front.decisions_bound(tmp_path / "front" / "decisions") == nginx_front.DECISIONS_MAX_BYTES


def test_a_small_shared_memory_is_left_alone(tmp_path: Path, shm: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nginx_front, "DECISIONS_MIN_BYTES", 2 ** 62)  # more than any /dev/shm
    workdir = _workdir(tmp_path)
    assert nginx_front.decision_directory(workdir) == workdir / "decisions"
    assert list(shm.iterdir()) == []


def test_the_bound_reaches_nginx(tmp_path: Path) -> None:
    config = nginx_front.FrontConfig(tmp_path, "127.0.0.1", 8443, tmp_path / "c", tmp_path / "k", Limits(),
                                     run_as_root=False)
    text = nginx_front.render(config, tmp_path / "d", 32 * 1024 * 1024)
    assert f"proxy_cache_path {tmp_path / 'd'} levels=1:2 keys_zone=overair_decisions:32m" in text
    assert "max_size=32768k inactive=10s" in text
