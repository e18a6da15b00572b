"""Every trust decision of the overair agent, in one pure place (threats N1 N2 N3 O2 P2).

The model is python-tuf's `TrustedMetadataSet`: one object holds what the device
trusts, each input is offered to it, and it either refuses the input (saying why) or
returns the next trusted state; it reads no clock, file or socket. The runtime only
does the I/O around it: it reads the staged image, persists an admitted revocation list
atomically, and hands the platform's boot loader `admit_boot`.

What is trusted, and where it is kept:

- `DeviceTrust` (this module): the code-signing roots, deployment keys and revoked
  serials of the bundle (configuration), the revocation signer's certificate, the newest
  signed revocation list admitted, and the newest trust list admitted (core/trustlist.py:
  the roots and deployment keys that replace the bundle's after a rotation). The runtime
  persists the signed revocation list and the trust list chain exactly as received, so
  that each proves itself again (from the bundle) at every start.
- The version floor and the finished jobs are in the machine's journal, and the
  security counter in the platform's boot state, because each must change in the same
  atomic write as the job stage or the commit it belongs to (R2). The decisions on them
  are still made here, by the pure functions below, given those values.

One home per decision:

| threat | decision                                                   | here                   |
|--------|------------------------------------------------------------|------------------------|
| N1     | a verified image older than the floor or below the counter | `admit_version`        |
| N1     | the floor rises to a confirmed image's version at boot     | `floor_after_boot`     |
| N2     | image signature, signer chain, usages, validity            | `DeviceTrust.admit_image` |
| N3     | a finished job offered again is a replay                   | `is_replay`            |
| O2     | a revocation list is signed and never goes back            | `DeviceTrust.admit_revocations` |
| O2     | revoked serials (configured and signed) refuse signers     | `DeviceTrust.policy`   |
| O2 F2  | a trust list rotates roots and deployment keys (TUF rule)  | `DeviceTrust.admit_trust_chain` |
| O2 F2  | the roots and deployment keys that hold now                | `DeviceTrust` properties |
| P2     | an installed image boots only under the trust held now     | `DeviceTrust.admit_boot` |
| F1 F2  | signed, fresh deployment metadata for this thing and files | `admit_deployment`     |
| F1 F2  | the downloaded file is the one the metadata describes      | `admit_deployed_image` |
| F1     | a job whose metadata expired is not acted on               | `deployment_expired`   |
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Protocol
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from overair.agent.machine import reasons
from overair.agent.machine.events import VerifyResult
from overair.agent.machine.state import FileSpec, JobResult, Settings
from overair.core import deployment as signed_deployment
from overair.core.codesign import TrustPolicy, load_der_chain, sha256, verify_file_signature
from overair.core.deployment import Deployment
from overair.core.errors import DecodeError, VerificationFailed
from overair.core.image import parse_header
from overair.core.jobdoc import OtaJobDocument
from overair.core.jobstates import ExecStatus
from overair.core.revocation import RevocationList, merged_serials, verify_list
from overair.core.trustlist import TrustList, admit_next, anchor_of, decode_chain
from overair.core.versions import Version

# --- N1: anti-rollback -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why an input was refused: the FreeRTOS `reason`, the overair `check` (may be
    empty) and a human-readable detail."""

    reason: str
    check: str
    detail: str


def admit_version(version: Version, security_counter: int, *, running: Version,
                  floor: Version | None, device_counter: int) -> Refusal | None:
    """N1: a verified image may be activated only if its security counter is not below
    the device's and its version is newer than both the running version and the floor
    (the newest version this device ever confirmed). None: admitted."""
    if security_counter < device_counter:
        # An image from before a security fix never runs again, whatever its version.
        return Refusal(reasons.rejected(reasons.ERR_DOWNGRADE_NOT_ALLOWED), reasons.SECURITY_COUNTER_CHECK,
                       f"image security counter {security_counter} is below the device's {device_counter}")
    reference = max(running, floor or running)
    if version <= reference:
        # A correctly signed older (or the same) image never runs.
        code = reasons.ERR_SAME_FIRMWARE_VERSION if version == reference \
            else reasons.ERR_DOWNGRADE_NOT_ALLOWED
        return Refusal(reasons.rejected(code), "", f"image version {version} is not newer than {reference}")
    return None


def floor_after_boot(floor: Version | None, running: Version, *, trial: bool) -> Version | None:
    """N1: booting a confirmed image raises the floor to it; a trial image does not
    (it may still be rolled back)."""
    if not trial and (floor is None or running > floor):
        return running
    return floor


# --- N3: replays --------------------------------------------------------------------------------


def is_replay(recorded: JobResult, execution_number: int | None) -> bool:
    """N3: a job this device finished, offered again. Only a new execution of a failed
    job (a retry, with a higher execution number) may run; a succeeded job, or any
    execution whose number cannot be compared, is a replay whose recorded result is
    repeated instead."""
    if recorded.status == ExecStatus.SUCCEEDED.value:
        return True
    if execution_number is None or recorded.execution_number is None:
        return True
    return execution_number <= recorded.execution_number


# --- F1 F2: signed, expiring deployment metadata ----------------------------------------------


def _deployment_refusal(check: str, detail: str) -> Refusal:
    return Refusal(reasons.check_reason(check), check, detail)


def admit_deployment(envelope: Any, settings: Settings, *, held_sequence: int, job_id: str,
                     doc: OtaJobDocument, url: str | None, now: float) -> Deployment | Refusal | None:
    """F1 F2: the job document's `overair.deployment` (a DSSE envelope, core/deployment.py)
    is admitted only if a trusted deployment key signed it, it has not expired, its
    sequence is not below the newest admitted (a replayed older delivery), and it binds
    exactly this job, this thing, the document's files (name and size; the SHA-256,
    version and counter are checked on the downloaded file by `admit_deployed_image`),
    stream and URL path. None: no metadata, and none is required (the job goes on
    unsigned, as before); a Refusal fails the job."""
    if envelope is None or not settings.deployment_keys:
        if settings.require_deployment:
            return _deployment_refusal("MissingDeploymentMetadata",
                                       "the job carries no signed deployment metadata and this device "
                                       "requires it")
        return None
    try:
        stated = signed_deployment.verify(envelope, settings.deployment_keys)
    except DecodeError as exc:
        return _deployment_refusal("BadDeploymentMetadata", exc.message)
    except VerificationFailed as exc:
        return _deployment_refusal(exc.code, exc.message)
    if stated.expires <= now:
        return _deployment_refusal("DeploymentMetadataExpired",
                                   f"deployment metadata expired {now - stated.expires:.0f} s ago")
    if stated.sequence < held_sequence:
        return _deployment_refusal("DeploymentMetadataReplayed",
                                   f"deployment metadata {stated.sequence} is older than the newest "
                                   f"admitted, {held_sequence}")
    if stated.thing != settings.thing_name:
        return _deployment_refusal("DeploymentForAnotherThing",
                                   f"deployment metadata is for thing {stated.thing[:128]!r}")
    if stated.job_id != job_id:
        return _deployment_refusal("DeploymentForAnotherJob",
                                   f"deployment metadata is for job {stated.job_id[:128]!r}")
    described = [(f.name, f.size) for f in stated.files]
    offered = [(f.filepath, f.filesize) for f in doc.files]
    if described != offered:
        return _deployment_refusal("DeploymentFilesMismatch",
                                   "the job's files are not the ones its deployment metadata describes")
    if stated.url_path.startswith(signed_deployment.BUNDLE_SOURCE_PREFIX) != settings.offline_bundle:
        # Metadata signed for an offline bundle is never admitted online, nor the reverse.
        return _deployment_refusal("DeploymentSourceMismatch",
                                   "the deployment metadata was signed for an offline bundle"
                                   if not settings.offline_bundle else
                                   "an offline bundle needs deployment metadata signed for a bundle")
    # A bundle's document names no URL: its files come from the bundle (core/bundle.py).
    url_matches = url is None if settings.offline_bundle else stated.url_path == _url_path(url)
    if stated.stream != (doc.stream_name or "") or not url_matches:
        return _deployment_refusal("DeploymentSourceMismatch",
                                   "the job's stream or URL is not the one its deployment metadata names")
    return stated


def admit_deployed_image(stated: Deployment | None, verified: VerifyResult, now: float,
                         trusted_keys: Sequence[ec.EllipticCurvePublicKey]) -> Refusal | None:
    """F1 F2 after the download: the verified file is the one the metadata describes
    (SHA-256, version, security counter), the metadata is still fresh, and a key that
    signed it is still trusted (a trust list that retired every one of them since, in a
    rotation or to revoke a stolen key, stops the job at once)."""
    if stated is None:
        return None
    if deployment_expired(stated, now):
        return _deployment_refusal("DeploymentMetadataExpired",
                                   "the deployment metadata expired before the image was activated")
    if not stated.signed_by & {signed_deployment.key_id(k) for k in trusted_keys}:
        return _deployment_refusal("UnknownDeploymentKey",
                                   "the deployment key that signed this job's metadata is no longer trusted")
    first = stated.files[0]
    version = "" if verified.version is None else str(verified.version)
    if (first.sha256, first.version, first.security_counter) != (verified.sha256, version,
                                                                  verified.security_counter):
        return _deployment_refusal("DeploymentFilesMismatch",
                                   "the downloaded file is not the one the deployment metadata describes")
    return None


def deployment_expired(stated: Deployment, now: float) -> bool:
    """F1: a job whose metadata expired is not acted on any further."""
    return now >= stated.expires


def _url_path(url: str | None) -> str:
    if url is None:
        return ""
    try:
        return urlsplit(url).path
    except ValueError:
        return "\0"  # matches no stated path


# --- O2 and N2 and P2: the code-signing trust ---------------------------------------------------


class RevocationVerdict(StrEnum):
    ADMITTED = "admitted"  # newer than the held list: the next trust holds it
    UNCHANGED = "unchanged"  # the held list again (the retained copy at each connect)
    REFUSED = "refused"  # unsigned, malformed, conflicting or older: the trust is unchanged
    IGNORED = "ignored"  # no revocation signer is configured


class TrustListVerdict(StrEnum):
    ADMITTED = "admitted"  # at least one newer version: the next trust holds the newest
    UNCHANGED = "unchanged"  # the held version again (the retained chain at each connect)
    REFUSED = "refused"  # malformed, older, conflicting, or its next version fails: unchanged


@dataclass(frozen=True, slots=True)
class TrustListOutcome:
    verdict: TrustListVerdict
    trust: DeviceTrust  # the next state (the same object unless ADMITTED)
    message: str


@dataclass(frozen=True, slots=True)
class RevocationOutcome:
    verdict: RevocationVerdict
    trust: DeviceTrust  # the next state (the same object unless ADMITTED)
    message: str
    revocations: RevocationList | None = None  # what the envelope held, when it verified


class InstalledImage(Protocol):
    """What a boot loader knows of an installed image (sim_mcu's ImageMeta)."""

    @property
    def sha256(self) -> bytes: ...

    @property
    def signature(self) -> bytes | None: ...

    @property
    def signer_chain(self) -> tuple[bytes, ...]: ...


@dataclass(frozen=True, slots=True)
class DeviceTrust:
    """The code-signing trust of one device: immutable; each admission returns the next."""

    roots: tuple[x509.Certificate, ...]  # the bundle's; see `code_signing_roots`
    configured_revoked: frozenset[int] = frozenset()
    revocation_signer: x509.Certificate | None = None
    revocations: RevocationList | None = None  # the newest signed list admitted
    bundle_deployment_keys: tuple[ec.EllipticCurvePublicKey, ...] = ()  # see `deployment_keys`
    trust_list_threshold: int = 1  # signatures of the bundle's roots the first trust list needs
    trust_list: TrustList | None = None  # the newest trust list admitted
    trust_list_payload: bytes = b""  # its signed payload (the same version must be the same list)

    @classmethod
    def of(cls, policy: TrustPolicy) -> DeviceTrust:
        """A trust holding `policy`'s roots and revoked serials (no signed list)."""
        return cls(policy.roots, policy.revoked_serials)

    @property
    def policy(self) -> TrustPolicy:
        """O2: the roots that hold now, and every serial revoked by the bundle or by the
        held list."""
        return TrustPolicy(self.code_signing_roots, merged_serials(self.configured_revoked, self.revocations))

    @property
    def code_signing_roots(self) -> tuple[x509.Certificate, ...]:
        """The held trust list's roots once one is admitted (a root it leaves out is
        retired: nothing under it installs or boots from then on), else the bundle's."""
        return self.roots if self.trust_list is None else self.trust_list.roots

    @property
    def deployment_keys(self) -> tuple[ec.EllipticCurvePublicKey, ...]:
        """F1 F2: the keys whose deployment metadata is admitted now, by the same rule."""
        return self.bundle_deployment_keys if self.trust_list is None else self.trust_list.deployment_keys

    @property
    def trust_list_version(self) -> int:
        return 0 if self.trust_list is None else self.trust_list.version

    # -- rotation (O2 F2) --

    def admit_trust_chain(self, message: bytes) -> TrustListOutcome:
        """A published trust list chain (core/trustlist.py), walked one version at a
        time from the one held (version 0: the bundle) by TUF's root rotation rule: each
        next version must be exactly one higher and signed by a threshold of the keys
        trusted until then and by a threshold of its own keys. The versions admitted
        before one that fails are kept (TUF persists each root it admits); the held
        version again, with the same payload, is UNCHANGED. Never raises."""
        try:
            lists = decode_chain(message)
        except DecodeError as exc:
            return TrustListOutcome(TrustListVerdict.REFUSED, self, f"trust list refused: {exc.message}")
        held = self.trust_list_version
        pending = [signed for signed in lists if signed.trust.version > held]
        if not pending:
            newest = lists[-1]
            if newest.trust.version == held and newest.payload == self.trust_list_payload:
                return TrustListOutcome(TrustListVerdict.UNCHANGED, self,
                                        f"trust list {held} is the one held")
            pending = [newest]  # older, or another list of the held version: refused below
        trust, refusal = self, ""
        for signed in pending:
            anchor = trust.trust_list.anchor if trust.trust_list is not None \
                else anchor_of(trust.roots, trust.trust_list_threshold)
            try:
                admitted = admit_next(signed, anchor)
            except VerificationFailed as exc:
                refusal = f"trust list {signed.trust.version} refused ({exc.code}): {exc.message}"
                break
            trust = replace(trust, trust_list=admitted, trust_list_payload=signed.payload)
        if trust is self:
            return TrustListOutcome(TrustListVerdict.REFUSED, self, refusal)
        current = trust.trust_list
        assert current is not None
        return TrustListOutcome(TrustListVerdict.ADMITTED, trust,
                                f"trust list {current.version} accepted: {len(current.roots)} code-signing "
                                f"root(s), {len(current.deployment_keys)} deployment key(s)"
                                + (f"; {refusal}" if refusal else ""))

    def with_held_trust_chain(self, message: bytes | None) -> TrustListOutcome:
        """At start: the chain persisted by the runtime is walked again from the bundle
        (a file changed or planted on the device is never trusted for being there)."""
        start = replace(self, trust_list=None, trust_list_payload=b"")
        if message is None:
            return TrustListOutcome(TrustListVerdict.UNCHANGED, start, "no trust list is held")
        return start.admit_trust_chain(message)

    @property
    def revocation_sequence(self) -> int | None:
        return None if self.revocations is None else self.revocations.sequence

    # -- O2 --

    def admit_revocations(self, envelope: bytes) -> RevocationOutcome:
        """O2: a list is admitted only if signed by the revocation signer and newer than
        the held one, so that replaying an old list never un-revokes a certificate.

        The same sequence is not a replay: the server signs the list afresh (a new
        `issued_at`) whenever it connects to the broker, so a list with the held
        sequence and the same serials is the held list (UNCHANGED, quietly). A list with
        the held sequence and other serials cannot come from an honest server (the
        sequence counts revocations, each final): it is refused."""
        signer = self.revocation_signer
        if signer is None:
            return RevocationOutcome(RevocationVerdict.IGNORED, self,
                                     "[trust] revocation_signer is not configured: signed revocation "
                                     "lists are ignored")
        try:
            candidate = verify_list(envelope, signer)
        except (DecodeError, VerificationFailed) as exc:
            return RevocationOutcome(RevocationVerdict.REFUSED, self,
                                     f"revocation list refused: {exc.message}")
        held = self.revocations
        if held is None or candidate.sequence > held.sequence:
            return RevocationOutcome(RevocationVerdict.ADMITTED, replace(self, revocations=candidate),
                                     f"revocation list {candidate.sequence} accepted: "
                                     f"{len(candidate.serials)} code-signing certificate(s) revoked",
                                     candidate)
        if candidate.sequence == held.sequence and candidate.serials == held.serials:
            return RevocationOutcome(RevocationVerdict.UNCHANGED, self,
                                     f"revocation list {held.sequence} is the one held", candidate)
        if candidate.sequence == held.sequence:
            return RevocationOutcome(RevocationVerdict.REFUSED, self,
                                     f"revocation list {candidate.sequence} refused: it revokes other "
                                     "certificates than the held list of the same sequence", candidate)
        return RevocationOutcome(RevocationVerdict.REFUSED, self,
                                 f"revocation list {candidate.sequence} refused: older than the held list "
                                 f"{held.sequence} (a list never goes back)", candidate)

    def with_held_revocations(self, envelope: bytes | None) -> RevocationOutcome:
        """At start: the list persisted by the runtime proves itself again (a file
        changed or planted on the device is never trusted for being there)."""
        if envelope is None:
            return RevocationOutcome(RevocationVerdict.UNCHANGED, self, "no revocation list is held")
        return replace(self, revocations=None).admit_revocations(envelope)

    # -- N2 --

    def admit_image(self, data: bytes, file: FileSpec, now: dt.datetime) -> VerifyResult:
        """N2 before activation, in this order: size (cheap), who signed (the chain from
        the job document's `overair.signer_chain` to a trusted root, usages, validity at
        `now`, revocation of the signer and every intermediate), what was signed (the
        signature over SHA-256 of the whole file), and only then the image header, whose
        version and counter `admit_version` judges. Never raises for any content."""
        if len(data) != file.size:
            return VerifyResult(False, check="SizeMismatch",
                                message=f"received {len(data)} bytes, the job announced {file.size}")
        digest = sha256(data)
        try:
            verify_file_signature(digest, file.signature, signer_chain(file), self.policy, now)
        except VerificationFailed as exc:
            return VerifyResult(False, check=exc.code, message=exc.message)
        try:
            header = parse_header(data)
        except DecodeError as exc:
            return VerifyResult(False, check="BadImage", message=exc.message)
        return VerifyResult(True, version=header.version, security_counter=header.security_counter,
                            sha256=digest)

    # -- P2 --

    def admit_boot(self, image: InstalledImage, *, factory_sha256: bytes | None = None) -> bool:
        """P2, at every boot, for an image whose integrity the platform checked (its
        bytes match the SHA-256 recorded with it). A signed image boots if its
        signature verifies with its signer chain under the trust that holds *now*: the
        current roots (a rotated-out root no longer boots anything) and the current
        revocations (a revoked signer stops booting at once).

        The signer's validity period is not compared with today's clock: it was checked
        against the clock when the image was admitted (`admit_image`), and an image
        signed while its certificate was valid must keep booting after the certificate
        expires (else every device falls back on the day it does: a time bomb). The
        chain is therefore verified at the earliest moment all of its certificates were
        valid together; a chain that never was valid at one moment is refused.

        An unsigned image boots only if it is the bundle's factory image, pinned by the
        SHA-256 given here (kept outside the flash: whoever can write the flash can write
        the hash recorded in it, so that one proves nothing)."""
        if image.signature is None:
            return factory_sha256 is not None and image.sha256 == factory_sha256
        return installed_signature_holds(self.policy, image.sha256, image.signature, image.signer_chain)


def installed_signature_holds(policy: TrustPolicy, digest: bytes, signature: bytes,
                              signer_chain: Sequence[bytes]) -> bool:
    """P2's signature check (see `DeviceTrust.admit_boot`); False for any malformed input."""
    try:
        chain = load_der_chain(signer_chain)
        if not chain:
            return False
        verify_file_signature(digest, signature, chain, policy, _moment_chain_was_valid(chain))
    except VerificationFailed:
        return False
    return True


def _moment_chain_was_valid(chain: Sequence[x509.Certificate]) -> dt.datetime:
    """The earliest instant at which every certificate of `chain` had started its
    validity period (the chain verifier then checks that none had ended)."""
    return max(cert.not_valid_before_utc for cert in chain)


def signer_chain(file: FileSpec) -> list[x509.Certificate]:
    """The signer chain (signer first) from the job document's `overair.signer_chain`,
    and nowhere else. The document's `certfile` is a path on a FreeRTOS device
    (device-protocol.md §2); the overair agent never opens a path a job names (N2: a job
    must not choose which local file is read, or which certificate is trusted), so a job
    without a chain is refused."""
    if not file.signer_chain:
        raise VerificationFailed("no signer certificate: the job document carries no overair.signer_chain "
                                 "(the agent never reads a certificate from a path the job names)",
                                 code="MissingSignerCertificate")
    return load_der_chain(file.signer_chain)
