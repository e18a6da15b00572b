"""Capped exponential backoff with full jitter, without a clock or a random source.

After the `attempt`-th failure in a row (0 for the first) a device waits a time drawn
uniformly from [0, min(cap, base * 2**attempt)] ("full jitter", AWS Architecture Blog,
"Exponential Backoff And Jitter"): the ceiling bounds how long a device waits, and the
draw spreads a fleet that failed at the same instant (an artifact deleted, a server
restarted) over the whole interval instead of letting it retry in lock-step.

The state machine is pure (transitions.py), so the draw is a hash of the device, the
job and the attempt: each device gets its own reproducible sequence, devices differ
from one another, and a test can replay a run exactly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

MAX_DOUBLINGS = 32  # 2**32 times any base is past every cap


def ceiling(attempt: int, base: float, cap: float) -> float:
    return min(cap, base * (1 << min(max(attempt, 0), MAX_DOUBLINGS)))


def fraction(key: str, attempt: int) -> float:
    """A number in [0, 1) that depends only on `key` and `attempt`."""
    digest = hashlib.sha256(f"{key}\x00{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / float(1 << 64)


def full_jitter(attempt: int, base: float, cap: float, key: str) -> float:
    """Seconds to wait before retry number `attempt + 1`."""
    return ceiling(attempt, base, cap) * fraction(key, attempt)


def reconnect_delay(failures: int, min_delay: int, max_delay: int, draw: Callable[[int, int], int]) -> int:
    """Whole seconds before the next MQTT connection attempt (paho counts in seconds):
    drawn by `draw(low, high)` (random.randint) between `min_delay` and the capped
    doubling ceiling after `failures` lost or refused connections in a row. The floor of
    `min_delay` keeps a fleet from reconnecting in a tight loop."""
    return draw(min_delay, max(min_delay, int(ceiling(failures, min_delay, max_delay))))
