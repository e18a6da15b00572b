"""The simulated NOR flash: program/erase semantics, wear counters, power cuts (R2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from overair.agent.platform.sim_mcu.flash import Flash, FlashError, PowerCut


def test_new_flash_is_erased_and_program_clears_bits(tmp_path: Path) -> None:
    flash = Flash(tmp_path / "f.bin", sectors=4, sector_size=256)
    assert flash.read(0, 4 * 256) == b"\xff" * 1024
    flash.program(10, b"\xf0\x0f")
    flash.program(10, b"\x30\x03")  # only clears more bits: allowed
    assert flash.read(10, 2) == b"\x30\x03"


def test_program_without_erase_is_refused(tmp_path: Path) -> None:
    flash = Flash(tmp_path / "f.bin", sectors=4, sector_size=256)
    flash.program(0, b"\x00")
    with pytest.raises(FlashError, match="needs an erase"):
        flash.program(0, b"\x01")
    assert flash.read(0, 1) == b"\x00"  # unchanged
    flash.erase(0)
    flash.program(0, b"\x01")
    assert flash.read(0, 1) == b"\x01"


def test_erase_sets_ff_and_wear_counters_count_erases(tmp_path: Path) -> None:
    flash = Flash(tmp_path / "f.bin", sectors=4, sector_size=256)
    flash.program(256, b"\x00" * 256)
    for _ in range(3):
        flash.erase(1)
    flash.erase(2)
    assert flash.read(256, 256) == b"\xff" * 256
    assert [flash.wear(s) for s in range(4)] == [0, 3, 1, 0]
    # The counters persist across resets.
    flash.close()
    assert [Flash(tmp_path / "f.bin", sectors=4, sector_size=256).wear(s) for s in range(4)] == [0, 3, 1, 0]


def test_out_of_range_and_geometry_mismatch(tmp_path: Path) -> None:
    flash = Flash(tmp_path / "f.bin", sectors=2, sector_size=256)
    with pytest.raises(FlashError):
        flash.program(510, b"\x00" * 4)
    with pytest.raises(FlashError):
        flash.erase(2)
    with pytest.raises(FlashError, match="needs"):
        Flash(tmp_path / "f.bin", sectors=3, sector_size=256)


def test_r2_power_cut_leaves_a_program_half_done_and_the_device_dead(tmp_path: Path) -> None:
    flash = Flash(tmp_path / "f.bin", sectors=2, sector_size=256, cut_after_writes=2)
    flash.program(0, b"\x01" * 8)  # operation 1
    with pytest.raises(PowerCut):
        flash.program(100, b"\x00" * 8)  # operation 2: half of it lands
    assert flash.operations == 2
    with pytest.raises(PowerCut):
        flash.read(0, 1)  # powered off
    after = Flash(tmp_path / "f.bin", sectors=2, sector_size=256)  # the reset
    assert after.read(100, 8) == b"\x00" * 4 + b"\xff" * 4
    assert after.read(0, 8) == b"\x01" * 8


def test_r2_power_cut_leaves_a_sector_half_erased(tmp_path: Path) -> None:
    flash = Flash(tmp_path / "f.bin", sectors=2, sector_size=256, cut_after_writes=2)
    flash.program(0, b"\x00" * 256)
    with pytest.raises(PowerCut):
        flash.erase(0)
    after = Flash(tmp_path / "f.bin", sectors=2, sector_size=256)
    assert after.read(0, 256) == b"\xff" * 128 + b"\x00" * 128
    assert after.wear(0) == 1
