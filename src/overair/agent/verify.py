"""Image verification before activation (threats N2 and N1), as one pure function.

Order matters: size first (cheap), then who signed (the signer chain to one of the
device's code-signing roots, usages, validity, revocation: core.codesign), then what
was signed (ECDSA/RSA signature over SHA-256 of the whole file), and only then the
image header, whose version the state machine compares with the running one. A
header is never trusted before the signature over it has been checked.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from cryptography import x509

from overair.agent.machine.events import VerifyResult
from overair.agent.machine.state import FileSpec
from overair.core.codesign import TrustPolicy, load_pem_certificates, sha256, verify_file_signature
from overair.core.errors import DecodeError, VerificationFailed
from overair.core.image import parse_header


def signer_chain(file: FileSpec, certfile_pem: bytes | None) -> list[x509.Certificate]:
    """The signer chain: from the job document's `overair.signer_chain`, else `certfile`."""
    try:
        if file.signer_chain:
            return [x509.load_der_x509_certificate(der) for der in file.signer_chain]
        if certfile_pem is not None:
            return load_pem_certificates(certfile_pem)
    except (ValueError, DecodeError) as exc:
        raise VerificationFailed(f"signer certificate is not readable: {exc}", code="BadCertificate") from exc
    raise VerificationFailed(f"no signer certificate: the job names certfile {file.certfile!r}, which the "
                             "device does not hold, and carries no signer chain",
                             code="MissingSignerCertificate")


def verify_image(data: bytes, file: FileSpec, trust: TrustPolicy, now: dt.datetime,
                 certfile_pem: bytes | None = None) -> VerifyResult:
    if len(data) != file.size:
        return VerifyResult(False, check="SizeMismatch",
                            message=f"received {len(data)} bytes, the job announced {file.size}")
    try:
        chain: Sequence[x509.Certificate] = signer_chain(file, certfile_pem)
        verify_file_signature(sha256(data), file.signature, chain, trust, now)
    except VerificationFailed as exc:
        return VerifyResult(False, check=exc.code, message=exc.message)
    try:
        header = parse_header(data)
    except DecodeError as exc:
        return VerifyResult(False, check="BadImage", message=exc.message)
    return VerifyResult(True, version=header.version, security_counter=header.security_counter)
