"""Fuzz target: AWS cron expressions (core/cron.py), the maintenance windows of a job.
Only `CronError` may escape parsing; a parsed expression answers its next and latest
start without failing."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from overair.core import cron
from tests.fuzz.hostile import digits_or_not, hostile_text

field = st.one_of(
    st.sampled_from(["*", "?", "L", "LW", "15W", "MON-FRI", "2#3", "6L", "0/15", "1-5/2", "JAN", "SAT,SUN",
                     "L-2", "31W", "5-1"]),
    digits_or_not, hostile_text,
    st.lists(st.one_of(digits_or_not, st.sampled_from(["*", "-", "/", "#", "L", "W"])),
             max_size=4).map("".join),
)


@given(st.one_of(
    st.lists(field, min_size=5, max_size=7).map(lambda parts: f"cron({' '.join(parts)})"),
    st.lists(field, min_size=6, max_size=6).map(" ".join),
    hostile_text,
), st.datetimes(min_value=dt.datetime(1970, 1, 2), max_value=dt.datetime(2199, 12, 30)))
def test_fuzz_cron_raises_only_cron_errors(text: str, when: dt.datetime) -> None:
    try:
        expression = cron.parse(text)
    except cron.CronError:
        return
    moment = when.replace(tzinfo=dt.UTC)
    expression.latest_start_at_or_before(moment)
    following = expression.next_start_after(moment)
    assert following is None or following > moment
