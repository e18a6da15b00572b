"""Refusing request members overair does not implement, by name.

Ignoring such a member would answer as if it had been applied (a filter that filters
nothing, a parent group that is not set): a wrong answer. The compatibility matrix
(docs/compatibility.md) lists the members each operation refuses.
"""

from __future__ import annotations

from typing import Any

from overair.server.api.contract import ApiRequest, Handler, invalid


def refuse_unsupported(r: ApiRequest, *members: str) -> None:
    given = [m for m in members if r.params.get(m) not in (None, False)]
    if given:
        raise invalid(f"{r.operation}: {', '.join(given)} is not supported by overair")


def refusing(members: tuple[str, ...], handler: Handler) -> Handler:
    """`handler`, refusing `members` first (registration-time wiring)."""
    if not members:
        return handler

    def checked(r: ApiRequest) -> dict[str, Any]:
        refuse_unsupported(r, *members)
        return handler(r)

    return checked
