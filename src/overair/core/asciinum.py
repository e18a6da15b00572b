"""Whole numbers written in ASCII digits: the one way to read a number from text that
crossed a trust boundary (a header, a query parameter, a cron field, a token).

`str.isdigit()` followed by `int()` is wrong twice over: `isdigit` is true for
superscripts and other Unicode digits that `int` then refuses (`"²"`, a ValueError that
escaped as a 500), and `int` itself accepts Arabic-Indic digits, underscores, signs and
surrounding whitespace, and raises on more than 4,300 digits. Here a number is
`[0-9]{1,N}` exactly, with N chosen by the caller, so the parse is total: a value or None.
"""

from __future__ import annotations

import re

# Enough for any unsigned 64-bit value (20 digits) plus leading zeros a client may send.
DEFAULT_MAX_DIGITS = 24

_DIGITS = re.compile(r"[0-9]+", re.ASCII)
_HEX_DIGITS = re.compile(r"[0-9a-fA-F]+", re.ASCII)


def parse_uint(text: str, *, max_digits: int = DEFAULT_MAX_DIGITS) -> int | None:
    """The value of `text` if it is 1 to `max_digits` ASCII digits and nothing else."""
    if not 0 < len(text) <= max_digits or _DIGITS.fullmatch(text) is None:
        return None
    return int(text)


def parse_hex(text: str, *, max_digits: int = 16) -> int | None:
    """The value of `text` if it is 1 to `max_digits` ASCII hex digits and nothing else."""
    if not 0 < len(text) <= max_digits or _HEX_DIGITS.fullmatch(text) is None:
        return None
    return int(text, 16)
