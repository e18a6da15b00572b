"""Job-execution states and the one table of allowed transitions (AWS IoT Jobs rules).

Terminal states are final. A device may move QUEUED or IN_PROGRESS to IN_PROGRESS,
SUCCEEDED, FAILED or REJECTED; the service alone moves executions to TIMED_OUT,
CANCELED or REMOVED.
"""

from __future__ import annotations

from enum import Enum, StrEnum


class ExecStatus(StrEnum):
    QUEUED = "QUEUED"
    IN_PROGRESS = "IN_PROGRESS"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    REJECTED = "REJECTED"
    REMOVED = "REMOVED"
    CANCELED = "CANCELED"

    @property
    def terminal(self) -> bool:
        return self not in (ExecStatus.QUEUED, ExecStatus.IN_PROGRESS)


class Actor(Enum):
    DEVICE = "device"
    SERVICE = "service"


_DEVICE_TARGETS = {ExecStatus.IN_PROGRESS, ExecStatus.SUCCEEDED, ExecStatus.FAILED,
                   ExecStatus.REJECTED}
_SERVICE_TARGETS = {ExecStatus.TIMED_OUT, ExecStatus.CANCELED, ExecStatus.REMOVED}

# (from, to, who) -> allowed. Built once from the rules above so it reads as a table.
TRANSITIONS: frozenset[tuple[ExecStatus, ExecStatus, Actor]] = frozenset(
    {(src, dst, Actor.DEVICE) for src in (ExecStatus.QUEUED, ExecStatus.IN_PROGRESS)
     for dst in _DEVICE_TARGETS}
    | {(src, dst, Actor.SERVICE) for src in (ExecStatus.QUEUED, ExecStatus.IN_PROGRESS)
       for dst in _SERVICE_TARGETS}
    # A device timed out while IN_PROGRESS stays there; QUEUED ones never time out.
    - {(ExecStatus.QUEUED, ExecStatus.TIMED_OUT, Actor.SERVICE)}
)


def can_transition(src: ExecStatus, dst: ExecStatus, actor: Actor) -> bool:
    return (src, dst, actor) in TRANSITIONS


class JobStatus(StrEnum):
    IN_PROGRESS = "IN_PROGRESS"
    CANCELED = "CANCELED"
    COMPLETED = "COMPLETED"
    DELETION_IN_PROGRESS = "DELETION_IN_PROGRESS"
    SCHEDULED = "SCHEDULED"
