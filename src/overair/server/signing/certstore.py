"""The certificate store for code-signing certificates (the acm service).

A certificate is imported with its private key, or with a PKCS#11 URI naming a key
that stays in an HSM. Every import passes `import_checks.check_import` against the
operator's trusted code-signing roots. Software keys are kept only sealed (AES-GCM under
the master key, bound to the certificate's ARN); for HSM keys only the PIN is sealed.
Neither ever reaches the database, a log or an API answer in plaintext.

Revocation is final: a revoked certificate signs nothing more, signatures it made are
refused by CreateOTAUpdate, and its serial goes into the signed revocation list that
devices receive (`core/revocation.py`).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import func, select

from overair.core import codesign
from overair.core.errors import DecodeError, OverairError
from overair.server.api.contract import ApiError, invalid, not_found
from overair.server.clock import Clock
from overair.server.sealing import Sealer
from overair.server.settings import Settings
from overair.server.signing import import_checks
from overair.server.signing.keys import Pkcs11Key, Pkcs11Ref, SigningKey, SoftwareKey, parse_pkcs11_uri
from overair.server.storage.db import Database
from overair.server.storage.schema import SigningCertificate

log = logging.getLogger("overair.signing")
PKCS11_URI_PREFIX = b"pkcs11:"


def _key_context(arn: str) -> str:
    return f"signing-key:{arn}"


def rejected(exc: OverairError) -> ApiError:
    """An import refusal as the API reports it: ValidationException, check code first."""
    return ApiError("ValidationException", f"[{exc.code}] {exc.message}")


@dataclass(frozen=True, slots=True)
class CertificateFlags:
    development_only: bool
    self_signed: bool
    expires_soon: bool
    revoked: bool

    def names(self) -> list[str]:
        return [name for name, on in (("development-only", self.development_only),
                                      ("self-signed", self.self_signed),
                                      ("expires-within-30-days", self.expires_soon),
                                      ("revoked", self.revoked)) if on]


class CertificateStore:
    def __init__(self, db: Database, settings: Settings, sealer: Sealer, clock: Clock,
                 trusted_roots: Callable[[], Sequence[x509.Certificate]],
                 on_revoked: Callable[[], None] = lambda: None) -> None:
        self._db = db
        self._settings = settings
        self._sealer = sealer
        self._clock = clock
        self._trusted_roots = trusted_roots
        self.on_revoked = on_revoked
        self._hsm_keys: dict[str, Pkcs11Key] = {}
        self._hsm_lock = threading.Lock()

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self._clock(), dt.UTC)

    # Import -----------------------------------------------------------------------------
    def import_certificate(self, cert_pem: bytes, key: bytes, chain_pem: bytes = b"", *,
                           development_only: bool = False) -> str:
        """Check and store; returns the certificate ARN. `key` is a PEM private key or a
        PKCS#11 URI (RFC 7512, with module-path and pin-value) of a key in an HSM."""
        try:
            certs = codesign.load_pem_certificates(cert_pem)
            chain = codesign.load_pem_certificates(chain_pem) if chain_pem.strip() else []
        except DecodeError as exc:
            raise rejected(DecodeError(exc.message, code="CertificateParseError")) from exc
        if not certs:
            raise rejected(DecodeError("no certificate in the PEM", code="CertificateParseError"))
        cert = certs[0]
        arn = self._settings.arn("acm", f"certificate/{uuid.uuid4()}")
        hsm_key: Pkcs11Key | None = None
        try:
            if key.strip().startswith(PKCS11_URI_PREFIX):
                ref, pin = parse_pkcs11_uri(key.strip().decode())
                self._check_module(ref.module)
                hsm_key = Pkcs11Key(ref, pin)
                public_key: object = hsm_key.public_key()
                sealed = self._sealer.seal(pin.encode(), _key_context(arn))
                key_ref: dict[str, str] | None = ref.to_json()
            else:
                private_key = _load_private_key(key)
                public_key = private_key.public_key()
                der = private_key.private_bytes(serialization.Encoding.DER,
                                                serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption())
                sealed, key_ref = self._sealer.seal(der, _key_context(arn)), None
            accepted = import_checks.check_import(
                cert, chain, public_key, self._trusted_roots(), self.now(),
                allow_self_signed=self._settings.allow_self_signed_code_signing)
        except OverairError as exc:
            if hsm_key is not None:
                hsm_key.close()
            raise rejected(exc) from exc
        with self._db.session() as s:
            s.add(SigningCertificate(
                arn=arn, pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
                chain_pem=chain_pem.decode(), key_sealed=sealed,
                key_backend="software" if key_ref is None else "pkcs11", key_ref=key_ref,
                key_algorithm=accepted.key_algorithm, self_signed=accepted.self_signed,
                serial=format(cert.serial_number, "x"), subject=cert.subject.rfc4514_string(),
                not_before=cert.not_valid_before_utc.timestamp(),
                not_after=cert.not_valid_after_utc.timestamp(), status="ISSUED",
                development_only=development_only, imported_at=self._clock()))
        if hsm_key is not None:
            with self._hsm_lock:
                self._hsm_keys[arn] = hsm_key
        log.info("imported code-signing certificate %s (%s, %s key%s)", arn, cert.subject.rfc4514_string(),
                 accepted.key_algorithm, ", self-signed" if accepted.self_signed else "")
        return arn

    def _check_module(self, module: str) -> None:
        allowed = {str(Path(m).resolve()) for m in self._settings.pkcs11_modules}
        if str(Path(module).resolve()) not in allowed:
            raise import_checks.ImportRejected(
                f"PKCS#11 module {module} is not in the server's pkcs11_modules setting "
                "(overair.toml); only listed modules may be loaded", code="Pkcs11ModuleNotAllowed")

    # Reading ----------------------------------------------------------------------------
    def get(self, arn: str) -> SigningCertificate:
        with self._db.reading() as s:
            row = s.get(SigningCertificate, arn)
            if row is None:
                raise ApiError("ResourceNotFoundException", f"certificate {arn} not found")
            return row

    def list_certificates(self) -> list[SigningCertificate]:
        with self._db.reading() as s:
            return list(s.scalars(select(SigningCertificate).order_by(SigningCertificate.imported_at)))

    def flags(self, row: SigningCertificate) -> CertificateFlags:
        not_after = dt.datetime.fromtimestamp(row.not_after, dt.UTC)
        return CertificateFlags(row.development_only, row.self_signed,
                                import_checks.expires_soon(not_after, self.now()), row.status == "REVOKED")

    def chain_of(self, row: SigningCertificate) -> list[x509.Certificate]:
        chain = codesign.load_pem_certificates(row.pem.encode())[:1]
        if row.chain_pem.strip():
            chain += codesign.load_pem_certificates(row.chain_pem.encode())
        return chain

    def revoked_serials(self) -> frozenset[int]:
        with self._db.reading() as s:
            serials = s.scalars(select(SigningCertificate.serial)
                                .where(SigningCertificate.status == "REVOKED"))
            return frozenset(int(x, 16) for x in serials)

    def revocation_count(self) -> int:
        with self._db.reading() as s:
            return int(s.scalar(select(func.count()).select_from(SigningCertificate)
                                .where(SigningCertificate.status == "REVOKED")) or 0)

    # Changing ---------------------------------------------------------------------------
    def delete(self, arn: str, in_use: Callable[[str], bool]) -> None:
        with self._db.session() as s:
            row = s.get(SigningCertificate, arn)
            if row is None:
                raise ApiError("ResourceNotFoundException", f"certificate {arn} not found")
            if in_use(arn):
                raise ApiError("ResourceInUseException",
                               f"certificate {arn} is used by an active signing profile")
            if row.status == "REVOKED":
                # Its serial must stay on the revocation list devices receive.
                raise ApiError("ResourceInUseException",
                               f"certificate {arn} is revoked; it stays in the store so that it "
                               "stays on the revocation list")
            s.delete(row)
        self._forget_hsm_key(arn)

    def revoke(self, arn: str, reason: str) -> None:
        with self._db.session() as s:
            row = s.get(SigningCertificate, arn)
            if row is None:
                raise not_found(f"certificate {arn}")
            if row.status == "REVOKED":
                return  # idempotent
            row.status = "REVOKED"
            row.revoked_at = self._clock()
            row.revocation_reason = reason[:1024]
            row.key_sealed = None  # a revoked key is never used again: drop it
        self._forget_hsm_key(arn)
        log.warning("code-signing certificate %s revoked: %s", arn, reason)
        self.on_revoked()

    # Keys -------------------------------------------------------------------------------
    def signing_key(self, row: SigningCertificate) -> SigningKey:
        if row.status != "ISSUED":
            raise invalid(f"signing certificate {row.arn} is {row.status}")
        if row.key_sealed is None:
            raise invalid(f"certificate {row.arn} has no private key in the store")
        if row.key_backend == "pkcs11":
            with self._hsm_lock:
                cached = self._hsm_keys.get(row.arn)
                if cached is None:
                    assert row.key_ref is not None
                    pin = self._sealer.open(row.key_sealed, _key_context(row.arn)).decode()
                    cached = self._hsm_keys[row.arn] = Pkcs11Key(Pkcs11Ref.from_json(row.key_ref), pin)
                return cached
        private_key = serialization.load_der_private_key(
            self._sealer.open(row.key_sealed, _key_context(row.arn)), password=None)
        if not isinstance(private_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise invalid("unsupported signing key type")
        return SoftwareKey(private_key)

    def _forget_hsm_key(self, arn: str) -> None:
        with self._hsm_lock:
            key = self._hsm_keys.pop(arn, None)
        if key is not None:
            key.close()


def _load_private_key(pem: bytes) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        # Never echo the input: it is (or looks like) key material.
        raise import_checks.ImportRejected("the private key is not a readable unencrypted PEM key",
                                           code="PrivateKeyParseError") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise import_checks.ImportRejected(f"{type(key).__name__} keys are not supported",
                                           code="UnsupportedKey")
    return key
