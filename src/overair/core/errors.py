"""One error hierarchy that says whose fault a failure is.

`PeerInputError` is bad input from the other side (a device, an operator, a file); it
is logged and answered, never fatal. `MisuseError` is a local programming or
configuration mistake. `UnavailableError` is a dependency that is down. Every error
carries a stable `code` that users and tests can rely on.
"""

from __future__ import annotations


class OverairError(Exception):
    """Base of all overair errors; `code` is stable and documented."""

    code = "InternalError"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class PeerInputError(OverairError):
    """The other side sent something we refuse (malformed, too large, not allowed)."""

    code = "InvalidRequest"


class DecodeError(PeerInputError):
    """A wire format (CBOR, JSON, PEM, topic) could not be decoded."""

    code = "InvalidRequest"


class VerificationFailed(PeerInputError):
    """A signature, certificate or chain check failed; `reason` names the check."""

    code = "VerificationFailed"


class MisuseError(OverairError):
    """Local misuse: wrong configuration or an API used outside its contract."""

    code = "Misuse"


class UnavailableError(OverairError):
    """A dependency (broker, database, object store) could not be reached."""

    code = "ServiceUnavailable"
