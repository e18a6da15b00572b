"""Which executions count as live: one statement of it for every query that asks.

A live execution is QUEUED or IN_PROGRESS; a staged rollout's executions exist before
they are released, and until then they are the scheduler's alone (no device sees them,
no access follows from them).
"""

from __future__ import annotations

from overair.core.jobstates import ExecStatus
from overair.server.storage.schema import JobExecution

ACTIVE = (ExecStatus.QUEUED.value, ExecStatus.IN_PROGRESS.value)
RELEASED = JobExecution.released_at.is_not(None)
