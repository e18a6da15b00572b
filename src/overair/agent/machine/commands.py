"""Outputs of the agent state machine: what the runtime must do, in order.

Contract with the runtime (agent/runtime.py): commands of one step run in order; a
command that fails turns into a `PlatformFailed` event and the rest of that step is
dropped; commands that produce a result (WriteBlock, VerifyImage, CommitImage,
RunSelfTest, HttpGetRange) answer with the matching event, HttpGetRange always exactly
once and later, from another thread (HttpRangeReceived or HttpRangeFailed). The runtime
persists `State.journal` whenever a step changed it, before it runs that step's commands.
"""

from __future__ import annotations

from dataclasses import dataclass

from overair.agent.machine.state import FileSpec
from overair.agent.progress import StagedProgress
from overair.core.delta_offer import DeltaOffer


@dataclass(frozen=True, slots=True)
class Subscribe:
    topic: str
    qos: int


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    topic: str


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    payload: bytes
    qos: int


@dataclass(frozen=True, slots=True)
class CreateStaging:
    """Create (or truncate) the staging file for an image of `size` bytes; resumable
    after a reboot under `binding` (agent/progress.py)."""

    size: int
    binding: bytes = b""
    block_size: int = 0


@dataclass(frozen=True, slots=True)
class ResumeStaging:
    """Reopen the partial file the platform kept (Booted.staged) to go on with it."""

    progress: StagedProgress


@dataclass(frozen=True, slots=True)
class SaveProgress:
    """Make the stored blocks durable, then keep the bitmap of those still needed."""

    needed: bytes


@dataclass(frozen=True, slots=True)
class WriteBlock:
    block_id: int
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class HttpGetRange:
    """GET `url` (a pre-signed HTTPS URL) with `Range: bytes=offset-(offset+length-1)`.

    The runtime authenticates the server with the fleet CA (host name checked, TLS 1.2+,
    no client certificate) and answers `HttpRangeReceived` only for a `206 Partial
    Content` carrying exactly the bytes asked for; anything else is `HttpRangeFailed`.
    `request` numbers the request; the answer echoes it."""

    url: str
    offset: int
    length: int
    request: int

    def __repr__(self) -> str:  # the URL's query is a credential: keep it out of logs
        return (f"HttpGetRange(url={self.url.split('?', 1)[0]!r}, offset={self.offset}, "
                f"length={self.length}, request={self.request})")


@dataclass(frozen=True, slots=True)
class AbortStaging:
    """Discard the staging file (download aborted or image refused)."""


@dataclass(frozen=True, slots=True)
class VerifyImage:
    """Close the staging file, then check size, signature, signer chain and header. With
    `delta`, the staged file is that patch: it is applied to the running image into the
    staging slot first, and the result is checked as `image`."""

    file: FileSpec
    delta: DeltaOffer | None = None
    image: FileSpec | None = None


@dataclass(frozen=True, slots=True)
class ActivateAndReboot:
    """Make the staged image the trial boot image, then reboot."""


@dataclass(frozen=True, slots=True)
class RunSelfTest:
    job_id: str
    deadline: float  # absolute time by which it must have passed
    # A health-gated rollout's window (core/health.py): after the checks pass, the image
    # stays on trial this long before the result is given, so that the rollout's health
    # gates can still cancel the execution and have it rolled back.
    hold_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class CommitImage:
    """Confirm the running trial image: from now on it is the fallback image."""


@dataclass(frozen=True, slots=True)
class RollbackAndReboot:
    """Abandon the running trial image and reboot onto the confirmed one."""


@dataclass(frozen=True, slots=True)
class ReportProgress:
    job_id: str
    received: int
    total: int


@dataclass(frozen=True, slots=True)
class ApplyRevocations:
    """Verify a revocation list envelope (core.revocation) and, if it is newer than the
    one held, persist it and refuse its serials from then on. Produces no event: the
    trust policy lives in the runtime, which verifies images (threat O2)."""

    envelope: bytes


@dataclass(frozen=True, slots=True)
class ApplyTrustList:
    """Walk a published trust list chain (core/trustlist.py) from the held version and,
    if it admits a newer one, persist it and trust its roots and deployment keys from
    then on. Produces no event: the runtime holds the trust (agent/trust.py)."""

    chain: bytes


@dataclass(frozen=True, slots=True)
class Log:
    level: str  # "debug" | "info" | "warning" | "error"
    message: str


Command = (Subscribe | Unsubscribe | Publish | CreateStaging | ResumeStaging | SaveProgress | WriteBlock
           | HttpGetRange | AbortStaging | VerifyImage | ActivateAndReboot | RunSelfTest | CommitImage
           | RollbackAndReboot | ReportProgress | ApplyRevocations | ApplyTrustList | Log)
