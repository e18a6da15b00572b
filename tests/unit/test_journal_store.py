"""Where the journal lives: a file on Linux, a failsafe flash record on the simulated MCU
(R2: a power cut during a journal write leaves the old or the new journal, N3: the
results that refuse replays survive)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from overair.agent.journal import FileJournalStore, RecordJournalStore
from overair.agent.machine.state import JobResult, Journal
from overair.agent.platform.sim_mcu import SimMcu
from overair.agent.platform.sim_mcu.flash import PowerCut
from overair.core.errors import DecodeError
from overair.core.versions import Version
from overair.sim.firmware import make_firmware

SECRET = b"journal test device secret 32 B."
UID = bytes.fromhex("00112233445566778899aabbccddeeff")


def _result(i: int, reason_length: int = 20) -> JobResult:
    # Random reasons: incompressible, the worst case for a compressed record.
    return JobResult(f"job-{i}", 1, "SUCCEEDED", (("reason", os.urandom(reason_length).hex()),), float(i))


def _journal(results: int) -> Journal:
    return Journal(results=tuple(JobResult(f"job-{i}", 1, "SUCCEEDED", (("reason", "ok"),), float(i))
                                 for i in range(results)), version_floor=Version(1, 2, 3))


def _device(flash: Path, cut: int | None = None) -> SimMcu:
    return SimMcu.open(flash, device_secret=SECRET, unique_id=UID, image_capacity=16 * 1024,
                       cut_after_writes=cut)


def _installed(tmp_path: Path) -> Path:
    flash = tmp_path / "flash.bin"
    device = _device(flash)
    device.install_factory(make_firmware(Version(1, 0, 0), 8 * 1024, seed="journal"))
    device.boot()
    return flash


def test_file_store_round_trips_and_sets_an_unreadable_journal_aside(tmp_path: Path) -> None:
    store = FileJournalStore(tmp_path)
    assert store.load() == Journal()
    store.save(_journal(3))
    assert store.load() == _journal(3)
    store.path.write_bytes(b"{not json")
    with pytest.raises(DecodeError):
        store.load(set_aside=False)
    assert store.load() == Journal()
    assert (tmp_path / "journal.json.corrupt").exists()


def test_record_store_drops_the_oldest_results_when_the_record_is_full() -> None:
    kept: list[bytes] = []
    store = RecordJournalStore(lambda: kept[-1] if kept else None, kept.append, capacity=600)
    journal = Journal(results=tuple(_result(i, reason_length=40) for i in range(64)))
    store.save(journal)
    loaded = store.load()
    assert len(kept[-1]) <= 600
    assert 0 < len(loaded.results) < 64
    assert loaded.results[-1] == journal.results[-1]  # the newest are kept


def test_sim_mcu_keeps_the_journal_in_encrypted_flash(tmp_path: Path) -> None:
    flash = _installed(tmp_path)
    _device(flash).journal_store(tmp_path).save(_journal(5))
    assert _device(flash).journal_store(tmp_path).load() == _journal(5)
    assert not list(tmp_path.glob("journal*"))  # nothing on the host file system
    assert b"job-4" not in flash.read_bytes()  # P1: encrypted like every file


def test_r2_power_cut_at_every_flash_operation_of_a_journal_write_keeps_old_or_new(tmp_path: Path) -> None:
    flash = _installed(tmp_path)
    _device(flash).journal_store(tmp_path).save(_journal(1))
    pristine = flash.read_bytes()
    probe = _device(flash)
    before = probe.flash.operations
    probe.journal_store(tmp_path).save(_journal(2))
    operations = probe.flash.operations - before
    assert operations >= 2  # erase(s) and a program
    for cut in range(1, operations + 1):
        flash.write_bytes(pristine)
        device = _device(flash)
        device.flash.cut_after_writes = device.flash.operations + cut
        with pytest.raises(PowerCut):
            device.journal_store(tmp_path).save(_journal(2))
        after = _device(flash).journal_store(tmp_path).load()
        assert after in (_journal(1), _journal(2)), f"cut {cut} of {operations}"
