"""Fuzz target: core/codesign.py loading and checking the signer chain a job document
carries (N2), and agent/trust.py around it. `cryptography` parses a certificate's
extensions and key lazily, so a certificate that loads can still raise ValueError in
the middle of a check (a crash of the agent before issue 12). Whatever the chain, the
signature or the image, only `VerificationFailed` may escape the codesign functions,
and `verify_image` returns a result and raises nothing.

Inputs: random bytes, real certificates with bytes flipped or cut, and certificates
correctly signed by the trusted root whose extensions hold garbage.
"""

from __future__ import annotations

import contextlib
import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtensionOID, NameOID
from hypothesis import example, given
from hypothesis import strategies as st

from overair.agent.machine.events import VerifyResult
from overair.agent.machine.state import FileSpec
from overair.agent.trust import DeviceTrust
from overair.core.codesign import TrustPolicy, load_der_chain, sha256, verify_file_signature
from overair.core.errors import VerificationFailed
from overair.core.versions import Version
from overair.sim.firmware import make_firmware
from tests.pki_helpers import DAY, NOW, make_ca, make_signer, sign_file


def admit_image(data: bytes, spec: FileSpec, trust: TrustPolicy, now: dt.datetime) -> VerifyResult:
    """N2 as the agent decides it (agent/trust.py), for a plain code-signing policy."""
    return DeviceTrust.of(trust).admit_image(data, spec, now)

ROOT = make_ca("fuzz code-signing root")
SIGNER = make_signer(ROOT)
TRUST = TrustPolicy((ROOT.cert,))
IMAGE = make_firmware(Version(1, 1, 0), 600, seed="fuzz")
SIGNATURE = sign_file(SIGNER, IMAGE)
LEAF_KEY = ec.generate_private_key(ec.SECP256R1())
EXTENSIONS = [ExtensionOID.KEY_USAGE, ExtensionOID.EXTENDED_KEY_USAGE, ExtensionOID.BASIC_CONSTRAINTS,
              ExtensionOID.SUBJECT_ALTERNATIVE_NAME, ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
              ExtensionOID.SUBJECT_KEY_IDENTIFIER, ExtensionOID.NAME_CONSTRAINTS,
              ExtensionOID.CERTIFICATE_POLICIES, x509.ObjectIdentifier("1.2.3.4")]


def _check(chain: list[bytes], signature: bytes = SIGNATURE) -> None:
    with contextlib.suppress(VerificationFailed):
        verify_file_signature(sha256(IMAGE), signature, load_der_chain(chain), TRUST, NOW)
    spec = FileSpec(stream="s", file_id=0, size=len(IMAGE), signature=signature,
                    signature_key="sig-sha256-ecdsa", certfile="", signer_chain=tuple(chain))
    if admit_image(IMAGE, spec, TRUST, NOW).ok:
        # Accepted only with the content the root signed (DER may differ where unsigned).
        assert load_der_chain(chain)[0].tbs_certificate_bytes == SIGNER.cert.tbs_certificate_bytes


@given(st.lists(st.binary(max_size=300), max_size=3), st.binary(max_size=80))
def test_fuzz_codesign_random_chain_and_signature(chain: list[bytes], signature: bytes) -> None:
    _check(chain, signature)


@given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), min_size=1, max_size=4),
       st.integers(0, 10_000), st.booleans())
@example(flips=[(125, 1), (361, 1)], cut=1, with_root=False)  # unknown signature OID: KeyError
@example(flips=[(12, 1)], cut=1, with_root=False)  # version 4: InvalidVersion, no ValueError
@example(flips=[(262, 1)], cut=1, with_root=False)  # DuplicateExtension, no ValueError
def test_fuzz_codesign_real_certificate_flipped_or_cut(flips: list[tuple[int, int]], cut: int,
                                                       with_root: bool) -> None:
    der = bytearray(SIGNER.cert_der)
    for position, mask in flips:
        der[position % len(der)] ^= mask
    chain = [bytes(der[:max(1, cut % (len(der) + 1))]) if cut % 3 == 0 else bytes(der)]
    if with_root:
        chain.append(ROOT.cert_der)
    _check(chain)


@given(st.lists(st.tuples(st.sampled_from(EXTENSIONS), st.binary(max_size=40), st.booleans()),
                min_size=1, max_size=3, unique_by=lambda e: e[0].dotted_string))
def test_fuzz_codesign_trusted_certificate_with_garbage_extensions(
        extensions: list[tuple[x509.ObjectIdentifier, bytes, bool]]) -> None:
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fuzzed signer")]))
               .issuer_name(ROOT.cert.subject).public_key(LEAF_KEY.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(NOW - DAY).not_valid_after(NOW + DAY))
    for oid, value, critical in extensions:
        builder = builder.add_extension(x509.UnrecognizedExtension(oid, value), critical=critical)
    cert = builder.sign(ROOT.key, hashes.SHA256())
    _check([cert.public_bytes(Encoding.DER)])
