"""Cached answers to "may this thing read this stream / this file now?" (threat N4).

A device may read a stream, or download a file with a pre-signed URL, only while it has
a live (QUEUED or IN_PROGRESS) execution of a job that delivers it (device-protocol.md
§3, §4). Asking the database on every block request would make the database the cost
of a rollout, so decisions are cached, and a cached "yes" must not outlive the
execution that justified it. Two mechanisms bound it:

- the job service calls `forget_things` as soon as a thing's executions change (one
  ends, is canceled or times out, a job is created or deleted): in this process the
  next request after the change is decided afresh;
- every entry expires after `ttl` seconds of the server clock, the backstop for changes
  made where no hook runs (another server process sharing the database). An entry
  stamped in the future (the clock went back) counts as expired.

`renew` decides again, with one read per batch of things, every entry of the things
asked about within the last `ttl`, and stamps them with the time the read began; the
server calls it every third of `ttl`. A device that keeps downloading keeps a fresh
decision, and none is older than `ttl`: at 10,000 devices a device asks for its next
blocks every ~10 s, past the 10 s `ttl`, and deciding afresh per device and request was
half of the server's time (bench/fleet.py profile: `may_read_stream`, 47%). Things not
asked about within `ttl` are dropped, so renewal follows the devices at work.

A lookup that started before an invalidation of its thing must not store its (possibly
stale) answer after it: `generation(thing)` is taken before the lookup and `put` drops
the answer if that thing was invalidated in between (or everything was). Per thing, not
global: with a fleet reporting, some execution ends every few milliseconds, and a
global counter made nearly every lookup's answer unstorable (bench/fleet.py). Size is
bounded: past `max_entries`, everything is dropped and decided again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Container, Hashable, Iterable, Mapping


class AccessCache:
    def __init__(self, ttl: float, max_entries: int) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._lock = threading.Lock()
        # thing -> item -> (allowed, when it was decided)
        self._entries: dict[str, dict[Hashable, tuple[bool, float]]] = {}
        self._count = 0
        self._epoch = 0  # bumped when everything is dropped
        self._invalidated: dict[str, int] = {}  # thing -> times its entries were dropped
        self._asked: dict[str, float] = {}  # thing -> when it was last asked about (renew)

    def get(self, thing: str, item: Hashable, now: float) -> bool | None:
        """The cached decision, or None if there is none still valid."""
        with self._lock:
            entry = self._entries.get(thing, {}).get(item)
            if entry is not None:
                self._asked[thing] = now
        if entry is None:
            return None
        allowed, stamped = entry
        return allowed if stamped <= now < stamped + self._ttl else None

    def generation(self, thing: str) -> tuple[int, int]:
        with self._lock:
            return self._epoch, self._invalidated.get(thing, 0)

    def put(self, thing: str, item: Hashable, allowed: bool, now: float, generation: tuple[int, int]) -> None:
        with self._lock:
            if generation != (self._epoch, self._invalidated.get(thing, 0)):
                return  # the thing's executions changed while the decision was being made
            if self._count >= self._max:
                self._drop_all()
                # This answer was decided before the drop, but nothing invalidated its thing.
            items = self._entries.setdefault(thing, {})
            if item not in items:
                self._count += 1
            items[item] = (allowed, now)
            self._asked[thing] = now

    def renew(self, decide: Callable[[list[str]], Mapping[str, Container[Hashable]]],
              clock: Callable[[], float]) -> int:
        """Decide again every entry of the things asked about within `ttl`, and drop the
        others. `decide(things)` gives, for each thing, the items it may have now (a
        thing left out may have none). Returns how many things were renewed."""
        started = clock()
        with self._lock:
            idle = [thing for thing, asked in self._asked.items()
                    if not asked <= started < asked + self._ttl]
            for thing in idle:
                self._drop_thing(thing)
            things = list(self._entries)
            epoch, generations = self._epoch, [self._invalidated.get(thing, 0) for thing in things]
        if not things:
            return 0
        decided = decide(things)
        renewed = 0
        with self._lock:
            if epoch != self._epoch:
                return 0  # everything was dropped meanwhile
            for thing, generation in zip(things, generations, strict=True):
                items = self._entries.get(thing)
                if items is None or generation != self._invalidated.get(thing, 0):
                    continue  # the thing's executions changed during the read
                allowed = decided.get(thing, ())
                for item, (_, stamped) in items.items():
                    if stamped < started:  # an answer decided after the read began stays
                        items[item] = (item in allowed, started)
                renewed += 1
        return renewed

    def forget_things(self, things: Iterable[str]) -> None:
        with self._lock:
            for thing in things:
                self._invalidated[thing] = self._invalidated.get(thing, 0) + 1
                self._drop_thing(thing)
            if len(self._invalidated) > self._max:
                self._drop_all()  # the counters are bounded too

    def clear(self) -> None:
        with self._lock:
            self._drop_all()

    def _drop_thing(self, thing: str) -> None:
        self._count -= len(self._entries.pop(thing, {}))
        self._asked.pop(thing, None)

    def _drop_all(self) -> None:
        # A new epoch: every generation handed out before is stale, so the per-thing
        # counters can start again.
        self._epoch += 1
        self._invalidated.clear()
        self._entries.clear()
        self._asked.clear()
        self._count = 0
