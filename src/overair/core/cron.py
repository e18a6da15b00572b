"""AWS cron expressions, as AWS IoT Jobs maintenance windows use them; pure, in UTC.

An expression is `cron(Minutes Hours Day-of-month Month Day-of-week Year)` (the bare six
fields are accepted too):

| field        | values              | accepted                         |
|--------------|---------------------|----------------------------------|
| Minutes      | 0-59                | `*` `,` `-` `/`                  |
| Hours        | 0-23                | `*` `,` `-` `/`                  |
| Day-of-month | 1-31                | `*` `,` `-` `/` `?` `L` `LW` `nW` |
| Month        | 1-12 or JAN-DEC     | `*` `,` `-` `/`                  |
| Day-of-week  | 1-7 or SUN-SAT      | `*` `,` `-` `?` `L` `nL` `n#k`   |
| Year         | 1970-2199           | `*` `,` `-` `/`                  |

Exactly one of Day-of-month and Day-of-week is `?` (AWS's rule). `L` in Day-of-month is
the month's last day, `LW` its last weekday, `nW` the weekday nearest to day n (never
leaving the month); in Day-of-week `L` alone is Saturday (7), `nL` the month's last
day n, `n#k` its k-th day n. Ranges go upwards (`MON-FRI`, not `FRI-MON`); `L-n`
offsets are refused by name. Names are case-insensitive.

`latest_start_at_or_before` and `next_start_after` are what maintenance windows need:
whether a window is open at t (its latest start is within the duration before t) and
when the next one opens.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass

from overair.core.asciinum import parse_uint
from overair.core.errors import PeerInputError

MIN_YEAR, MAX_YEAR = 1970, 2199
MONTH_NAMES = {name: i for i, name in enumerate(
    ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"), start=1)}
DAY_NAMES = {name: i for i, name in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"), start=1)}
# Matched whole (`fullmatch`), digits ASCII only: `\d` and `str.isdigit` take "²", which
# `int` then refuses (a crash on `cron(² ...)`).
WRAPPED = re.compile(r"\s*cron\((.*)\)\s*", re.IGNORECASE | re.DOTALL)
NEAREST_WEEKDAY = re.compile(r"([0-9]{1,2})W")
LAST_OF_MONTH = re.compile(r"([A-Z]{3}|[0-9])L")
NTH_OF_MONTH = re.compile(r"([A-Z]{3}|[0-9])#([0-9])")

DayRule = Callable[[dt.date], bool]


class CronError(PeerInputError):
    code = "InvalidRequestException"


def aws_weekday(day: dt.date) -> int:
    """AWS numbering: 1 = Sunday ... 7 = Saturday."""
    return day.isoweekday() % 7 + 1


def _days_in_month(day: dt.date) -> int:
    return calendar.monthrange(day.year, day.month)[1]


def _value(token: str, low: int, high: int, names: dict[str, int], field: str) -> int:
    upper = token.upper()
    if upper in names:
        return names[upper]
    value = parse_uint(token, max_digits=4)
    if value is None:
        raise CronError(f"{field} field: {token[:32]!r} is not a number from {low} to {high}"
                        + (" or a name like " + next(iter(names)) if names else ""))
    if not low <= value <= high:
        raise CronError(f"{field} field: {value} is outside {low}-{high}")
    return value


def _numbers(text: str, low: int, high: int, field: str, *, names: dict[str, int] | None = None,
             steps: bool = True) -> frozenset[int]:
    """A field of values, ranges, steps and lists: `*`, `5`, `1-5`, `0/15`, `10-40/10`, `MON,WED`."""
    names = names or {}
    values: set[int] = set()
    for part in text.split(","):
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not steps:
                raise CronError(f"{field} field: '/' steps are not allowed here ({part!r})")
            parsed_step = parse_uint(step_text, max_digits=4)
            if parsed_step is None or parsed_step < 1:
                raise CronError(f"{field} field: step {step_text[:32]!r} must be a positive whole number")
            step = parsed_step
        if base == "*":
            first, last = low, high
        elif "-" in base:
            first_text, _, last_text = base.partition("-")
            first = _value(first_text, low, high, names, field)
            last = _value(last_text, low, high, names, field)
            if first > last:
                raise CronError(f"{field} field: range {base!r} runs backwards (ranges do not wrap around)")
        elif base:
            first = _value(base, low, high, names, field)
            last = high if slash else first
        else:
            raise CronError(f"{field} field: empty element in {text!r}")
        values.update(range(first, last + 1, step))
    return frozenset(values)


def _day_of_month_rule(text: str) -> DayRule:
    upper = text.upper()
    if upper == "L":
        return lambda day: day.day == _days_in_month(day)
    if upper == "LW":
        return lambda day: day == _last_weekday(day)
    if upper.startswith("L-"):
        raise CronError("Day-of-month field: 'L-n' (days before the last) is not supported")
    match = NEAREST_WEEKDAY.fullmatch(upper)
    if match:
        target = _value(match.group(1), 1, 31, {}, "Day-of-month")
        return lambda day: day == _nearest_weekday(day, target)
    if "L" in upper or "W" in upper:
        raise CronError(f"Day-of-month field: {text!r} is not supported (L, LW and nW stand alone)")
    days = _numbers(text, 1, 31, "Day-of-month")
    return lambda day: day.day in days


def _last_weekday(day: dt.date) -> dt.date:
    last = day.replace(day=_days_in_month(day))
    return last - dt.timedelta(days=max(0, last.isoweekday() - 5))


def _nearest_weekday(day: dt.date, target: int) -> dt.date | None:
    """The weekday nearest to day `target` of `day`'s month, without leaving the month."""
    length = _days_in_month(day)
    if target > length:
        return None  # e.g. 31W in a 30-day month never fires
    wanted = day.replace(day=target)
    if wanted.isoweekday() == 6:  # Saturday: the Friday before, or Monday if that leaves the month
        return wanted - dt.timedelta(days=1) if target > 1 else wanted + dt.timedelta(days=2)
    if wanted.isoweekday() == 7:  # Sunday: the Monday after, or Friday if that leaves the month
        return wanted + dt.timedelta(days=1) if target < length else wanted - dt.timedelta(days=2)
    return wanted


def _day_of_week_rule(text: str) -> DayRule:
    upper = text.upper()
    if upper == "L":
        return lambda day: aws_weekday(day) == 7
    match = LAST_OF_MONTH.fullmatch(upper)
    if match:
        weekday = _value(match.group(1), 1, 7, DAY_NAMES, "Day-of-week")
        return lambda day: aws_weekday(day) == weekday and day.day + 7 > _days_in_month(day)
    match = NTH_OF_MONTH.fullmatch(upper)
    if match:
        weekday = _value(match.group(1), 1, 7, DAY_NAMES, "Day-of-week")
        nth = int(match.group(2))
        if not 1 <= nth <= 5:
            raise CronError(f"Day-of-week field: {text!r}: the week number after '#' must be 1-5")
        return lambda day: aws_weekday(day) == weekday and (day.day - 1) // 7 + 1 == nth
    if "#" in upper or "L" in upper:
        raise CronError(f"Day-of-week field: {text!r} is not supported (nL and n#k stand alone)")
    days = _numbers(text, 1, 7, "Day-of-week", names=DAY_NAMES, steps=False)
    return lambda day: aws_weekday(day) in days


@dataclass(frozen=True, slots=True)
class CronExpression:
    text: str
    minutes: tuple[int, ...]  # ascending
    hours: tuple[int, ...]  # ascending
    months: frozenset[int]
    years: frozenset[int]
    day_rule: DayRule

    def matches_day(self, day: dt.date) -> bool:
        return day.year in self.years and day.month in self.months and self.day_rule(day)

    def matches(self, when: dt.datetime) -> bool:
        """Whether a window starts in the minute `when` falls in."""
        return (self.matches_day(when.date()) and when.hour in self.hours and when.minute in self.minutes)

    def latest_start_at_or_before(self, when: dt.datetime, lookback_days: int = 1) -> dt.datetime | None:
        """The latest start at or before `when`, looking back at most `lookback_days`
        whole days before `when`'s date (a window lasts less than a day)."""
        when = when.astimezone(dt.UTC)
        for back in range(lookback_days + 1):
            day = when.date() - dt.timedelta(days=back)
            if not self.matches_day(day):
                continue
            for hour in reversed(self.hours):
                for minute in reversed(self.minutes):
                    start = dt.datetime(day.year, day.month, day.day, hour, minute, tzinfo=dt.UTC)
                    if start <= when:
                        return start
        return None

    def next_start_after(self, when: dt.datetime) -> dt.datetime | None:
        """The first start strictly after `when`; None if there is none before 2200."""
        when = when.astimezone(dt.UTC)
        day = when.date()
        while day.year <= MAX_YEAR:
            if day.year not in self.years:
                day = dt.date(day.year + 1, 1, 1)
                continue
            if day.month not in self.months:
                day = (dt.date(day.year + 1, 1, 1) if day.month == 12
                       else dt.date(day.year, day.month + 1, 1))
                continue
            if self.day_rule(day):
                for hour in self.hours:
                    for minute in self.minutes:
                        start = dt.datetime(day.year, day.month, day.day, hour, minute, tzinfo=dt.UTC)
                        if start > when:
                            return start
            day += dt.timedelta(days=1)
        return None


def parse(text: str) -> CronExpression:
    """Parse an AWS cron expression; CronError (InvalidRequestException) names what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise CronError("a cron expression must be a non-empty string like cron(0 2 ? * SAT *)")
    wrapped = WRAPPED.fullmatch(text)
    fields = (wrapped.group(1) if wrapped else text).split()
    if len(fields) != 6:
        raise CronError(f"{text!r} has {len(fields)} fields; an AWS cron expression has 6: "
                        "minutes hours day-of-month month day-of-week year")
    minute, hour, day_of_month, month, day_of_week, year = fields
    minutes = tuple(sorted(_numbers(minute, 0, 59, "Minutes")))
    hours = tuple(sorted(_numbers(hour, 0, 23, "Hours")))
    if (day_of_month == "?") == (day_of_week == "?"):
        raise CronError(f"{text!r}: exactly one of day-of-month and day-of-week must be '?'")
    day_rule = _day_of_week_rule(day_of_week) if day_of_month == "?" else _day_of_month_rule(day_of_month)
    return CronExpression(text=text, minutes=minutes, hours=hours,
                          months=_numbers(month, 1, 12, "Month", names=MONTH_NAMES),
                          years=_numbers(year, MIN_YEAR, MAX_YEAR, "Year"), day_rule=day_rule)
