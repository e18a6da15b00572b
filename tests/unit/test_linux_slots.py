"""LinuxSlots: A/B slots, atomic activation, commit, rollback and boot fallback (R1, R2)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from overair.agent.fsutil import atomic_write
from overair.agent.platform.base import PlatformError
from overair.agent.platform.linux_slots import LinuxSlots
from overair.core.versions import Version
from overair.sim.firmware import make_firmware

V1 = Version(1, 0, 0)
V2 = Version(1, 1, 0)
V3 = Version(1, 2, 0)


def _store(root: Path, attempts: int = 3) -> LinuxSlots:
    slots = LinuxSlots(root, max_boot_attempts=attempts)
    slots.install_factory(make_firmware(V1, 5000, seed=1))
    return slots


def _stage(slots: LinuxSlots, image: bytes, block: int = 1024) -> None:
    slots.create_staging(len(image))
    # Out of order on purpose: blocks land at their offsets.
    offsets = list(range(0, len(image), block))
    for offset in reversed(offsets):
        slots.write_block(offset, image[offset:offset + block])


def _boot_state(root: Path) -> dict[str, object]:
    state = json.loads((root / "boot.json").read_text())
    assert isinstance(state, dict)
    return state


def test_factory_install_and_first_boot(tmp_path: Path) -> None:
    slots = LinuxSlots(tmp_path)
    assert slots.is_empty()
    slots.install_factory(make_firmware(V1, 5000, seed=1))
    assert not slots.is_empty()
    info = slots.boot()
    assert (info.slot, info.version, info.trial, info.fell_back) == ("a", V1, False, False)
    assert os.readlink(tmp_path / "current") == "slots/a"
    assert (tmp_path / "slots" / "a" / "image.bin").read_bytes() == make_firmware(V1, 5000, seed=1)
    with pytest.raises(PlatformError):
        slots.install_factory(make_firmware(V1, 5000, seed=1))


def test_factory_image_must_be_an_image(tmp_path: Path) -> None:
    with pytest.raises(PlatformError, match="not a valid image"):
        LinuxSlots(tmp_path).install_factory(b"garbage" * 10)
    assert LinuxSlots(tmp_path).is_empty()


def test_stage_activate_boot_commit(tmp_path: Path) -> None:
    slots = _store(tmp_path)
    slots.boot()
    image = make_firmware(V2, 10_000, seed=2)
    _stage(slots, image)
    assert slots.read_staging() == image
    slots.activate()
    assert os.readlink(tmp_path / "current") == "slots/b"  # one atomic symlink switch
    assert _boot_state(tmp_path) == {"format": 1, "confirmed": "a", "pending": "b", "boot_count": 0,
                                     "security_counter": 0}
    info = slots.boot()
    assert (info.slot, info.version, info.trial, info.boot_count) == ("b", V2, True, 1)
    assert slots.running_version() == V2
    slots.commit()
    assert _boot_state(tmp_path)["confirmed"] == "b"
    info = LinuxSlots(tmp_path).boot()
    assert (info.slot, info.version, info.trial) == ("b", V2, False)
    described = {s.name: (s.version, s.state, s.current) for s in slots.slots()}
    assert described == {"a": (V1, "inactive", False), "b": (V2, "confirmed", True),
                         "factory": (V1, "factory", False)}


def test_next_update_goes_to_the_slot_that_is_not_confirmed(tmp_path: Path) -> None:
    slots = _store(tmp_path)
    slots.boot()
    _stage(slots, make_firmware(V2, 3000, seed=2))
    slots.activate()
    slots.boot()
    slots.commit()
    _stage(slots, make_firmware(V3, 3000, seed=3))
    slots.activate()
    assert slots.boot().slot == "a"
    # The confirmed image (b) was never touched.
    assert (tmp_path / "slots" / "b" / "image.bin").read_bytes() == make_firmware(V2, 3000, seed=2)


def test_rollback_returns_to_the_confirmed_slot(tmp_path: Path) -> None:
    slots = _store(tmp_path)
    slots.boot()
    _stage(slots, make_firmware(V2, 3000, seed=2))
    slots.activate()
    assert slots.boot().trial
    slots.rollback()
    assert os.readlink(tmp_path / "current") == "slots/a"
    info = slots.boot()
    assert (info.slot, info.version, info.trial, info.fell_back) == ("a", V1, False, False)
    with pytest.raises(PlatformError):
        slots.commit()  # nothing pending any more


def test_boot_falls_back_when_the_pending_image_is_never_committed(tmp_path: Path) -> None:
    slots = _store(tmp_path, attempts=2)
    slots.boot()
    _stage(slots, make_firmware(V2, 3000, seed=2))
    slots.activate()
    assert [LinuxSlots(tmp_path, max_boot_attempts=2).boot().trial for _ in range(2)] == [True, True]
    info = LinuxSlots(tmp_path, max_boot_attempts=2).boot()  # the image hung twice: give up on it
    assert (info.slot, info.version, info.trial, info.fell_back) == ("a", V1, False, True)
    assert os.readlink(tmp_path / "current") == "slots/a"
    assert _boot_state(tmp_path)["pending"] is None
    assert not LinuxSlots(tmp_path).boot().fell_back


def test_boot_falls_back_when_the_pending_image_is_damaged(tmp_path: Path) -> None:
    slots = _store(tmp_path)
    slots.boot()
    _stage(slots, make_firmware(V2, 3000, seed=2))
    slots.activate()
    (tmp_path / "slots" / "b" / "image.bin").write_bytes(b"truncated")
    info = LinuxSlots(tmp_path).boot()
    assert (info.slot, info.fell_back) == ("a", True)


def test_boot_repairs_the_symlink_from_the_boot_state(tmp_path: Path) -> None:
    # A power cut between writing boot.json and switching the link leaves them apart.
    slots = _store(tmp_path)
    slots.boot()
    os.replace(tmp_path / "current", tmp_path / "stale")
    os.symlink("slots/b", tmp_path / "current")
    assert LinuxSlots(tmp_path).boot().slot == "a"
    assert os.readlink(tmp_path / "current") == "slots/a"


def test_no_staging_while_a_trial_image_runs(tmp_path: Path) -> None:
    slots = _store(tmp_path)
    slots.boot()
    _stage(slots, make_firmware(V2, 3000, seed=2))
    slots.activate()
    slots.boot()
    with pytest.raises(PlatformError, match="trial"):
        slots.create_staging(100)  # it would overwrite the fallback image


def test_writes_outside_the_staging_file_are_refused(tmp_path: Path) -> None:
    slots = _store(tmp_path)
    slots.boot()
    slots.create_staging(100)
    with pytest.raises(PlatformError):
        slots.write_block(90, b"x" * 11)
    with pytest.raises(PlatformError):
        slots.write_block(-1, b"x")
    slots.abort_staging()
    assert not (tmp_path / "slots" / "b" / "image.bin.part").exists()
    with pytest.raises(PlatformError):
        slots.write_block(0, b"x")


def test_activating_a_non_image_is_refused(tmp_path: Path) -> None:
    slots = _store(tmp_path)
    slots.boot()
    _stage(slots, b"not an image at all" * 10)
    with pytest.raises(PlatformError):
        slots.activate()
    assert _boot_state(tmp_path)["pending"] is None


def test_state_files_are_replaced_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    slots = _store(tmp_path)
    slots.boot()
    before = (tmp_path / "boot.json").read_bytes()
    _stage(slots, make_firmware(V2, 3000, seed=2))

    def crash(*_args: object) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises((OSError, PlatformError)):
        slots.activate()
    monkeypatch.undo()
    # The old state is intact and no temporary file is left behind.
    assert (tmp_path / "boot.json").read_bytes() == before
    assert not [p for p in tmp_path.rglob(".*tmp-*")]
    assert LinuxSlots(tmp_path).boot().slot == "a"


def test_atomic_write_keeps_old_content_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "state.json"
    atomic_write(target, b"old")
    monkeypatch.setattr(os, "replace", lambda *_a: (_ for _ in ()).throw(OSError("cut")))
    with pytest.raises(OSError, match="cut"):
        atomic_write(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
