"""Time as a dependency: services take a `Clock` so tests can control it."""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]
system_clock: Clock = time.time
