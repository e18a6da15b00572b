"""The one place where failures become AWS errors (principle 6: errors by fault,
translated once, at the boundary).

Domain code raises by fault (`core/errors.py`) or an `ApiError` it means the client to
see; the edge hands whatever escaped a request to `to_api_error`:

| escaped | answer |
|---|---|
| `ApiError` | itself (not found, conflict, access denied, ... as raised) |
| `PeerInputError` (`DecodeError`, `CronError`) | 400, its code (if generic: the service's validation code) |
| `UnavailableError` | 503, the service's unavailable code, its message |
| database down, corrupt, locked or full | 503 "the database is unavailable: <cause>" |
| `OSError` ENOSPC / EDQUOT | 503 "no space left on device" |
| anything else | None: a bug; the edge logs it and answers 500 |

"Database down" is an `OperationalError`/`DatabaseError` (corrupt page, locked, disk
full, server gone) or a pool timeout.

A constraint violation, a bad integrity row (`IntegrityError`) or a programming error
stays a bug: those are defects to fix, not conditions to report as an outage.
"""

from __future__ import annotations

import errno

from overair.core.errors import PeerInputError, UnavailableError
from overair.server.api.contract import ApiError
from overair.server.storage.db import unavailable_cause

# Codes that only say "bad input"; the service's own validation code replaces them.
_GENERIC_INPUT_CODES = frozenset({PeerInputError.code, "InvalidJson"})
# The code each protocol family uses for 503.
_UNAVAILABLE = {"rest-xml": "ServiceUnavailable", "query": "ServiceUnavailable"}
_UNAVAILABLE_DEFAULT = "ServiceUnavailableException"
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def unavailable(protocol: str, message: str) -> ApiError:
    return ApiError(_UNAVAILABLE.get(protocol, _UNAVAILABLE_DEFAULT), message, 503)


def to_api_error(exc: BaseException, protocol: str, validation_code: str) -> ApiError | None:
    """The client's answer for an exception that escaped a request, or None for a bug.
    `protocol` is the service's wire protocol (rest-json, json, query, rest-xml)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, UnavailableError):
        return unavailable(protocol, exc.message)
    if isinstance(exc, PeerInputError):
        code = validation_code if exc.code in _GENERIC_INPUT_CODES else exc.code
        return ApiError(code, exc.message, 400)
    cause = unavailable_cause(exc)
    if cause is not None:
        return unavailable(protocol, f"the database is unavailable: {cause}")
    if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
        return unavailable(protocol, "no space left on device")
    return None
