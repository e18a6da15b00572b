"""The encrypted file system: confidentiality (P1), device binding (P3), records bound
to their name and position, and power-safe failsafe writes (R2)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from overair.agent.platform.sim_mcu.efs import Efs, EfsAuthError, EfsFile
from overair.agent.platform.sim_mcu.flash import Flash, PowerCut

SECRET = b"device secret of 32 bytes.......!"
UID = bytes(range(16))
OTHER_UID = bytes(range(1, 17))
LAYOUT = [EfsFile("cfg", "failsafe", 1), EfsFile("keys", "failsafe", 1), EfsFile("img", "bulk", 4)]
SECTORS = Efs.sectors_needed(LAYOUT)


def _efs(path: Path, uid: bytes = UID, cut: int | None = None) -> Efs:
    flash = Flash(path, sectors=SECTORS, sector_size=1024, cut_after_writes=cut)
    return Efs(flash, device_secret=SECRET, unique_id=uid, layout=LAYOUT)


def test_failsafe_files_round_trip_and_alternate_copies(tmp_path: Path) -> None:
    efs = _efs(tmp_path / "f.bin")
    assert not efs.mount()
    efs.format()
    assert efs.mount()
    assert efs.read("cfg") is None
    for i in range(5):
        efs.write("cfg", f"value {i}".encode())
    assert efs.read("cfg") == b"value 4"
    fresh = _efs(tmp_path / "f.bin")  # no cache: read back from flash
    assert fresh.mount()
    assert fresh.read("cfg") == b"value 4"
    # Two copies, each erased every other write.
    assert [fresh.flash.wear(s) for s in range(2, 4)] == [3, 2]


def test_p1_nothing_is_stored_in_plaintext(tmp_path: Path) -> None:
    efs = _efs(tmp_path / "f.bin")
    efs.format()
    key = b"-----BEGIN PRIVATE KEY----- secret key material 0123456789"
    efs.write("keys", key)
    payload = bytes(range(256)) * 8
    generation = b"g" * 16
    for i in range(2):
        efs.write_chunk("img", generation, i, payload[i * 900:(i + 1) * 900])
    raw = (tmp_path / "f.bin").read_bytes()
    assert all(payload[i:i + 16] not in raw for i in range(0, len(payload) - 16))
    assert all(key[i:i + 16] not in raw for i in range(len(key) - 16))
    assert SECRET not in raw
    assert efs.read_chunk("img", generation, 1) == payload[900:1800]


def test_p3_a_copy_on_another_device_does_not_mount(tmp_path: Path) -> None:
    efs = _efs(tmp_path / "f.bin")
    efs.format()
    efs.write("keys", b"the device key")
    shutil.copy(tmp_path / "f.bin", tmp_path / "clone.bin")
    clone = _efs(tmp_path / "clone.bin", uid=OTHER_UID)
    with pytest.raises(EfsAuthError, match="another device"):
        clone.mount()
    assert clone.read("keys") is None  # nothing authenticates either
    assert _efs(tmp_path / "clone.bin").read("keys") == b"the device key"  # same id: it is the device


def test_records_are_bound_to_their_file_generation_and_position(tmp_path: Path) -> None:
    efs = _efs(tmp_path / "f.bin")
    efs.format()
    efs.write("cfg", b"config")
    efs.write("keys", b"keys")
    gen = b"1" * 16
    efs.write_chunk("img", gen, 0, b"chunk zero")
    efs.write_chunk("img", gen, 1, b"chunk one")
    assert efs.read_chunk("img", b"2" * 16, 0) is None  # another generation
    raw = bytearray((tmp_path / "f.bin").read_bytes())
    # Swap the two chunks, and copy the cfg record over the keys record.
    img0 = Efs.sectors_needed(LAYOUT) - 4
    a, b = img0 * 1024, (img0 + 1) * 1024
    raw[a:a + 1024], raw[b:b + 1024] = raw[b:b + 1024], raw[a:a + 1024]
    raw[4 * 1024:5 * 1024] = raw[2 * 1024:3 * 1024]
    (tmp_path / "f.bin").write_bytes(bytes(raw))
    swapped = _efs(tmp_path / "f.bin")
    assert swapped.read_chunk("img", gen, 0) is None
    assert swapped.read_chunk("img", gen, 1) is None
    assert swapped.read("keys") is None
    assert swapped.read("cfg") == b"config"


def test_r2_a_failsafe_write_cut_at_any_point_keeps_the_old_or_the_new_content(tmp_path: Path) -> None:
    base = tmp_path / "base.bin"
    efs = _efs(base)
    efs.format()
    efs.write("cfg", b"old content")
    k = 1
    while True:
        path = tmp_path / f"cut{k}.bin"
        shutil.copy(base, path)
        device = _efs(path, cut=k)
        try:
            device.write("cfg", b"new content")
        except PowerCut:
            assert _efs(path).read("cfg") == b"old content"
            k += 1
            continue
        assert _efs(path).read("cfg") == b"new content"
        break
    assert k == 3  # erase + program: two cut points, then a complete write
