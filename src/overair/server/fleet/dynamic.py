"""Dynamic thing groups: groups whose members are the things a fleet query matches, kept
as the data changes (registry attributes and groups, shadows, `$package` versions,
connectivity).

Membership is stored as a static group's is (`thing_group_members`), so
ListThingsInThingGroup, ListThingGroupsForThing, SearchIndex's `thingGroupNames` and job
targeting read it unchanged. One worker thread keeps it: a change to a thing only adds
the thing's name to a set (`touch`, a set insertion under a lock; nothing at all while
no dynamic group exists), so device traffic never waits for it. The worker takes the
changed things in batches, builds their documents as SearchIndex does (fleet/search.py,
as the indexing configuration indexes them), matches every dynamic group's query and
writes only the differences. A thing that starts to match joins (CONTINUOUS jobs aimed at
the group reach it: `on_join`); a thing that stops matching leaves (`on_leave`: the job
service withdraws executions not yet released to it). Creating a group or changing its
query, or the indexing configuration, rebuilds the group from the whole fleet (status
BUILDING / REBUILDING, then ACTIVE), as AWS does.

AWS's behaviour followed (AWS IoT developer guide, "Dynamic thing groups"): membership is
defined by a query over the fleet index, needs fleet indexing enabled, is updated as
devices come to match ("As devices reach the 80% battery life criteria, they are added
to the dynamic thing group and receive the firmware update"), dynamic groups cannot be
part of a hierarchy, and "You use a different set of commands to create, update, and
delete dynamic thing groups" (so AddThingToThingGroup, RemoveThingFromThingGroup and
DeleteThingGroup refuse them: server/registry/service.py). The number of dynamic groups
is bounded (`Limits.max_dynamic_thing_groups`, AWS's quota of 100 per account).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sqlalchemy import delete, func, insert, select

from overair.core import fleetquery
from overair.core.limits import Limits
from overair.server.api.contract import ApiError, already_exists, invalid
from overair.server.clock import Clock
from overair.server.fleet.config import IndexingStore
from overair.server.fleet.search import THINGS_INDEX, FleetSearch, Indexed, parse_query
from overair.server.registry.service import check_thing_name
from overair.server.storage.db import Database
from overair.server.storage.schema import Thing, ThingGroup, ThingGroupMember

log = logging.getLogger(__name__)

QUERY_VERSION = "2017-09-30"  # AWS's one query version
REBUILD_GATHER_SECONDS = 0.2
DIRTY_GATHER_SECONDS = 0.05
Membership = Callable[[str, str], None]  # (thing, group ARN)


def _version_conflict(name: str, version: int) -> ApiError:
    return ApiError("VersionConflictException", f"dynamic thing group {name} is at version {version}", 409)


def _not_dynamic(name: str) -> ApiError:
    return invalid(f"thing group {name} is a static thing group; use the static thing group operations")


class DynamicGroups:
    def __init__(self, db: Database, search: FleetSearch, indexing: IndexingStore, limits: Limits,
                 clock: Clock, group_arn: Callable[[str], str]) -> None:
        self._db = db
        self._search = search
        self._indexing = indexing
        self._limits = limits
        self._clock = clock
        self._arn = group_arn
        self.on_join: Membership = lambda _thing, _group: None
        self.on_leave: Membership = lambda _thing, _group: None
        # The group ARNs whose joins and leaves matter to jobs (CONTINUOUS jobs' targets):
        # asked once per batch, so a group no job follows costs no job work per member.
        self.followed: Callable[[], set[str]] = set
        self._queries: dict[str, tuple[str, fleetquery.Query]] = {}  # dynamic group -> its query
        self._dirty: set[str] = set()
        self._rebuild: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._busy = False
        self._thread: threading.Thread | None = None

    # Lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        with self._db.reading() as s:
            rows = list(s.execute(select(ThingGroup.name, ThingGroup.query_string)
                                  .where(ThingGroup.query_string.is_not(None))))
        with self._lock:
            for name, query in rows:
                self._queries[name] = (query, fleetquery.parse(query))
                # Changes marked but not applied when the server last stopped are lost with
                # the set: one pass over the fleet brings every group up to date (a
                # BUILDING or REBUILDING status a stop interrupted becomes ACTIVE then).
                self._rebuild.add(name)
        self._thread = threading.Thread(target=self._run, name="dynamic-groups", daemon=True)
        self._thread.start()
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def idle(self) -> bool:
        """Nothing waiting or being applied (for benchmarks)."""
        with self._lock:
            return not self._dirty and not self._rebuild and not self._busy

    # The hot path ----------------------------------------------------------------------
    def touch(self, things: Iterable[str]) -> None:
        """These things' data changed. Constant time per thing; never waits for the database."""
        if not self._queries:
            return
        with self._lock:
            self._dirty.update(things)
        self._wake.set()

    def rebuild_all(self) -> None:
        with self._lock:
            names = list(self._queries)
            self._rebuild.update(names)
        self._mark_status(names, "REBUILDING")
        self._wake.set()

    # Operations ------------------------------------------------------------------------
    def _check_query(self, index: str | None, version: str | None, text: str) -> None:
        if (index or THINGS_INDEX) != THINGS_INDEX or not self._indexing.get().things_indexed:
            raise ApiError("ResourceNotFoundException", f"index {index or THINGS_INDEX} does not exist: "
                           f"a dynamic thing group needs the {THINGS_INDEX} index "
                           "(UpdateIndexingConfiguration)", 404)
        if (version or QUERY_VERSION) != QUERY_VERSION:
            raise invalid(f"queryVersion must be {QUERY_VERSION}")
        parse_query(text)

    def _check_fleet(self) -> None:
        """A group is built from the whole fleet, as SearchIndex reads it: the same bound."""
        with self._db.reading() as s:
            count = s.scalar(select(func.count()).select_from(Thing)) or 0
        if count > self._limits.max_search_things:
            raise invalid(f"the fleet has {count} things; dynamic thing groups are served up to "
                          f"{self._limits.max_search_things} (overair's bound)")

    def create(self, name: str, params: Mapping[str, Any]) -> ThingGroup:
        check_thing_name(name)
        text = str(params["queryString"])
        self._check_query(params.get("indexName"), params.get("queryVersion"), text)
        self._check_fleet()
        props = params.get("thingGroupProperties") or {}
        attributes = dict((props.get("attributePayload") or {}).get("attributes") or {})
        with self._db.session() as s:
            if s.get(ThingGroup, name) is not None:
                raise already_exists(f"thing group {name}")
            count = s.scalar(select(func.count()).select_from(ThingGroup)
                             .where(ThingGroup.query_string.is_not(None))) or 0
            if count >= self._limits.max_dynamic_thing_groups:
                raise ApiError("LimitExceededException", f"at most {self._limits.max_dynamic_thing_groups} "
                               "dynamic thing groups", 410)
            group = ThingGroup(name=name, group_id=str(uuid.uuid4()), arn=self._arn(name),
                               description=str(props.get("thingGroupDescription", "")), attributes=attributes,
                               version=1, created_at=self._clock(), query_string=text,
                               query_version=QUERY_VERSION, index_name=THINGS_INDEX, status="BUILDING")
            s.add(group)
        self._schedule(name, text)
        return group

    def update(self, name: str, params: Mapping[str, Any]) -> int:
        text = params.get("queryString")
        if text is not None:
            self._check_fleet()
        with self._db.session() as s:
            group = s.get(ThingGroup, name, with_for_update=True)
            if group is None:
                raise ApiError("ResourceNotFoundException", f"thing group {name} does not exist", 404)
            if group.query_string is None:
                raise _not_dynamic(name)
            expected = params.get("expectedVersion")
            if expected is not None and expected != group.version:
                raise _version_conflict(name, group.version)
            self._check_query(params.get("indexName"), params.get("queryVersion"),
                              str(text or group.query_string))
            props = params.get("thingGroupProperties") or {}
            if "thingGroupDescription" in props:
                group.description = str(props["thingGroupDescription"])
            payload = props.get("attributePayload")
            if payload is not None:
                merged = dict(group.attributes) if payload.get("merge") else {}
                for key, value in (payload.get("attributes") or {}).items():
                    if value == "" and payload.get("merge"):
                        merged.pop(key, None)
                    else:
                        merged[key] = value
                group.attributes = merged
            requery = text is not None and text != group.query_string
            if requery:
                group.query_string, group.status = str(text), "REBUILDING"
            group.version += 1
            version = group.version
        if requery:
            self._schedule(name, str(text))
        return version

    def delete(self, name: str, expected_version: int | None) -> None:
        with self._db.session() as s:
            group = s.get(ThingGroup, name, with_for_update=True)
            if group is None:
                return  # AWS: DeleteDynamicThingGroup has no ResourceNotFoundException
            if group.query_string is None:
                raise _not_dynamic(name)
            if expected_version is not None and expected_version != group.version:
                raise _version_conflict(name, group.version)
            s.execute(delete(ThingGroupMember).where(ThingGroupMember.group_name == name))
            s.delete(group)
        with self._lock:
            self._queries.pop(name, None)
            self._rebuild.discard(name)

    def _schedule(self, name: str, text: str) -> None:
        with self._lock:
            self._queries[name] = (text, fleetquery.parse(text))
            self._rebuild.add(name)
        self._wake.set()

    def _mark_status(self, names: list[str], status: str) -> None:
        if not names:
            return
        with self._db.session() as s:
            for group in s.scalars(select(ThingGroup).where(ThingGroup.name.in_(names),
                                                            ThingGroup.query_string.is_not(None))):
                group.status = status

    # The worker ------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(timeout=5)
            self._wake.clear()
            while not self._stopping:
                if self._rebuild:
                    # A rebuild reads the whole fleet: groups created or changed together
                    # (a script, a configuration change) share one read.
                    time.sleep(REBUILD_GATHER_SECONDS)
                elif 0 < len(self._dirty) < self._limits.dynamic_group_batch:
                    # Changes arriving one by one are taken a few at a time: fewer, larger
                    # batches (fewer queries per change) for a little latency.
                    time.sleep(DIRTY_GATHER_SECONDS)
                with self._lock:
                    rebuild = sorted(self._rebuild)
                    self._rebuild.clear()
                    batch = sorted(self._dirty)[:self._limits.dynamic_group_batch]
                    self._dirty.difference_update(batch)
                    self._busy = bool(rebuild or batch)
                if not rebuild and not batch:
                    break
                try:
                    if rebuild:
                        self._apply(None, rebuild)
                    if batch:
                        self._apply(batch, None)
                except ApiError as exc:  # the fleet outgrew max_search_things: said, not retried
                    log.error("dynamic thing groups %s: cannot rebuild: %s", ", ".join(rebuild), exc.message)
                except Exception:  # a database fault: retried with the next change
                    log.exception("dynamic thing groups: could not apply membership changes")
                    with self._lock:
                        self._rebuild.update(rebuild)
                        self._dirty.update(batch)
                        self._busy = False
                    self._wake.wait(timeout=1)
                    break
                finally:
                    with self._lock:
                        self._busy = False

    @staticmethod
    def _members(s: Any, groups: list[str], things: list[str] | None) -> set[tuple[str, str]]:
        query = select(ThingGroupMember.group_name, ThingGroupMember.thing_name).where(
            ThingGroupMember.group_name.in_(groups))
        if things is not None:
            query = query.where(ThingGroupMember.thing_name.in_(things))
        return {(g, t) for g, t in s.execute(query)}

    def _apply(self, things: list[str] | None, groups: list[str] | None) -> None:
        """Recompute membership of `things` (None: every thing) in `groups` (None: every
        dynamic group), write the differences, then tell the job service."""
        with self._lock:
            queries = {name: q for name, q in self._queries.items() if groups is None or name in groups}
        texts = {name: text for name, (text, _q) in queries.items()}
        if not queries:
            return
        config = self._indexing.get()
        documents: list[Indexed] = self._search.documents(things, config) if config.things_indexed else []
        wanted = {(group, doc.name) for doc in documents for group, (_text, query) in queries.items()
                  if fleetquery.matches(query, doc.fields)}
        live = list(queries)
        with self._db.reading() as s:  # most changes move nobody: no write, no write lock
            current = self._members(s, live, things)
        joins, leaves = sorted(wanted - current), sorted(current - wanted)
        if joins or leaves or groups is not None:
            with self._db.session() as s:
                rows = {g.name: g for g in s.scalars(select(ThingGroup).where(
                    ThingGroup.name.in_(live), ThingGroup.query_string.is_not(None)).with_for_update())}
                # A group deleted, or given another query, meanwhile is left to its own turn;
                # the worker alone writes dynamic groups' members, so the rest still holds.
                live = [name for name in live if name in rows and rows[name].query_string == texts[name]]
                current = self._members(s, live, things)
                names = select(Thing.name)  # a thing deleted meanwhile joins nothing
                existing = set(s.scalars(names if things is None else names.where(Thing.name.in_(things))))
                joins = sorted({(g, t) for g, t in wanted if g in live and t in existing} - current)
                leaves = sorted({(g, t) for g, t in current if (g, t) not in wanted})
                now = self._clock()
                if joins:
                    s.execute(insert(ThingGroupMember), [{"group_name": g, "thing_name": t, "added_at": now}
                                                         for g, t in joins])
                for group, thing in leaves:
                    s.execute(delete(ThingGroupMember).where(ThingGroupMember.group_name == group,
                                                             ThingGroupMember.thing_name == thing))
                if groups is not None:
                    for name in live:
                        rows[name].status = "ACTIVE"
        followed = self.followed() if joins or leaves else set()
        for effect, changes in ((self.on_leave, leaves), (self.on_join, joins)):
            for group, thing in changes:
                if self._arn(group) not in followed:
                    continue
                try:
                    effect(thing, self._arn(group))
                except Exception:  # the membership stands; the job service logs its own faults
                    log.exception("dynamic thing group %s: could not apply the change of %s to its jobs",
                                  group, thing)
