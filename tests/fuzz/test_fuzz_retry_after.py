"""Fuzz target: the `Retry-After` header of a download server's refusal, as the overair
agent reads it (agent/transport/http.py `parse_retry_after`). The server is not trusted
to be well-behaved (a proxy, or an attacker on the path before TLS fails): the parser
never raises, and what it accepts is a finite, non-negative, bounded delay (the state
machine then caps it at `max_next_job_retry`).
"""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from overair.agent.transport.http import MAX_RETRY_AFTER_DIGITS, parse_retry_after
from tests.fuzz.device_strategies import HOSTILE_TEXT

HEADERS = HOSTILE_TEXT | st.integers(-10**30, 10**30).map(str) | st.floats().map(str) \
    | st.sampled_from(["", " 5 ", "1e9", "0x10", "٣", "Wed, 21 Oct 2015 07:28:00 GMT"])


@given(st.none() | HEADERS)
def test_fuzz_retry_after_is_never_an_error_and_always_bounded(header: str | None) -> None:
    delay = parse_retry_after(header)
    if delay is not None:
        assert math.isfinite(delay)
        assert 0 <= delay < 10 ** MAX_RETRY_AFTER_DIGITS
        assert header is not None
        assert header.strip().isdigit()
