"""Image verification before activation (N2): every failing check is named."""

from __future__ import annotations

import datetime as dt

import pytest

from overair.agent.machine.state import FileSpec
from overair.agent.verify import verify_image
from overair.core.codesign import TrustPolicy
from overair.core.versions import Version
from overair.sim.firmware import make_firmware
from tests.pki_helpers import DAY, NOW, make_ca, make_signer, sign_file

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
    result = verify_image(IMAGE, _spec(), TRUST, NOW)
    assert result.ok
    assert result.version == Version(2, 0, 1)


def test_certfile_from_the_device_when_the_document_has_no_chain() -> None:
    assert verify_image(IMAGE, _spec(chain=()), TRUST, NOW, certfile_pem=SIGNER.cert_pem).ok
    result = verify_image(IMAGE, _spec(chain=()), TRUST, NOW, certfile_pem=None)
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
    result = verify_image(data, spec, trust, now)
    assert (result.ok, result.check) == (False, check)
    assert result.version is None
