"""Image verification before activation (threats N2 and N1), as one pure function.

Order matters: size first (cheap), then who signed (the signer chain to one of the
device's code-signing roots, usages, validity, revocation of the signer and of every
intermediate CA: core.codesign), then what was signed (ECDSA/RSA signature over SHA-256
of the whole file), and only then the image header, whose version the state machine
compares with the running one. A header is never trusted before the signature over it
has been checked.

The signer chain comes from the job document's `overair.signer_chain` and nowhere
else. The document's `certfile` is a path on a FreeRTOS device (device-protocol.md §2);
the overair agent never opens a path a job names (N2: a job must not choose which local
file is read, or which certificate is trusted), so a job without a chain is refused.

Everything in `FileSpec` came from the network: `verify_image` returns a failed
`VerifyResult` naming the check for any content, and raises nothing.
"""

from __future__ import annotations

import datetime as dt

from cryptography import x509

from overair.agent.machine.events import VerifyResult
from overair.agent.machine.state import FileSpec
from overair.core.codesign import TrustPolicy, load_der_chain, sha256, verify_file_signature
from overair.core.errors import DecodeError, VerificationFailed
from overair.core.image import parse_header


def signer_chain(file: FileSpec) -> list[x509.Certificate]:
    """The signer chain (signer first) from the job document's `overair.signer_chain`."""
    if not file.signer_chain:
        raise VerificationFailed("no signer certificate: the job document carries no overair.signer_chain "
                                 "(the agent never reads a certificate from a path the job names)",
                                 code="MissingSignerCertificate")
    return load_der_chain(file.signer_chain)


def verify_image(data: bytes, file: FileSpec, trust: TrustPolicy, now: dt.datetime) -> VerifyResult:
    if len(data) != file.size:
        return VerifyResult(False, check="SizeMismatch",
                            message=f"received {len(data)} bytes, the job announced {file.size}")
    try:
        verify_file_signature(sha256(data), file.signature, signer_chain(file), trust, now)
    except VerificationFailed as exc:
        return VerifyResult(False, check=exc.code, message=exc.message)
    try:
        header = parse_header(data)
    except DecodeError as exc:
        return VerifyResult(False, check="BadImage", message=exc.message)
    return VerifyResult(True, version=header.version, security_counter=header.security_counter)
