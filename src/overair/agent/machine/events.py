"""Inputs of the agent state machine. Each is an immutable value; none carries I/O."""

from __future__ import annotations

from dataclasses import dataclass

from overair.agent.progress import StagedProgress
from overair.core.versions import Version


@dataclass(frozen=True, slots=True)
class Booted:
    """The platform selected an image and started it (at power-on or after a reboot)."""

    running: Version
    slot: str
    trial: bool  # the running image is new and not committed: it must pass a self-test
    fell_back: bool = False  # a trial image was abandoned (never committed) at this boot
    staged: StagedProgress | None = None  # an interrupted download the platform kept
    security_counter: int = 0  # the platform's persisted anti-rollback counter


@dataclass(frozen=True, slots=True)
class Connected:
    """The MQTT session is up (mutual TLS handshake done, CONNACK accepted)."""


@dataclass(frozen=True, slots=True)
class Disconnected:
    reason: str = ""


@dataclass(frozen=True, slots=True)
class MessageReceived:
    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class BlockStored:
    """A WriteBlock command completed: the block is in the staging file."""

    block_id: int


@dataclass(frozen=True, slots=True)
class HttpRangeReceived:
    """An HttpGetRange was answered `206 Partial Content` with exactly the bytes asked."""

    request: int  # HttpGetRange.request
    offset: int
    data: bytes

    def __repr__(self) -> str:
        return f"HttpRangeReceived(request={self.request}, offset={self.offset}, {len(self.data)} bytes)"


@dataclass(frozen=True, slots=True)
class HttpRangeFailed:
    """An HttpGetRange got no usable answer: an HTTP error status, a response that is not
    exactly the range asked for, or no response at all (connection, TLS, timeout)."""

    request: int  # HttpGetRange.request
    offset: int
    status: int  # the HTTP status; 0 when no response came
    reason: str
    retry_after: float | None = None  # seconds, from the response's Retry-After header


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed; the machine checks its timers against `now`."""


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """Outcome of VerifyImage: signature, signer chain and image header checks."""

    ok: bool
    version: Version | None = None
    check: str = ""  # the failing check's code when not ok (reasons.CHECK_CODES)
    message: str = ""
    security_counter: int = 0  # from the verified image's header
    sha256: bytes = b""  # of the verified file (checked against the deployment metadata)


@dataclass(frozen=True, slots=True)
class SelfTestResult:
    ok: bool
    message: str = ""


@dataclass(frozen=True, slots=True)
class ImageCommitted:
    """CommitImage completed: the running image is now the confirmed one."""

    security_counter: int = 0  # the platform's counter after the commit


@dataclass(frozen=True, slots=True)
class PlatformFailed:
    """A platform command failed; `operation` names it (create, write, activate, commit)."""

    operation: str
    message: str


@dataclass(frozen=True, slots=True)
class HandlingFailed:
    """Handling `cause` raised an unexpected exception (in `handle()` or in one of the
    commands it produced): a defect, which the runtime's one boundary turns into this
    event so that the machine fails the job concerned instead of the agent stopping
    (issue 12, finding 9). `error` describes the exception."""

    cause: Event
    error: str


Event = (Booted | Connected | Disconnected | MessageReceived | BlockStored | HttpRangeReceived
         | HttpRangeFailed | Tick | VerifyResult | SelfTestResult | ImageCommitted | PlatformFailed
         | HandlingFailed)
