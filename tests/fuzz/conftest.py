"""The fuzz suite: every parser of bytes from a network, a device or a file, driven by
hypothesis with hostile input. Each target asserts that nothing but the parser's
documented error types escapes.

Budgets: the default profile (CI) runs a few seconds per target; `scripts/dev slow`
sets OVERAIR_FUZZ=long for a much longer run. Examples are derandomized per run of the
default profile only when OVERAIR_FUZZ_SEED is set, so CI explores new inputs each time
and a failure prints its reproducer (`@reproduce_failure`).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_SLOW_IS_FINE = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile("ci", max_examples=300, deadline=None, suppress_health_check=_SLOW_IS_FINE,
                          print_blob=True)
settings.register_profile("long", max_examples=20_000, deadline=None, suppress_health_check=_SLOW_IS_FINE,
                          print_blob=True)
settings.load_profile(os.environ.get("OVERAIR_FUZZ", "ci"))
