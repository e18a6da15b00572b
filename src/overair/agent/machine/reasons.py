"""Status reasons exactly as the FreeRTOS OTA agent writes them (device-protocol.md §5).

`statusDetails.reason` is what operators and dashboards read, so overair's agent uses
the FreeRTOS codes and formats: `"0x%08x: 0x%08x"` (agent or PAL code, sub-code) for
failures with a value, `"rejected: 0x%08x"` / `"aborted: 0x%08x"` for image-state
failures and `"accepted v<major.minor.build>"` for success. Where FreeRTOS would put a
PAL-specific sub-code, overair puts its own small number and names the failing check
in a second key (`check`) so that nobody has to decode numbers.
"""

from __future__ import annotations

from overair.core.versions import Version

# OtaErr_t (ota.h).
ERR_NONE = 0x00
ERR_PANIC = 0x02  # OtaErrPanic: the agent could not handle the job (a defect, contained)
ERR_JOB_PARSER = 0x0C
ERR_INVALID_DATA_PROTOCOL = 0x0D
ERR_MOMENTUM_ABORT = 0x0E
ERR_DOWNGRADE_NOT_ALLOWED = 0x0F
ERR_SAME_FIRMWARE_VERSION = 0x10
ERR_IMAGE_STATE_MISMATCH = 0x11
ERR_ACTIVATE_FAILED = 0x16
ERR_FILE_SIZE_OVERFLOW = 0x17

# OtaJobParseErr_t: a document the agent cannot use as an OTA job.
PARSE_NON_CONFORMING_JOB_DOC = 0x05

# OtaPalMainStatus_t (ota_platform_interface.h).
PAL_UNINITIALIZED = 0xE0  # what FreeRTOS reports for a bad or undecodable block
PAL_SIGNATURE_CHECK_FAILED = 0xE3
PAL_RX_FILE_CREATE_FAILED = 0xE4
PAL_BAD_SIGNER_CERT = 0xE7
PAL_COMMIT_FAILED = 0xEB
PAL_FILE_CLOSE = 0xEE

# Verification failures: (PAL main code, overair sub-code) per check name. The names are
# core.codesign's VerificationFailed codes plus the agent's own image checks.
CHECK_CODES: dict[str, tuple[int, int]] = {
    "BadSignature": (PAL_SIGNATURE_CHECK_FAILED, 0x01),
    "BadImage": (PAL_SIGNATURE_CHECK_FAILED, 0x02),
    "SizeMismatch": (PAL_SIGNATURE_CHECK_FAILED, 0x03),
    "UntrustedChain": (PAL_BAD_SIGNER_CERT, 0x01),
    "MissingCodeSigningUsage": (PAL_BAD_SIGNER_CERT, 0x02),
    "MissingDigitalSignature": (PAL_BAD_SIGNER_CERT, 0x03),
    "CertificateExpired": (PAL_BAD_SIGNER_CERT, 0x04),
    "CertificateNotYetValid": (PAL_BAD_SIGNER_CERT, 0x05),
    "CertificateRevoked": (PAL_BAD_SIGNER_CERT, 0x06),
    "BadSignerKey": (PAL_BAD_SIGNER_CERT, 0x07),
    "BadCertificate": (PAL_BAD_SIGNER_CERT, 0x08),
    "MissingSignerCertificate": (PAL_BAD_SIGNER_CERT, 0x09),
    "StorageError": (PAL_FILE_CLOSE, 0x00),
    # Deployment metadata (agent/trust.py admit_deployment; F1 F2): the job is refused
    # before any block is downloaded, or the image before it is activated.
    "MissingDeploymentMetadata": (PAL_SIGNATURE_CHECK_FAILED, 0x10),
    "BadDeploymentMetadata": (PAL_SIGNATURE_CHECK_FAILED, 0x11),
    "UnknownDeploymentKey": (PAL_SIGNATURE_CHECK_FAILED, 0x12),
    "BadDeploymentSignature": (PAL_SIGNATURE_CHECK_FAILED, 0x13),
    "DeploymentMetadataExpired": (PAL_SIGNATURE_CHECK_FAILED, 0x14),
    "DeploymentMetadataReplayed": (PAL_SIGNATURE_CHECK_FAILED, 0x15),
    "DeploymentForAnotherThing": (PAL_SIGNATURE_CHECK_FAILED, 0x16),
    "DeploymentForAnotherJob": (PAL_SIGNATURE_CHECK_FAILED, 0x17),
    "DeploymentFilesMismatch": (PAL_SIGNATURE_CHECK_FAILED, 0x18),
    "DeploymentSourceMismatch": (PAL_SIGNATURE_CHECK_FAILED, 0x19),
}
UNKNOWN_CHECK = (PAL_SIGNATURE_CHECK_FAILED, 0xFF)

# The `check` named when a verified image is refused for its security counter (N1); the
# reason is FreeRTOS's downgrade refusal, `rejected: 0x0000000f`.
SECURITY_COUNTER_CHECK = "SecurityCounter"

# The `check` named when handling a job's input raised an unexpected exception: the job
# fails with `0x00000002: 0x00000000` (OtaErrPanic) and the agent goes on (issue 12).
DEFECT_CHECK = "AgentDefect"

# Longest free-text detail the agent puts in statusDetails (the service caps entries).
MAX_DETAIL = 200


def with_value(code: int, sub_code: int) -> str:
    return f"0x{code:08x}: 0x{sub_code:08x}"


def rejected(code: int) -> str:
    return f"rejected: 0x{code:08x}"


def aborted(code: int) -> str:
    return f"aborted: 0x{code:08x}"


def accepted(version: Version) -> str:
    return f"accepted v{version}"


def check_reason(check: str) -> str:
    return with_value(*CHECK_CODES.get(check, UNKNOWN_CHECK))


def detail(text: str) -> str:
    """Free text for statusDetails, often quoting what a server or broker sent: printable
    ASCII only (anything else backslash-escaped, lone surrogates included), bounded."""
    text = text[:MAX_DETAIL].encode("ascii", "backslashreplace").decode("ascii")
    text = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text)
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 3] + "..."
