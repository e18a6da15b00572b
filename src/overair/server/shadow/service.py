"""Shadows in the database: get, update, delete and list, each one transaction.

The document logic is core/shadow.py's; this module adds storage, the thing's
existence ("Thing not found") and optimistic locking under a row lock, so two updates
racing on one shadow serialise and a stale `version` is refused. Every accepted change
returns the messages AWS publishes for it, which the caller sends on MQTT whether the
change came from a device (MQTT) or an operator (iot-data over HTTPS).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from overair.core import health
from overair.core import shadow as doc
from overair.core.limits import Limits
from overair.core.shadow import Shadow, ShadowError
from overair.server.clock import Clock
from overair.server.storage.db import Database
from overair.server.storage.keyset import page_query, split
from overair.server.storage.schema import Thing, ThingShadow

CLASSIC = ""  # the classic (unnamed) shadow's name in storage


@dataclass(frozen=True, slots=True)
class Published:
    """A message for `$aws/things/<thing>/shadow[/name/<name>]/<suffix>`."""

    suffix: str  # e.g. "update/accepted"
    body: dict[str, Any]


def _check_health(reported: dict[str, Any], limits: Limits) -> None:
    """The `overair-health` shadow holds a device's health report (core/health.py), read by
    the health gates: an update leaving anything else there is refused, with the code."""
    try:
        health.parse_report(reported, limits)
    except health.InvalidHealthReport as exc:
        raise ShadowError(400, f"{exc.code}: {exc.message}") from exc


def _shadow(row: ThingShadow) -> Shadow:
    return Shadow(dict(row.desired), dict(row.reported), dict(row.metadata_), row.version)


@dataclass(slots=True)
class _Batch:
    """What a batch of updates reads before writing, in three statements whatever its
    size: which of its things exist, their rows of the shadows it names (locked, on
    PostgreSQL), and how many named shadows each thing has. Read per update, with a flush
    each, a burst of $package reports cost ~1 ms of interpreter time per device in a
    rollout's tail, beside its job updates (bench/fleet.py, py-spy)."""

    things: set[str]
    rows: dict[tuple[str, str], ThingShadow]
    named: dict[str, int]  # shadow rows other than the classic one (deleted ones included)

    @classmethod
    def read(cls, s: Any, keys: list[tuple[str, str]]) -> _Batch:
        names = sorted({thing for thing, _ in keys})
        things = set(s.scalars(select(Thing.name).where(Thing.name.in_(names))))
        wanted = set(keys)
        # Two IN lists, not a (thing, shadow) IN list: SQLite scanned the table for that.
        rows = {(row.thing_name, row.shadow_name): row for row in s.scalars(
            select(ThingShadow).where(ThingShadow.thing_name.in_(names),
                                      ThingShadow.shadow_name.in_(sorted({name for _, name in keys})))
            .with_for_update()) if (row.thing_name, row.shadow_name) in wanted}
        named: dict[str, int] = {}
        if any(name != CLASSIC for _, name in keys):
            named = dict(s.execute(
                select(ThingShadow.thing_name, func.count()).where(
                    ThingShadow.thing_name.in_(names), ThingShadow.shadow_name != CLASSIC)
                .group_by(ThingShadow.thing_name)).tuples().all())
        return cls(things, rows, named)


class ShadowService:
    def __init__(self, db: Database, limits: Limits, clock: Clock) -> None:
        self._db = db
        self._limits = limits
        self._clock = clock
        # Called after each accepted update or delete with the thing (dynamic thing groups
        # re-evaluate it; server/fleet/dynamic.py: constant time, never waits).
        self.on_change: Callable[[str], None] = lambda _thing: None

    def _now(self) -> int:
        return int(self._clock())

    @staticmethod
    def _check(thing_exists: bool, name: str) -> None:
        if not thing_exists:
            raise ShadowError(404, "Thing not found")
        if name != CLASSIC and not doc.is_shadow_name(name):
            raise ShadowError(400, "Invalid shadow name")

    @staticmethod
    def _missing(name: str) -> ShadowError:
        return ShadowError(404, f"No shadow exists with name: '{name}'" if name else "No shadow exists")

    def get(self, thing: str, name: str, token: str | None) -> dict[str, Any]:
        with self._db.reading() as s:
            self._check(s.get(Thing, thing) is not None, name)
            row = s.get(ThingShadow, (thing, name))
            if row is None or not row.present:
                raise self._missing(name)
            return doc.get_document(_shadow(row), self._now(), token)

    def update(self, thing: str, name: str, request: dict[str, Any]) -> list[Published]:
        """An accepted update: update/accepted, update/documents and (when desired and
        reported differ after it) update/delta, in that order."""
        (result,) = self.update_many([(thing, name, request)])
        if isinstance(result, ShadowError):
            raise result
        return result

    def update_many(self, updates: list[tuple[str, str, dict[str, Any]]]
                    ) -> list[list[Published] | ShadowError]:
        """`update` for several (thing, shadow name, request), in order and in one
        transaction (packages/shadow_sync.py reports a burst of installs this way): each
        answered with its messages or with the ShadowError that refused it alone."""
        parsed: list[doc.UpdateRequest | ShadowError] = []
        for _thing, _name, request in updates:
            try:
                parsed.append(doc.parse_update(request, self._limits))
            except ShadowError as exc:
                parsed.append(exc)
        now = self._now()
        results: list[list[Published] | ShadowError] = []
        with self._db.session() as s:
            batch = _Batch.read(s, [(thing, name) for thing, name, _ in updates])
            for (thing, name, _request), update in zip(updates, parsed, strict=True):
                try:
                    if isinstance(update, ShadowError):
                        raise update
                    results.append(self._write_update(s, batch, thing, name, update, now))
                except ShadowError as exc:  # raised before this update changed anything
                    results.append(exc)
        for (thing, _name, _request), result in zip(updates, results, strict=True):
            if not isinstance(result, ShadowError):
                self.on_change(thing)
        return results

    def _write_update(self, s: Any, batch: _Batch, thing: str, name: str, update: doc.UpdateRequest,
                      now: int) -> list[Published]:
        """One update in the caller's transaction, on the rows `batch` read. Every refusal
        is raised before any row changes, so the transaction stays good for the updates
        after it. Nothing is flushed here: a later update of the same shadow in the batch
        finds this one's row in `batch`, and the session writes them all at commit."""
        self._check(thing in batch.things, name)
        row = batch.rows.get((thing, name))
        bound = self._limits.max_named_shadows_per_thing
        if row is None and name != CLASSIC and batch.named.get(thing, 0) >= bound:
            raise ShadowError(400, f"a thing has at most {bound} named shadows (overair's bound)")
        current = _shadow(row) if row is not None and row.present else None
        applied = doc.apply_update(current, (row.version if row is not None else 0) + 1, update, now,
                                   self._limits)
        new = applied.current
        if name == health.SHADOW_NAME:
            _check_health(new.reported, self._limits)
        if row is None:
            row = batch.rows[(thing, name)] = ThingShadow(thing_name=thing, shadow_name=name)
            s.add(row)
            if name != CLASSIC:
                batch.named[thing] = batch.named.get(thing, 0) + 1
        row.desired, row.reported, row.metadata_ = new.desired, new.reported, new.metadata
        row.version, row.present, row.updated_at = new.version, True, self._clock()
        token = update.client_token
        accepted = {**applied.accepted, "timestamp": now, **({"clientToken": token} if token else {})}
        out = [Published("update/accepted", accepted),
               Published("update/documents", doc.documents_message(applied, now, token))]
        if applied.delta:
            out.append(Published("update/delta", doc.delta_message(applied, now, token)))
        return out

    def delete(self, thing: str, name: str, request: dict[str, Any]) -> dict[str, Any]:
        """delete/accepted's body. `version`, when given, must match (AWS's DELETE
        request takes one too)."""
        token = doc.client_token(request, self._limits)
        version = doc.parse_version(request)
        with self._db.session() as s:
            self._check(s.get(Thing, thing) is not None, name)
            row = s.get(ThingShadow, (thing, name), with_for_update=True)
            if row is None or not row.present:
                raise self._missing(name)
            if version is not None and version != row.version:
                raise ShadowError(409, "Version conflict")
            row.present = False
            row.desired, row.reported, row.metadata_ = {}, {}, {}
            row.updated_at = self._clock()
            deleted = row.version
        self.on_change(thing)
        return {"version": deleted, "timestamp": self._now(), **({"clientToken": token} if token else {})}

    def named_shadows(self, thing: str) -> list[str]:
        with self._db.reading() as s:
            if s.get(Thing, thing) is None:
                raise ShadowError(404, "Thing not found")
            return list(s.scalars(select(ThingShadow.shadow_name).where(
                ThingShadow.thing_name == thing, ThingShadow.shadow_name != CLASSIC, ThingShadow.present)
                .order_by(ThingShadow.shadow_name)))

    def page_named_shadows(self, thing: str, after: str | None, size: int) -> tuple[list[str], bool]:
        """ListNamedShadowsForThing: names after `after`, over the primary key (issue 20)."""
        with self._db.reading() as s:
            if s.get(Thing, thing) is None:
                raise ShadowError(404, "Thing not found")
            query = select(ThingShadow.shadow_name).where(
                ThingShadow.thing_name == thing, ThingShadow.shadow_name != CLASSIC, ThingShadow.present)
            return split(list(s.scalars(page_query(query, [ThingShadow.shadow_name],
                                                   None if after is None else [after], size))), size)
