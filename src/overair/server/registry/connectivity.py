"""Which things are connected, since when, and why each last left (issue 15), from the
broker's connection events (gateway/presence.py), for GetThingConnectivityData.

A thing is connected while any of its client ids is (`dev-1`, `dev-1#2`, ...). Events
arrive in the broker's order and are applied by one worker thread (server/app.py), so
recording them never holds up the event loop that carries device traffic; a row is
written only when a thing's state changes. The broker is overair's child and dies with
it, so at start (and when its supervisor restarts it) every thing recorded as connected
through it is recorded as disconnected (SERVER_INITIATED_DISCONNECT) at that moment.

Several server processes (docs/scaling.md) each run a broker node and see only their own
node's connections, so each row names the node whose events set it, and a node changes
only its own rows: a device that moved to another node (its first node died, or the
balancer sent its reconnection elsewhere) is not marked disconnected by the late
disconnect of its old connection, nor by its old node's restart. Each process holds a
claim on its node for as long as it runs (jobs/claims.py); the scheduler leader marks
disconnected the rows of nodes nobody holds any more (`sweep_dead_nodes`): their process
died and took its broker's connections with it.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select, update

from overair.server.clock import Clock
from overair.server.gateway.presence import PresenceEvent, thing_of_client
from overair.server.jobs.claims import Claims
from overair.server.storage.db import Database
from overair.server.storage.schema import Thing, ThingConnectivity

NODE_CLAIM = "broker-node"  # the claim kind a process holds on its node while it runs
RESTARTED = "SERVER_INITIATED_DISCONNECT"
IN_CHUNK = 500  # names per IN (...) query


class Connectivity:
    def __init__(self, db: Database, clock: Clock, node: str = "") -> None:
        self._db = db
        self._clock = clock
        self.node = node  # this process's broker node
        self._live: dict[str, set[str]] = {}  # thing -> its client ids connected now
        # Called with the things whose state was written (dynamic thing groups).
        self.on_change: Callable[[list[str]], None] = lambda _things: None

    def restarted(self) -> None:
        """This node's broker (re)started without its connections. Rows without a node
        were written before nodes were recorded, by whichever process: they go too."""
        self._live.clear()
        self._disconnect_node(self.node, include_unattributed=True)

    def connected_now(self) -> list[str]:
        """Things with a connection to this node's broker, as its events last said (any
        thread: a snapshot of the presence worker's map)."""
        return [thing for thing, ids in list(self._live.items()) if ids]

    def sweep_dead_nodes(self, claims: Claims) -> list[str]:
        """As scheduler leader: the nodes still named by connected rows whose process no
        longer holds their claim are dead; their rows are disconnected. Returns them."""
        with self._db.reading() as s:
            nodes = set(s.scalars(select(ThingConnectivity.node).distinct()
                                  .where(ThingConnectivity.connected.is_(True), ThingConnectivity.node != "",
                                         ThingConnectivity.node != self.node)))
        dead = []
        for node in sorted(nodes):
            claim = claims.take(NODE_CLAIM, node)
            if claim is None:
                continue  # its process runs
            try:
                self._disconnect_node(node)
            finally:
                claim.release()
            dead.append(node)
        return dead

    def _disconnect_node(self, node: str, include_unattributed: bool = False) -> None:
        nodes = [node, ""] if include_unattributed else [node]
        on_node = ThingConnectivity.node.in_(nodes)
        where = (ThingConnectivity.connected.is_(True), on_node)
        with self._db.session() as s:
            was_connected = list(s.scalars(select(ThingConnectivity.thing_name).where(*where)))
            s.execute(update(ThingConnectivity).where(*where)
                      .values(connected=False, changed_at=self._clock(), disconnect_reason=RESTARTED))
        if was_connected:
            self.on_change(was_connected)

    def apply(self, events: list[PresenceEvent]) -> None:
        """Called by one thread only, in the broker's order."""
        changes: dict[str, tuple[bool, str]] = {}
        for event in events:
            thing = thing_of_client(event.client_id)
            if thing is None:
                continue
            live = self._live.setdefault(thing, set())
            was = bool(live)
            if event.connected:
                live.add(event.client_id)
            else:
                live.discard(event.client_id)
            if not live:
                del self._live[thing]
            if bool(live) != was or (not live and not event.connected):
                changes[thing] = (bool(live), event.reason)
        if changes:
            self._write(changes)
            self.on_change(list(changes))

    def _write(self, changes: dict[str, tuple[bool, str]]) -> None:
        now = self._clock()
        names = list(changes)
        with self._db.session() as s:
            known: set[str] = set()
            rows: dict[str, ThingConnectivity] = {}
            # A burst of reboots is one batch (server/serial_batches.py): its rows are
            # read IN_CHUNK names per query, within SQLite's bound-parameter limit.
            for start in range(0, len(names), IN_CHUNK):
                part = names[start:start + IN_CHUNK]
                known.update(s.scalars(select(Thing.name).where(Thing.name.in_(part))))
                rows.update((row.thing_name, row) for row in s.scalars(
                    select(ThingConnectivity).where(ThingConnectivity.thing_name.in_(part))))
            for thing, (connected, reason) in changes.items():
                if thing not in known:
                    continue  # not a thing of this registry (or deleted meanwhile)
                row = rows.get(thing)
                if row is None:
                    row = ThingConnectivity(thing_name=thing)
                    s.add(row)
                elif not connected and row.connected and row.node not in (self.node, ""):
                    continue  # connected through another node since: this is a late end
                row.connected, row.changed_at = connected, now
                row.disconnect_reason = "" if connected else reason
                row.node = self.node

    def get(self, thing: str) -> ThingConnectivity | None:
        with self._db.reading() as s:
            return s.get(ThingConnectivity, thing)
