"""AWS cron expressions (core/cron.py): parsing, matching, latest and next start, in UTC."""

from __future__ import annotations

import datetime as dt

import pytest

from overair.core import cron


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        # every day at 02:30
        ("cron(30 2 * * ? *)", "2026-03-10T01:00", "2026-03-10T02:30"),
        ("cron(30 2 * * ? *)", "2026-03-10T02:30", "2026-03-11T02:30"),  # strictly after
        # month boundary, and the year boundary
        ("cron(0 23 * * ? *)", "2026-01-31T23:00", "2026-02-01T23:00"),
        ("cron(0 0 * * ? *)", "2026-12-31T12:00", "2027-01-01T00:00"),
        # day-of-week names: Saturday 02:00 (2026-03-14 is a Saturday)
        ("cron(0 2 ? * SAT *)", "2026-03-10T00:00", "2026-03-14T02:00"),
        ("cron(0 2 ? * sat *)", "2026-03-14T02:00", "2026-03-21T02:00"),
        ("cron(0 2 ? * 7 *)", "2026-03-10T00:00", "2026-03-14T02:00"),  # 7 = SAT
        ("cron(0 2 ? * 1 *)", "2026-03-10T00:00", "2026-03-15T02:00"),  # 1 = SUN
        ("cron(0 9 ? * MON-FRI *)", "2026-03-13T10:00", "2026-03-16T09:00"),  # Fri after 9 -> Mon
        ("cron(0 9 ? * MON,WED *)", "2026-03-16T10:00", "2026-03-18T09:00"),
        # steps
        ("cron(0/15 * * * ? *)", "2026-03-10T10:16", "2026-03-10T10:30"),
        ("cron(*/20 4 * * ? *)", "2026-03-10T04:40", "2026-03-11T04:00"),
        ("cron(10-40/15 1 * * ? *)", "2026-03-10T01:26", "2026-03-10T01:40"),
        ("cron(0 0 1/10 * ? *)", "2026-03-11T00:00", "2026-03-21T00:00"),
        ("cron(0 0 1 1/4 ? *)", "2026-02-01T00:00", "2026-05-01T00:00"),
        # month names and lists, a specific year
        ("cron(0 12 15 JAN,JUL ? *)", "2026-02-01T00:00", "2026-07-15T12:00"),
        ("cron(0 12 1 JUN ? 2028)", "2026-01-01T00:00", "2028-06-01T12:00"),
        ("cron(0 12 1 JUN ? 2026-2027)", "2027-06-01T12:00", None),
        # day 31 skips the short months; 29 FEB waits for a leap year
        ("cron(0 0 31 * ? *)", "2026-03-31T00:00", "2026-05-31T00:00"),
        ("cron(0 0 29 FEB ? *)", "2026-01-01T00:00", "2028-02-29T00:00"),
        # L, LW, nW in day-of-month
        ("cron(0 0 L * ? *)", "2026-02-01T00:00", "2026-02-28T00:00"),
        ("cron(0 0 L * ? *)", "2028-02-01T00:00", "2028-02-29T00:00"),
        ("cron(0 0 LW * ? *)", "2026-05-01T00:00", "2026-05-29T00:00"),  # May 31 2026 is a Sunday
        ("cron(0 0 15W * ? *)", "2026-08-01T00:00", "2026-08-14T00:00"),  # Aug 15 2026: Saturday
        ("cron(0 0 1W * ? *)", "2026-08-01T00:00", "2026-08-03T00:00"),  # Aug 1 2026: Saturday -> Mon 3
        ("cron(0 0 31W * ? *)", "2026-05-01T00:00", "2026-05-29T00:00"),  # Sunday 31 -> Friday 29
        # nL and n#k in day-of-week
        ("cron(0 0 ? * 6L *)", "2026-03-01T00:00", "2026-03-27T00:00"),  # last Friday of March
        ("cron(0 0 ? * FRIL *)", "2026-03-28T00:00", "2026-04-24T00:00"),
        ("cron(0 0 ? * MON#2 *)", "2026-03-01T00:00", "2026-03-09T00:00"),
        ("cron(0 0 ? * 1#5 *)", "2026-03-01T00:00", "2026-03-29T00:00"),  # a fifth Sunday
        ("cron(0 0 ? * L *)", "2026-03-10T00:00", "2026-03-14T00:00"),  # L alone = Saturday
        # the bare six fields
        ("30 2 * * ? *", "2026-03-10T01:00", "2026-03-10T02:30"),
    ],
)
def test_next_start_after(expression: str, after: str, expected: str | None) -> None:
    found = cron.parse(expression).next_start_after(at(after))
    assert found == (at(expected) if expected else None)


@pytest.mark.parametrize(
    ("expression", "when", "expected"),
    [
        ("cron(30 2 * * ? *)", "2026-03-10T02:30", "2026-03-10T02:30"),  # at the start itself
        ("cron(30 2 * * ? *)", "2026-03-10T02:29", "2026-03-09T02:30"),
        ("cron(30 23 * * ? *)", "2026-03-01T00:10", "2026-02-28T23:30"),  # across the month
        ("cron(0 2 ? * SAT *)", "2026-03-13T12:00", None),  # Friday: last Saturday too far back
        ("cron(0/15 * * * ? *)", "2026-03-10T10:44:59", "2026-03-10T10:30"),
    ],
)
def test_latest_start_at_or_before(expression: str, when: str, expected: str | None) -> None:
    found = cron.parse(expression).latest_start_at_or_before(at(when))
    assert found == (at(expected) if expected else None)


def test_matches_names_the_minute_a_window_starts() -> None:
    expression = cron.parse("cron(0 2 ? * SUN *)")
    assert expression.matches(at("2026-03-15T02:00:30"))
    assert not expression.matches(at("2026-03-15T02:01"))
    assert not expression.matches(at("2026-03-14T02:00"))


@pytest.mark.parametrize(
    ("expression", "complaint"),
    [
        ("", "non-empty"),
        ("cron(0 2 * * *)", "has 5 fields"),
        ("cron(0 2 * * ? * *)", "has 7 fields"),
        ("cron(0 2 * * * *)", "exactly one of day-of-month and day-of-week"),
        ("cron(0 2 ? * ? *)", "exactly one of day-of-month and day-of-week"),
        ("cron(60 2 * * ? *)", "Minutes field: 60 is outside 0-59"),
        ("cron(0 24 * * ? *)", "Hours field: 24 is outside 0-23"),
        ("cron(0 0 0 * ? *)", "Day-of-month field: 0 is outside 1-31"),
        ("cron(0 0 * 13 ? *)", "Month field: 13 is outside 1-12"),
        ("cron(0 0 * FOO ? *)", "Month field: 'FOO' is not a number"),
        ("cron(0 0 ? * 8 *)", "Day-of-week field: 8 is outside 1-7"),
        ("cron(0 0 * * ? 1969)", "Year field: 1969 is outside 1970-2199"),
        ("cron(0 0 ? * FRI-MON *)", "runs backwards"),
        ("cron(0 0 ? * MON/2 *)", "steps are not allowed"),
        ("cron(0/0 0 * * ? *)", "step '0' must be a positive"),
        ("cron(0,,5 0 * * ? *)", "empty element"),
        ("cron(0 0 L-2 * ? *)", "'L-n' (days before the last) is not supported"),
        ("cron(0 0 1,L * ? *)", "L, LW and nW stand alone"),
        ("cron(0 0 ? * 2#6 *)", "must be 1-5"),
        ("cron(0 0 ? * 2#1,3 *)", "nL and n#k stand alone"),
        ("cron(a b c d e f)", "Minutes field"),
    ],
)
def test_unsupported_or_invalid_expressions_are_refused_by_name(expression: str, complaint: str) -> None:
    with pytest.raises(cron.CronError) as caught:
        cron.parse(expression)
    assert complaint in caught.value.message
    assert caught.value.code == "InvalidRequestException"


def test_an_expression_that_never_fires_has_no_next_start() -> None:
    assert cron.parse("cron(0 0 30 FEB ? *)").next_start_after(at("2026-01-01T00:00")) is None
    assert cron.parse("cron(0 0 * * ? 2199)").next_start_after(at("2199-12-31T23:59")) is None


def test_aws_weekday_numbering_starts_on_sunday() -> None:
    assert [cron.aws_weekday(dt.date(2026, 3, 15) + dt.timedelta(days=i)) for i in range(7)] == [
        1, 2, 3, 4, 5, 6, 7]


@pytest.mark.parametrize("expression", [
    "cron(\u00b2 0 * * ? *)",  # superscript two: str.isdigit() says yes, int() says no
    "cron(0 \u0662 * * ? *)",  # Arabic-Indic two: int() would take it
    "cron(0/\u00b2 0 * * ? *)",
    "cron(0 0 \u0661W * ? *)",
    "cron(0 0 ? * \u0662#1 *)",
    "cron(0 0 ? * \u0662L *)",
    "cron(0 0 1_0 * ? *)",
    "cron(0 0 * * ? 9" + "9" * 5000 + ")",
])
def test_no_500_only_ascii_digits_are_numbers(expression: str) -> None:
    with pytest.raises(cron.CronError) as caught:
        cron.parse(expression)
    assert caught.value.code == "InvalidRequestException"


def test_a_trailing_newline_in_a_field_is_refused() -> None:
    with pytest.raises(cron.CronError):
        cron.parse("cron(0 0 ? * 2#1\n *)".replace(" *)", ")"))
    with pytest.raises(cron.CronError):
        cron.parse("cron(0 0 15W\n * ? *)".replace("\n *", "\n"))
