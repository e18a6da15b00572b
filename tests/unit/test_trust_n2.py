"""N2 (mis-signed update): `DeviceTrust.admit_image` (agent/trust.py), every failing check named."""

from __future__ import annotations

import datetime as dt

import pytest

from overair.agent.machine import commands as c
from overair.agent.machine import reasons
from overair.agent.machine.events import VerifyResult
from overair.agent.machine.state import FileSpec
from overair.agent.trust import DeviceTrust
from overair.core.codesign import TrustPolicy
from overair.core.image import parse_header
from overair.core.versions import Version
from overair.sim.firmware import make_firmware
from tests.pki_helpers import DAY, NOW, make_ca, make_signer, sign_file
from tests.unit.test_agent_machine import run, statuses, verifying


def admit_image(data: bytes, spec: FileSpec, trust: TrustPolicy, now: dt.datetime) -> VerifyResult:
    """N2 as the agent decides it (agent/trust.py), for a plain code-signing policy."""
    return DeviceTrust.of(trust).admit_image(data, spec, now)

ROOT = make_ca("code-signing root")
SIGNER = make_signer(ROOT)
TRUST = TrustPolicy((ROOT.cert,))
IMAGE = make_firmware(Version(2, 0, 1), 3000, seed="verify")


def _spec(data: bytes = IMAGE, signature: bytes | None = None, chain: tuple[bytes, ...] = (SIGNER.cert_der,),
          size: int | None = None) -> FileSpec:
    return FileSpec(stream="s", file_id=0, size=len(data) if size is None else size,
                    signature=sign_file(SIGNER, data) if signature is None else signature,
                    signature_key="sig-sha256-ecdsa", certfile="signer.crt", signer_chain=chain)


def test_good_image_yields_its_header_version() -> None:
    result = admit_image(IMAGE, _spec(), TRUST, NOW)
    assert result.ok
    assert result.version == Version(2, 0, 1)


def test_n2_image_without_a_signer_chain_in_its_job_is_refused() -> None:
    result = admit_image(IMAGE, _spec(chain=()), TRUST, NOW)
    assert (result.ok, result.check) == (False, "MissingSignerCertificate")


@pytest.mark.parametrize(("data", "spec", "trust", "now", "check"), [
    (IMAGE[:-1] + b"\0", _spec(), TRUST, NOW, "BadSignature"),
    (IMAGE, _spec(size=len(IMAGE) + 1), TRUST, NOW, "SizeMismatch"),
    (IMAGE, _spec(signature=sign_file(make_signer(make_ca("other")), IMAGE)), TRUST, NOW, "BadSignature"),
    (IMAGE, _spec(chain=(make_signer(make_ca("other")).cert_der,)), TRUST, NOW, "UntrustedChain"),
    (IMAGE, _spec(), TrustPolicy((ROOT.cert,), frozenset({SIGNER.cert.serial_number})), NOW,
     "CertificateRevoked"),
    (IMAGE, _spec(), TRUST, NOW + 400 * DAY, "CertificateExpired"),
    (IMAGE, _spec(chain=(b"not a certificate",)), TRUST, NOW, "BadCertificate"),
    (b"signed but not an image", _spec(b"signed but not an image"), TRUST, NOW, "BadImage"),
])
def test_each_failing_check_is_named(data: bytes, spec: FileSpec, trust: TrustPolicy, now: dt.datetime,
                                     check: str) -> None:
    result = admit_image(data, spec, trust, now)
    assert (result.ok, result.check) == (False, check)
    assert result.version is None


# --- N2 at the agent level: each mis-signed image is refused, named, and never activated ------

def _n2_cases() -> list[tuple[str, bytes, FileSpec, TrustPolicy, dt.datetime, str, str]]:
    other_signer = make_signer(make_ca("attacker root"))
    no_code_signing = make_signer(ROOT, eku=False)
    flipped = bytearray(IMAGE)
    flipped[len(IMAGE) // 2] ^= 0x01
    revoked = TrustPolicy((ROOT.cert,), frozenset({SIGNER.cert.serial_number}))
    return [
        ("wrong key", IMAGE, _spec(signature=sign_file(other_signer, IMAGE)), TRUST, NOW,
         "BadSignature", "0x000000e3: 0x00000001"),
        ("one flipped byte", bytes(flipped), _spec(), TRUST, NOW, "BadSignature", "0x000000e3: 0x00000001"),
        ("wrong EKU", IMAGE,
         _spec(signature=sign_file(no_code_signing, IMAGE), chain=(no_code_signing.cert_der,)), TRUST, NOW,
         "MissingCodeSigningUsage", "0x000000e7: 0x00000002"),
        ("expired", IMAGE, _spec(), TRUST, NOW + 400 * DAY, "CertificateExpired", "0x000000e7: 0x00000004"),
        ("revoked", IMAGE, _spec(), revoked, NOW, "CertificateRevoked", "0x000000e7: 0x00000006"),
        ("untrusted chain", IMAGE,
         _spec(signature=sign_file(other_signer, IMAGE), chain=(other_signer.cert_der,)), TRUST, NOW,
         "UntrustedChain", "0x000000e7: 0x00000001"),
    ]


N2_CASES = _n2_cases()


@pytest.mark.parametrize(("case", "data", "spec", "trust", "now", "check", "reason"), N2_CASES,
                         ids=[case[0].replace(" ", "-") for case in N2_CASES])
def test_n2_agent_refuses_a_mis_signed_image_with_a_named_reason(
        case: str, data: bytes, spec: FileSpec, trust: TrustPolicy, now: dt.datetime, check: str,
        reason: str) -> None:
    result = admit_image(data, spec, trust, now)
    assert (result.ok, result.check) == (False, check), case
    state, commands = run(verifying(), [result])
    (status,) = statuses(commands)
    expected = {"reason": reason, "check": check, "detail": reasons.detail(result.message)}
    assert status[:2] == ("FAILED", expected)
    assert any(isinstance(x, c.AbortStaging) for x in commands)
    assert not any(isinstance(x, c.ActivateAndReboot) for x in commands)
    assert state.journal.job is None


def test_n1_security_counter_comes_from_the_signed_header_and_cannot_be_changed() -> None:
    image = make_firmware(Version(2, 0, 1), 3000, seed="counter", security_counter=7)
    assert parse_header(image).security_counter == 7
    assert parse_header(IMAGE).security_counter == 0  # images from before the counter: 0
    result = admit_image(image, _spec(image), TRUST, NOW)
    assert (result.ok, result.security_counter) == (True, 7)
    lowered = image[:5] + (1).to_bytes(3, "big") + image[8:]  # an attacker lowers the counter
    result = admit_image(lowered, _spec(lowered, signature=sign_file(SIGNER, image)), TRUST, NOW)
    assert (result.ok, result.check) == (False, "BadSignature")
    with pytest.raises(ValueError):
        make_firmware(Version(2, 0, 1), 3000, security_counter=1 << 24)
