"""P2 (booting a malicious image): `DeviceTrust.admit_boot` (agent/trust.py), the
decision the boot loader asks for at every boot of an installed image whose bytes the
platform found intact. The flash-level scenarios (flipped bytes, implanted images) are
in test_sim_mcu_platform.py; through a real agent on both platforms, with a signer
certificate that expires after the update, in tests/integration/test_agent_trust.py."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from overair.agent.trust import DeviceTrust
from overair.core.versions import Version
from overair.sim.firmware import make_firmware
from tests.pki_chain import make_intermediate
from tests.pki_helpers import DAY, NOW, Issued, make_ca, make_signer, sign_file

ROOT = make_ca("p2 code-signing root", not_before=NOW - 400 * DAY, not_after=NOW + 3650 * DAY)
IMAGE = make_firmware(Version(1, 1, 0), 4000, seed="p2")
DIGEST = hashlib.sha256(IMAGE).digest()


@dataclass(frozen=True)
class Installed:
    sha256: bytes
    signature: bytes | None
    signer_chain: tuple[bytes, ...]


def installed(signer: Issued, *intermediates: Issued) -> Installed:
    return Installed(DIGEST, sign_file(signer, IMAGE),
                     (signer.cert_der, *(i.cert_der for i in intermediates)))


def test_p2_image_signed_by_a_trusted_signer_boots() -> None:
    assert DeviceTrust((ROOT.cert,)).admit_boot(installed(make_signer(ROOT)))


def test_p2_image_whose_signer_certificate_expired_since_keeps_booting() -> None:
    """Verified at install time while its signer was valid: no time bomb at expiry."""
    expired = make_signer(ROOT, "expired signer", not_before=NOW - 300 * DAY, not_after=NOW - DAY)
    assert DeviceTrust((ROOT.cert,)).admit_boot(installed(expired))


def test_p2_expired_signer_is_still_refused_once_revoked() -> None:
    expired = make_signer(ROOT, "expired, then revoked", not_before=NOW - 300 * DAY, not_after=NOW - DAY)
    trust = DeviceTrust((ROOT.cert,), frozenset({expired.cert.serial_number}))
    assert not trust.admit_boot(installed(expired))


def test_p2_image_of_a_revoked_signer_stops_booting_at_once() -> None:
    signer = make_signer(ROOT)
    assert not DeviceTrust((ROOT.cert,), frozenset({signer.cert.serial_number})).admit_boot(installed(signer))


def test_p2_image_under_a_rotated_out_root_stops_booting() -> None:
    signer = make_signer(ROOT)
    assert not DeviceTrust((make_ca("the new root").cert,)).admit_boot(installed(signer))


def test_p2_expired_intermediate_keeps_booting_but_a_chain_never_valid_at_once_does_not() -> None:
    intermediate = make_intermediate(ROOT, not_before=NOW - 300 * DAY, not_after=NOW - 200 * DAY)
    in_time = make_signer(intermediate, "signed while its CA was valid", not_before=NOW - 250 * DAY,
                          not_after=NOW - 100 * DAY)
    assert DeviceTrust((ROOT.cert,)).admit_boot(installed(in_time, intermediate))
    late = make_signer(intermediate, "issued after its CA expired", not_before=NOW - 100 * DAY)
    assert not DeviceTrust((ROOT.cert,)).admit_boot(installed(late, intermediate))


def test_p2_tampered_or_foreign_signature_never_boots() -> None:
    signer = make_signer(ROOT)
    rogue = make_signer(make_ca("rogue root"))
    trust = DeviceTrust((ROOT.cert,))
    assert not trust.admit_boot(installed(rogue))
    other = Installed(hashlib.sha256(b"other").digest(), sign_file(signer, IMAGE), (signer.cert_der,))
    assert not trust.admit_boot(other)
    assert not trust.admit_boot(Installed(DIGEST, sign_file(signer, IMAGE), ()))
    assert not trust.admit_boot(Installed(DIGEST, sign_file(signer, IMAGE), (b"\x30\x03garbage",)))


def test_p2_unsigned_image_boots_only_as_the_pinned_factory_image() -> None:
    trust = DeviceTrust((ROOT.cert,))
    unsigned = Installed(DIGEST, None, ())
    assert trust.admit_boot(unsigned, factory_sha256=DIGEST)
    assert not trust.admit_boot(unsigned, factory_sha256=hashlib.sha256(b"another factory").digest())
    assert not trust.admit_boot(unsigned)
