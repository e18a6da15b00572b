"""Keyset pages: the rows after a key, in key order, one page plus one row (which only
says whether more follow). One helper for every listing (api/paging.py makes the tokens),
so a page never reads the rows before it. Row-value comparison (`(a, b) > (x, y)`) is
standard SQL, served by SQLite (3.15+) and PostgreSQL over the listing's index."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Select, tuple_

T = TypeVar("T")


def page_query(query: Select[Any], key: Sequence[Any], after: Sequence[Any] | None, size: int, *,
               descending: bool = False) -> Select[Any]:
    """`query` ordered by `key` (columns), from after `after`, at most `size + 1` rows."""
    columns: list[ColumnElement[Any]] = [column.desc() if descending else column for column in key]
    query = query.order_by(*columns).limit(size + 1)
    if after is not None:
        row, bound = tuple_(*key), tuple_(*after)
        query = query.where(row < bound if descending else row > bound)
    return query


def split(rows: Sequence[T], size: int) -> tuple[list[T], bool]:
    """The page and whether more rows follow it."""
    return list(rows[:size]), len(rows) > size
