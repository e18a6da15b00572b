"""Both platforms: resumable staging (R2), the persisted security counter (N1), factory
reset; the simulated MCU's factory paths cut at every flash write (R2); the Linux
platform's encryption at rest (P1, P3)."""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from overair.agent.platform.at_rest import IMAGES, derive_key
from overair.agent.platform.base import Platform, PlatformError
from overair.agent.platform.linux_slots import LinuxSlots
from overair.agent.platform.sim_mcu import PowerCut, SimMcu
from overair.agent.progress import StagedProgress, is_needed
from overair.agent.progress import binding as staging_binding
from overair.core import bitmap
from overair.core.versions import Version
from overair.sim.firmware import make_firmware

V1 = Version(1, 0, 0)
V2 = Version(1, 1, 0)
V3 = Version(1, 2, 0)
SECRET = b"device secret: 32 random bytes.."
UID = bytes.fromhex("00112233445566778899aabbccddeeff")
CAPACITY = 16 * 1024
BS = 1024
KEY = derive_key(SECRET, b"machine-one", IMAGES)

Factory = Callable[[Path], Platform]


def _sim(root: Path, cut: int | None = None, uid: bytes = UID) -> SimMcu:
    return SimMcu.open(root / "flash.bin", device_secret=SECRET, unique_id=uid, image_capacity=CAPACITY,
                       cut_after_writes=cut)


def _simp(root: Path) -> Platform:
    return _sim(root)


def _linux(root: Path) -> Platform:
    return LinuxSlots(root)


def _sealed(root: Path) -> Platform:
    return LinuxSlots(root, key=KEY)


PLATFORMS = pytest.mark.parametrize("make", [_linux, _sealed, _simp],
                                    ids=["linux", "linux-sealed", "sim_mcu"])


def _booted(make: Factory, root: Path) -> Platform:
    platform = make(root)
    platform.install_factory(make_firmware(V1, 5000, seed=1))
    platform.boot()
    return platform


def _bound(image: bytes, job: str = "job-1") -> bytes:
    return staging_binding(job, "s", 0, len(image), BS, b"sig")


def _needed(total: int, held: set[int]) -> bytes:
    return bitmap.make_bitmap([i for i in range(total) if i not in held], 0, total)


def _write(platform: Platform, image: bytes, blocks: list[int]) -> None:
    for i in blocks:
        platform.write_block(i * BS, image[i * BS:(i + 1) * BS])


# --- R2: resumable staging ----------------------------------------------------------------------

@PLATFORMS
def test_r2_partial_download_survives_a_reboot_and_completes(make: Factory, tmp_path: Path) -> None:
    image = make_firmware(V2, 11 * BS - 300, seed=2)
    total = math.ceil(len(image) / BS)
    platform = _booted(make, tmp_path)
    platform.create_staging(len(image), _bound(image), BS)
    _write(platform, image, [0, 1, 2, 3, 7])
    platform.save_progress(_needed(total, {0, 1, 2, 3, 7}))
    _write(platform, image, [8])  # written after the last save: not claimed
    platform = make(tmp_path)  # reset
    platform.boot()
    kept = platform.staged_progress()
    assert kept is not None
    assert (kept.binding, kept.size, kept.block_size) == (_bound(image), len(image), BS)
    assert [i for i in range(total) if not is_needed(kept.needed, i)] == [0, 1, 2, 3, 7]
    platform.resume_staging(kept)
    _write(platform, image, [i for i in range(total) if is_needed(kept.needed, i)])
    assert platform.read_staging() == image
    platform.activate()
    assert platform.staged_progress() is None  # the progress went with activation
    info = make(tmp_path).boot()
    assert (info.version, info.trial) == (V2, True)


@PLATFORMS
def test_r2_kept_progress_is_discarded_by_another_download_or_an_abort(make: Factory, tmp_path: Path) -> None:
    image = make_firmware(V2, 6 * BS, seed=2)
    platform = _booted(make, tmp_path)
    platform.create_staging(len(image), _bound(image), BS)
    _write(platform, image, [0, 1])
    platform.save_progress(_needed(6, {0, 1}))
    platform.close_staging()  # an agent stop keeps it
    platform = make(tmp_path)
    platform.boot()
    assert platform.staged_progress() is not None
    platform.create_staging(len(image), _bound(image, "job-2"), BS)  # another job
    assert make(tmp_path).staged_progress() is None
    platform.save_progress(_needed(6, set()))
    assert platform.staged_progress() is not None
    platform.abort_staging()
    assert platform.staged_progress() is None
    with pytest.raises(PlatformError):
        platform.resume_staging(StagedProgress(_bound(image), len(image), BS, _needed(6, set())))


@PLATFORMS
def test_r2_staging_without_a_binding_is_not_resumable(make: Factory, tmp_path: Path) -> None:
    platform = _booted(make, tmp_path)
    platform.create_staging(3000)
    with pytest.raises(PlatformError, match="resumable"):
        platform.save_progress(b"\x07")


def test_r2_sim_blocks_of_a_chunk_that_does_not_authenticate_are_needed_again(tmp_path: Path) -> None:
    image = make_firmware(V2, 11 * BS, seed=2)
    sim = _sim(tmp_path)
    sim.install_factory(make_firmware(V1, 5000, seed=1))
    sim.boot()
    sim.create_staging(len(image), _bound(image), BS)
    _write(sim, image, list(range(11)))
    sim.save_progress(_needed(11, set(range(11))))
    _spec, first = sim.efs._files["slot-b"]
    raw = bytearray((tmp_path / "flash.bin").read_bytes())
    raw[(first + 1) * sim.flash.sector_size + 100] ^= 0x01  # chunk 1: bytes 4060..8119
    (tmp_path / "flash.bin").write_bytes(bytes(raw))
    kept = _sim(tmp_path).staged_progress()
    assert kept is not None
    assert [i for i in range(11) if is_needed(kept.needed, i)] == [3, 4, 5, 6, 7]


def test_r2_sealed_linux_records_that_do_not_authenticate_are_needed_again(tmp_path: Path) -> None:
    image = make_firmware(V2, 6 * BS, seed=2)
    slots = _booted(_sealed, tmp_path)
    slots.create_staging(len(image), _bound(image), BS)
    _write(slots, image, list(range(6)))
    slots.save_progress(_needed(6, set(range(6))))
    part = tmp_path / "slots" / "b" / "image.bin.part"
    raw = bytearray(part.read_bytes())
    raw[33 + 2 * (BS + 28) + 40] ^= 0x01  # inside record 2
    part.write_bytes(bytes(raw))
    kept = _sealed(tmp_path).staged_progress()
    assert kept is not None
    assert [i for i in range(6) if is_needed(kept.needed, i)] == [2]


def test_r2_sim_cut_at_every_write_of_a_resumable_download_never_claims_a_lost_block(tmp_path: Path) -> None:
    image = make_firmware(V2, 9 * BS - 10, seed=3)
    total = 9
    template = tmp_path / "template"
    template.mkdir()
    _sim(template).install_factory(make_firmware(V1, 5000, seed=1))

    def cycle(sim: SimMcu) -> None:
        sim.boot()
        sim.create_staging(len(image), _bound(image), BS)
        for i in range(total):
            _write(sim, image, [i])
            if i % 2 == 1:
                sim.save_progress(_needed(total, set(range(i + 1))))

    reference = tmp_path / "ref"
    shutil.copytree(template, reference)
    sim = _sim(reference)
    cycle(sim)
    operations = sim.flash.operations
    resumed = 0
    for k in range(1, operations + 1):
        root = tmp_path / f"cut-{k}"
        shutil.copytree(template, root)
        with pytest.raises(PowerCut):
            cycle(_sim(root, cut=k))
        device = _sim(root)
        device.boot()
        kept = device.staged_progress()
        if kept is None:
            continue
        resumed += 1
        device.resume_staging(kept)
        data = device.read_staging()
        for i in range(total):
            if not is_needed(kept.needed, i):  # every block it claims is intact
                assert data[i * BS:(i + 1) * BS] == image[i * BS:(i + 1) * BS], (k, i)
        _write(device, image, [i for i in range(total) if is_needed(kept.needed, i)])
        assert device.read_staging() == image
    assert resumed > operations // 2


# --- N1: the security counter ---------------------------------------------------------------------

@PLATFORMS
def test_n1_security_counter_rises_at_commit_and_never_goes_down(make: Factory, tmp_path: Path) -> None:
    platform = _booted(make, tmp_path)
    assert platform.security_counter() == 0
    previous = 0
    for version, counter, expected in ((V2, 3, 3), (V3, 1, 3)):
        image = make_firmware(version, 4000, seed=str(version), security_counter=counter)
        platform.create_staging(len(image))
        platform.write_block(0, image)
        platform.activate()
        assert platform.security_counter() == previous  # activation alone raises nothing
        previous = expected
        platform = make(tmp_path)
        platform.boot()
        platform.commit()
        assert make(tmp_path).security_counter() == expected
    platform.factory_reset(make_firmware(V1, 5000, seed=1))
    assert make(tmp_path).security_counter() == 3


# --- factory reset ----------------------------------------------------------------------------------

@PLATFORMS
def test_factory_reset_boots_the_factory_image_and_drops_pending_state(make: Factory, tmp_path: Path) -> None:
    platform = _booted(make, tmp_path)
    for version in (V2, V3):
        image = make_firmware(version, 4000, seed=str(version))
        platform.create_staging(len(image))
        platform.write_block(0, image)
        platform.activate()
        platform = make(tmp_path)
        platform.boot()
        platform.commit()
    image = make_firmware(Version(1, 3, 0), 4 * BS, seed="pending")
    platform.create_staging(len(image))
    platform.write_block(0, image)
    platform.activate()  # pending, never booted
    platform.factory_reset()
    info = make(tmp_path).boot()
    assert (info.version, info.trial, info.fell_back) == (V1, False, False)
    assert make(tmp_path).staged_progress() is None
    states = {s.name: s.state for s in make(tmp_path).slots()}
    assert "pending" not in states.values()


def test_factory_reset_keeps_the_sim_device_secrets(tmp_path: Path) -> None:
    sim = _sim(tmp_path)
    sim.install_factory(make_firmware(V1, 5000, seed=1))
    sim.write_secret(b"device private key")
    sim.boot()
    sim.factory_reset()
    assert _sim(tmp_path).read_secret() == b"device private key"


def test_linux_factory_reset_uses_the_given_image_when_the_store_keeps_none(tmp_path: Path) -> None:
    slots = _booted(_linux, tmp_path)
    (tmp_path / "factory" / "image.bin").unlink()  # a store from before the factory copy
    with pytest.raises(PlatformError, match="no factory image"):
        slots.factory_reset()
    slots.factory_reset(make_firmware(Version(1, 0, 1), 3000, seed=9))
    assert LinuxSlots(tmp_path).boot().version == Version(1, 0, 1)


def _exhaustive_cuts(tmp_path: Path, prepare: Callable[[Path], None], action: Callable[[SimMcu], None],
                     allowed: set[Version]) -> int:
    """Run `action` on a copy of the prepared flash with a cut at each of its flash
    writes; after each cut a fresh boot must select a valid image in `allowed`."""
    template = tmp_path / "template"
    template.mkdir()
    prepare(template)
    reference = tmp_path / "reference"
    shutil.copytree(template, reference)
    sim = _sim(reference)
    action(sim)
    total = sim.flash.operations
    assert total > 0
    for k in range(1, total + 1):
        root = tmp_path / f"cut-{k}"
        shutil.copytree(template, root)
        with pytest.raises(PowerCut):
            action(_sim(root, cut=k))
        info = _sim(root).boot()
        assert info.version in allowed, (k, info)
        assert _sim(root).boot().version == info.version  # and it stays bootable
    return total


def _committed_v2(root: Path) -> None:
    sim = _sim(root)
    sim.install_factory(make_firmware(V1, 5000, seed=1))
    sim.boot()
    image = make_firmware(V2, 9000, seed=2)
    sim.create_staging(len(image))
    sim.write_block(0, image)
    sim.activate()
    sim.boot()
    sim.commit()


def test_r2_sim_factory_reset_cut_at_every_write_leaves_a_bootable_image(tmp_path: Path) -> None:
    def reset(sim: SimMcu) -> None:
        sim.boot()
        sim.factory_reset()

    total = _exhaustive_cuts(tmp_path, _committed_v2, reset, {V1, V2})
    assert total >= 3


def test_r2_sim_factory_recovery_at_boot_cut_at_every_write_recovers(tmp_path: Path) -> None:
    def broken(root: Path) -> None:
        _committed_v2(root)
        sim = _sim(root)
        raw = bytearray((root / "flash.bin").read_bytes())
        for name in ("slot-a", "slot-b"):
            _spec, first = sim.efs._files[name]
            raw[first * sim.flash.sector_size + 200] ^= 0x40
        (root / "flash.bin").write_bytes(bytes(raw))

    def boot(sim: SimMcu) -> None:
        sim.boot()

    total = _exhaustive_cuts(tmp_path, broken, boot, {V1})
    assert total >= 2


def test_r2_sim_first_install_cut_at_every_write_installs_on_the_next_try(tmp_path: Path) -> None:
    factory = make_firmware(V1, 5000, seed=1)

    def install(sim: SimMcu) -> None:
        sim.install_factory(factory)

    reference = tmp_path / "reference"
    reference.mkdir()
    sim = _sim(reference)
    install(sim)
    for k in range(1, sim.flash.operations + 1):
        root = tmp_path / f"cut-{k}"
        root.mkdir()
        with pytest.raises(PowerCut):
            install(_sim(root, cut=k))
        device = _sim(root)
        if device.is_empty():  # what the runtime checks at start: install again
            device.install_factory(factory)
        assert _sim(root).boot().version == V1, k


# --- P1, P3: the Linux platform's encryption at rest ------------------------------------------------

def test_p1_sealed_linux_slots_hold_no_plaintext_image_bytes(tmp_path: Path) -> None:
    factory = make_firmware(V1, 5000, seed=1)
    slots = LinuxSlots(tmp_path, key=KEY)
    slots.install_factory(factory)
    slots.boot()
    image = make_firmware(V2, 7 * BS, seed=2)
    slots.create_staging(len(image), _bound(image), BS)
    _write(slots, image, [0, 1, 2])
    slots.save_progress(_needed(7, {0, 1, 2}))
    stored = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink())
    for data in (factory, image[:3 * BS]):
        assert not any(data[i:i + 16] in stored for i in range(0, len(data) - 16, 7))
    _write(slots, image, [3, 4, 5, 6])
    slots.activate()
    stored = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink())
    assert not any(image[i:i + 16] in stored for i in range(0, len(image) - 16, 7))
    assert LinuxSlots(tmp_path, key=KEY).boot().version == V2


def test_p3_sealed_linux_slots_copied_to_another_machine_do_not_decrypt(tmp_path: Path) -> None:
    original = tmp_path / "original"
    slots = LinuxSlots(original, key=KEY)
    slots.install_factory(make_firmware(V1, 5000, seed=1))
    assert slots.boot().version == V1
    clone = tmp_path / "clone"
    shutil.copytree(original, clone, symlinks=True)
    other = LinuxSlots(clone, key=derive_key(SECRET, b"machine-two", IMAGES))
    with pytest.raises(PlatformError, match="does not decrypt"):
        other.boot()
    assert [s.valid for s in other.slots() if s.version is not None or s.valid is not None] == [False, False]
    with pytest.raises(PlatformError, match="does not decrypt"):
        other.factory_reset()
    assert LinuxSlots(clone, key=KEY).boot().version == V1  # the right machine reads it
