"""Failed sign-ins, bounded per source address. Pure (the caller passes the time).

Anyone who reaches the sign-in form can send it, and every refused sign-in is audited:
without a bound a visitor could grow the audit log at will (as issue 12 found for
device requests) and guess secrets as fast as the server answers. After
`max_failures` failed sign-ins from one address in a window, further attempts from it
are refused unread until the window ends (no credential check, no audit entry each;
one summary is logged). The table of addresses is bounded too: past `max_sources` in
one window, the overflow shares one budget.
"""

from __future__ import annotations

import threading

WINDOW_SECONDS = 60.0
MAX_FAILURES = 10
MAX_SOURCES = 10_000
_OVERFLOW = "*"


class SignInThrottle:
    def __init__(self, max_failures: int = MAX_FAILURES, window: float = WINDOW_SECONDS,
                 max_sources: int = MAX_SOURCES) -> None:
        self._max_failures = max_failures
        self._window = window
        self._max_sources = max_sources
        self._lock = threading.Lock()
        self._window_start = float("-inf")
        self._failures: dict[str, int] = {}

    def _roll(self, now: float) -> None:
        if now - self._window_start >= self._window:
            self._window_start = now
            self._failures.clear()

    def _key(self, source: str) -> str:
        if source in self._failures or len(self._failures) < self._max_sources:
            return source
        return _OVERFLOW

    def allowed(self, source: str, now: float) -> bool:
        """May `source` try to sign in now?"""
        with self._lock:
            self._roll(now)
            return self._failures.get(self._key(source), 0) < self._max_failures

    def failed(self, source: str, now: float) -> bool:
        """Count a failed sign-in; True when this one used up the source's budget."""
        with self._lock:
            self._roll(now)
            key = self._key(source)
            self._failures[key] = self._failures.get(key, 0) + 1
            return self._failures[key] == self._max_failures
